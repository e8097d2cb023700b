"""The app's Content-Security-Policy is enforced, and the browser tests would see it broken.

Every test using ``page`` fails on a CSP violation and checks the served app's headers (see
conftest.py); these two provoke what the policy forbids: a call to an origin that the app's
config does not name, and another site framing the app.
"""

from __future__ import annotations

import http.server
import threading

import pytest

pytestmark = pytest.mark.browser

# All the app's servers on its own origin: connect-src is 'self' alone, as behind the chart's nginx.
SAME_ORIGIN = {"serveUrl": "/elsewhere/serve", "backendUrl": "/elsewhere/backend", "onnxBundle": "onnx/digits/"}


def wait_for(page, violations: list[str], text: str) -> list[str]:
    for _ in range(300):  # Playwright hands events over while the test waits through it
        if found := [v for v in violations if text in v]:
            return found
        page.wait_for_timeout(100)
    return []


def test_a_call_to_an_origin_the_config_does_not_name_is_refused(webapp_factory, page, csp_violations):
    url = webapp_factory(SAME_ORIGIN)
    response = page.goto(url)
    assert "connect-src 'self';" in response.all_headers()["content-security-policy"]
    outcome = page.evaluate("u => fetch(u).then(() => 'fetched', (e) => e.name)", "http://127.0.0.1:9/x")
    assert outcome == "TypeError"
    assert wait_for(page, csp_violations, "connect-src blocked http://127.0.0.1:9/x"), csp_violations
    csp_violations.clear()  # provoked on purpose


@pytest.fixture
def framer():
    """``framer(url) -> address`` of a page on another origin (a local one, as Chromium lets a
    local page frame only local ones) that puts ``url`` in an iframe."""
    servers = []

    def start(url: str) -> str:
        body = f'<!doctype html><iframe src="{url}"></iframe>'.encode()

        class Page(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_another_site_cannot_frame_the_app(webapp_factory, page, csp_violations, framer):
    url = webapp_factory(SAME_ORIGIN) + "/"
    answered = []
    page.on("response", lambda r: answered.append(r.url) if r.url == url else None)
    page.goto(framer(url))
    assert wait_for(page, csp_violations, "frame-ancestors 'none'"), csp_violations
    # The app answered, and the browser showed its error page in the frame instead.
    assert answered == [url]
    assert [f.url for f in page.frames[1:]] == ["chrome-error://chromewebdata/"]
    csp_violations.clear()  # provoked on purpose
