"""Real headless Chromium (Debian's /usr/bin/chromium) driving the built Marcelle web app.

Fixtures:
- ``browser``: one Chromium for the session (Playwright gives it a fresh throw-away profile);
- ``page``: a new page in a fresh context (no shared storage between tests), long timeouts,
  and its console errors / uncaught exceptions collected in ``console_errors``. Every test that
  uses it also fails if the page broke its Content-Security-Policy (``csp_violations``), or if a
  page of an app ``webapp_factory`` served came without that app's security headers;
- ``webapp_dist``: the built app's folder (the tests skip, saying so, when it is not built);
- ``webapp_factory(config)``: serves ``services/frontend/dist`` with ``/config.json`` = config,
  returns the app's URL; stopped after the test.
- ``runs_backend(**start_backend_options) -> (backend, start_worker)``: the real Marcelle
  backend, and ``start_worker(env=None)`` to start a real worker on it when the test says;
- ``open_runs_page(backend_url) -> nobody``: ``page`` on the app's "Backend runs" page.

- ``drawing_input``: drives the app's shared input (imageInput, packages/marcelle-torch/src/image-input.js):
  ``draw_digit`` / ``draw_strokes`` on the Marcelle sketchpad with real mouse moves,
  ``upload`` into the Marcelle image upload, ``model_input_png`` / ``sketchpad_png`` to read
  back what the page has;
- ``digit_png(digit, ink=, ground=)``: a PNG of a digit, to upload.
"""

from __future__ import annotations

import base64
import io
import math
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chromium import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DIST = Path(os.environ.get("MARCELLE_TORCH_WEBAPP_DIST", ROOT / "services" / "frontend" / "dist"))
# The machine is shared and slow: generous, never part of an assertion.
TIMEOUT_MS = 120_000

SKETCH = "[data-testid=image-input-sketch]"
UPLOAD = "[data-testid=image-input-upload]"
PREVIEW_IMG = "[data-testid=image-input-image]"
RUNS_PAGE_TITLE = "Backend runs"

# Hands every CSP violation of a document to the test as it happens (a page's own list would be
# lost when it navigates); a worker's violations show in its console only.
CSP_LISTENER = """
document.addEventListener('securitypolicyviolation', (e) =>
  window.__cspViolation(`${e.effectiveDirective} blocked ${e.blockedURI} (${e.sourceFile}:${e.lineNumber})`));
"""


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install chromium (or set MARCELLE_TORCH_CHROMIUM)")
    with sync_playwright() as p:
        # launch() runs Chromium on a fresh temporary user-data dir, removed on close.
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def console_errors() -> list[str]:
    """Console errors and uncaught exceptions of ``page`` (filled as they happen)."""
    return []


@pytest.fixture
def csp_violations() -> list[str]:
    """The Content-Security-Policy violations of ``page`` (filled as they happen). ``page`` fails
    the test with any left at its end: a test that provokes one on purpose clears it."""
    return []


@pytest.fixture
def served_apps() -> dict[str, dict[str, str]]:
    """The origin of each app ``webapp_factory`` serves -> the headers its pages must come with."""
    return {}


@pytest.fixture
def page(browser, console_errors, csp_violations, served_apps):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    context.expose_function("__cspViolation", lambda violation: csp_violations.append(violation))
    context.add_init_script(CSP_LISTENER)
    page = context.new_page()

    def on_console(msg, where: str = "console") -> None:
        if msg.type == "error" and where == "console":
            console_errors.append(f"console: {msg.text}")
        if "Content Security Policy" in msg.text:
            csp_violations.append(f"{where}: {msg.text}")

    page.on("console", on_console)
    page.on("worker", lambda worker: worker.on("console", lambda msg: on_console(msg, f"worker {worker.url}")))
    page.on("pageerror", lambda exc: console_errors.append(f"uncaught: {exc}"))
    documents = []  # the responses of every document the page loaded
    page.on("response", lambda r: documents.append(r) if r.request.resource_type == "document" else None)
    try:
        yield page
        if not page.is_closed():
            page.evaluate("0")  # a round trip: the page's last reports reach csp_violations
        assert_security_headers(documents, served_apps)
        assert csp_violations == [], "the page broke its Content-Security-Policy"
    finally:
        context.close()


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def assert_security_headers(documents, served_apps: dict[str, dict[str, str]]) -> None:
    """Each page of a served app came with that app's security headers, its CSP above all."""
    ours = [r for r in documents if _origin(r.url) in served_apps]
    assert ours or not served_apps, "the test served the app but the page loaded none of its pages"
    for response in ours:
        headers = response.all_headers()
        expected = served_apps[_origin(response.url)]
        assert {name: headers.get(name.lower()) for name in expected} == expected, response.url


@pytest.fixture(scope="session")
def webapp_dist() -> Path:
    """The built app (``services/frontend/dist``, or $MARCELLE_TORCH_WEBAPP_DIST); `make test` builds it."""
    if not (DIST / "index.html").is_file():
        pytest.fail(f"web app not built ({DIST}): run `make webapp` (npm ci && npm run build -w services/frontend)")
    return DIST


@pytest.fixture
def webapp_factory(webapp_dist, served_apps):
    """``make(config) -> url`` of the built app served with that /config.json."""
    from marcelle_torch.stack.webapp import connect_sources, security_headers, start_webapp

    stops = []

    def make(config: dict | None = None) -> str:
        url, stop = start_webapp(webapp_dist, config or {})
        stops.append(stop)
        served_apps[_origin(url)] = security_headers(connect_sources(config or {}))
        return url

    yield make
    for stop in reversed(stops):
        stop()


# --- the "Backend runs" page -----------------------------------------------------------


@pytest.fixture
def runs_backend(tmp_path):
    """``start(**options) -> (backend, start_worker)``: the real Marcelle backend, started by
    ``start_backend`` with ``options``, and ``start_worker(env=None)``, which starts a real
    `marcelle-torch worker` on it (when the test says: after creating accounts, or a restart)
    and returns once it is connected. Both are stopped after the test."""
    from marcelle_torch.models import get_spec, resolve_weights
    from marcelle_torch.stack.backend import start_backend
    from marcelle_torch.stack.worker import start_worker as launch_worker

    for name in ("digits", "digits-generator"):
        resolve_weights(get_spec(name), train_if_missing=True)
    if not (ROOT / "services" / "backend" / "node_modules" / "@marcellejs" / "backend").is_dir():
        pytest.fail("the Marcelle backend is not installed: run `npm ci` in services/backend (make setup)")
    backends, workers = [], []

    def start(**options):
        # The page is served on a port picked later (webapp_factory): any loopback port's origin.
        options.setdefault("cors_origins", ["http://127.0.0.1:*"])
        backend = start_backend(tmp_path / "backend", log_path=tmp_path / "backend.log", **options)
        backends.append(backend)

        def start_worker(env: dict | None = None) -> None:
            # Few progress updates a second, as in production, so the page sees the run advance.
            worker = launch_worker(
                backend.url,
                name="browser-test",
                args=("--max-updates-per-second", "4"),
                log_path=tmp_path / "worker.log",
                env=env,
                wait=False,
            )
            workers.append(worker)
            worker.wait_ready()

        return backend, start_worker

    try:
        yield start
    finally:
        for worker in workers:
            worker.stop()
        for backend in backends:
            backend.stop()


@pytest.fixture
def open_runs_page(page, webapp_factory):
    """``open_runs_page(backend_url) -> nobody``: ``page`` on the app's "Backend runs" page, the
    app set up with that backend; the other pages' servers are at ``nobody``, where nothing answers."""
    from marcelle_torch.processes import free_port

    def open_page(backend_url: str) -> str:
        nobody = f"http://127.0.0.1:{free_port()}"  # the other pages poll their servers: nothing answers here
        url = webapp_factory(
            {"backendUrl": backend_url, "generatorModel": "digits-generator", "model": "digits", "serveUrl": nobody}
        )
        page.goto(url)
        page.get_by_text(RUNS_PAGE_TITLE, exact=True).first.click()
        return nobody

    return open_page


# --- drawing and uploading -------------------------------------------------------------


def _ellipse(cx, cy, rx, ry, n=28):
    return [(cx + rx * math.sin(2 * math.pi * i / n), cy - ry * math.cos(2 * math.pi * i / n)) for i in range(n + 1)]


# Polylines in canvas-relative coordinates ([0, 1] x [0, 1], y down), written the way a person
# draws these digits.
DIGIT_STROKES: dict[str, list[list[tuple[float, float]]]] = {
    "0": [_ellipse(0.5, 0.5, 0.2, 0.32)],
    "1": [[(0.4, 0.3), (0.52, 0.16), (0.52, 0.85)]],
    "2": [[(0.3, 0.3), (0.4, 0.18), (0.6, 0.16), (0.7, 0.3), (0.65, 0.45), (0.3, 0.82), (0.75, 0.82)]],
    "4": [[(0.6, 0.15), (0.25, 0.6), (0.75, 0.6)], [(0.6, 0.35), (0.6, 0.85)]],
    "7": [[(0.2, 0.25), (0.8, 0.2), (0.35, 0.85)]],
}


class DrawingInput:
    """Drives the app's shared input (sketchpad + upload + model-input preview) on ``page``.

    ``root`` selectors are the stable hooks that the package's image-input.js puts on its parts.
    """

    def __init__(self, page, sketch: str = SKETCH, upload: str = UPLOAD, preview: str = PREVIEW_IMG):
        self.page = page
        self.sketch = sketch
        self.upload_root = upload
        self.preview = preview

    def draw_strokes(self, strokes, steps: int = 6) -> None:
        """Draw polylines (canvas-relative [0, 1] coordinates) with real mouse events."""
        canvas = self.page.locator(f"{self.sketch} canvas")
        canvas.wait_for(state="visible")
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()
        for stroke in strokes:
            points = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in stroke]
            self.page.mouse.move(*points[0])
            self.page.mouse.down()
            for point in points[1:]:
                self.page.mouse.move(*point, steps=steps)
            self.page.mouse.up()

    def draw_digit(self, digit: str) -> None:
        self.draw_strokes(DIGIT_STROKES[digit])

    def clear(self) -> None:
        self.page.locator(f"{self.sketch} button", has_text="Clear").click()

    def upload(self, png: bytes, name: str = "digit.png") -> None:
        """Give the Marcelle image upload a file, as a file chooser would."""
        self.page.locator(f"{self.upload_root} input[type=file]").set_input_files(
            files=[{"name": name, "mimeType": "image/png", "buffer": png}]
        )

    def sketchpad_png(self) -> bytes:
        """The sketchpad canvas as the browser has it, exported as PNG."""
        return _data_url_bytes(self.page.locator(f"{self.sketch} canvas").evaluate("c => c.toDataURL('image/png')"))

    def model_input_png(self, changed_from: bytes | None = None) -> bytes:
        """The exact image the app sent to the model (the input's preview).

        With ``changed_from`` (the previous one), waits until a new image has replaced it.
        """
        self.page.locator(self.preview).wait_for(state="attached")
        if changed_from is not None:
            previous = "data:image/png;base64," + base64.b64encode(changed_from).decode()
            self.page.wait_for_function(
                "([sel, prev]) => document.querySelector(sel).src !== prev", arg=[self.preview, previous]
            )
        return _data_url_bytes(self.page.locator(self.preview).get_attribute("src"))


@pytest.fixture
def drawing_input(page) -> DrawingInput:
    return DrawingInput(page)


@pytest.fixture
def digit_png():
    """``digit_png("7", ink=255, ground=0)``: a PNG of a digit drawn with DIGIT_STROKES."""
    return render_digit_png


def render_digit_png(digit: str, size: int = 256, ink: int = 0, ground: int = 255, width: int = 12) -> bytes:
    """A PNG of ``digit`` drawn with the same strokes (ink/ground pick the polarity)."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (size, size), ground)
    draw = ImageDraw.Draw(img)
    for stroke in DIGIT_STROKES[digit]:
        draw.line([(x * size, y * size) for x, y in stroke], fill=ink, width=width, joint="curve")
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def _data_url_bytes(url: str) -> bytes:
    header, _, data = url.partition(",")
    assert header.startswith("data:image/png;base64"), f"not a PNG data URL: {header[:40]}"
    return base64.b64decode(data)


class InProcessDigits:
    """The ``digits`` model in the test process: what a page's answer is compared with."""

    def __init__(self):
        from marcelle_torch.models import get_spec, load_model

        self.spec = get_spec("digits")
        self.model = load_model(self.spec)

    def predict(self, png: bytes) -> dict:
        import torch

        from marcelle_torch.models import decode_instances, postprocess

        batch = decode_instances(self.spec, [{"b64": base64.b64encode(png).decode()}])
        with torch.inference_mode():
            return postprocess(self.spec, self.model(batch))[0]


@pytest.fixture(scope="session")
def digits_model(trained_digits) -> InProcessDigits:
    return InProcessDigits()


# What the runs page shows while a run goes, recorded by the page itself from before the run is
# made: a generation can end in well under a second, so a transient state (running, a progress
# value) is read from this record, never waited for.
RUN_WATCHER = """() => {
    window.__statuses = [];
    window.__progress = [];
    const status = document.querySelector('[data-testid=runs-status]');
    new MutationObserver(() => window.__statuses.push(status.dataset.status))
        .observe(status, { attributes: true, attributeFilter: ['data-status'] });
    const box = document.querySelector('[data-testid=runs-progress]');
    new MutationObserver(() => window.__progress.push(Number(box.dataset.progress)))
        .observe(box, { attributes: true, attributeFilter: ['data-progress'] });
    window.__images = [];
    const image = document.querySelector('[data-testid=runs-image]');
    new MutationObserver(() => image.dataset.kind && window.__images.push(image.dataset.kind))
        .observe(image, { attributes: true, attributeFilter: ['data-kind', 'data-src'] });
}"""


def watch_run(page) -> None:
    """Start recording the runs page's status and progress (read them with ``run_record``)."""
    page.evaluate(RUN_WATCHER)


def run_record(page) -> tuple[list[str], list[float], list[str]]:
    """(statuses, progress values, kinds of image: 'partial' | 'result') the runs page showed
    since ``watch_run``, in order."""
    return page.evaluate("[window.__statuses, window.__progress, window.__images]")


# Whether the imageDisplay canvas inside a hook shows the pixels of the hook's data-src image
# (at most 2 levels apart per channel): the page decodes the image, then the display draws it.
SHOWS_SOURCE = """async (hook) => {
    const box = document.querySelector(hook);
    const canvas = box.querySelector('canvas');
    const img = new Image();
    img.src = box.dataset.src;
    await img.decode();
    if (canvas.width !== img.naturalWidth || canvas.height !== img.naturalHeight) return false;
    const copy = document.createElement('canvas');
    copy.width = canvas.width;
    copy.height = canvas.height;
    copy.getContext('2d').drawImage(img, 0, 0);
    const want = copy.getContext('2d').getImageData(0, 0, copy.width, copy.height).data;
    const shown = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    return want.every((v, i) => Math.abs(v - shown[i]) <= 2);
}"""


def _shown_png(page, hook: str, timeout_s: float = 10.0) -> bytes:
    """The image a view's Marcelle imageDisplay shows (its canvas), as PNG, once it shows the
    image the hook names in data-src; fails if it does not within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(SHOWS_SOURCE, hook):
        assert time.monotonic() < deadline, f"{hook}'s display never showed its data-src image"
        page.wait_for_timeout(100)
    return _data_url_bytes(page.locator(f"{hook} canvas").evaluate("c => c.toDataURL('image/png')"))


@pytest.fixture
def shown_png():
    """``shown_png(page, hook)``: the image that the imageDisplay inside ``hook`` shows, as PNG."""
    return _shown_png


@pytest.fixture
def run_watcher():
    """``(watch_run, run_record)`` for the runs page."""
    return watch_run, run_record


def wait_for_label(page, selector: str, previous: str | None = None) -> tuple[str, float]:
    """The (label, confidence) a page shows in ``selector``; with ``previous``, wait for a new one."""
    label = page.locator(selector)
    label.wait_for()
    if previous is not None:
        page.wait_for_function(
            "([sel, prev]) => document.querySelector(sel).dataset.label !== prev", arg=[selector, previous]
        )
    return label.get_attribute("data-label"), float(label.get_attribute("data-confidence"))


@pytest.fixture(scope="session")
def wait_label():
    return wait_for_label
