"""The web app image's nginx template, run by the real nginx binary: every file of the app is
served cross-origin isolated (COOP same-origin + COEP require-corp) and with the CSP and the other
security headers, as the local server does, including the locations that set their own headers
(nginx drops server-level add_header there); nginx does not show its version; and the JSON 503s
for an unreachable Serve or backend are still answered."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from marcelle_torch.stack.webapp import security_headers

REPO = Path(__file__).resolve().parents[2]
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="no nginx binary (Debian's nginx)")

ISOLATED = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _closed_port() -> int:
    return _free_port()  # nothing listens there once the probe socket is closed


@pytest.fixture
def nginx(tmp_path):
    html = tmp_path / "html"
    (html / "assets").mkdir(parents=True)
    (html / "onnx" / "digits").mkdir(parents=True)
    (html / "index.html").write_text("<!doctype html><title>app</title>")
    (html / "assets" / "index-abc.js").write_text("export {};")
    (html / "onnx" / "digits" / "model.onnx").write_bytes(b"onnx")
    (html / "config.json").write_text("{}")
    port = _free_port()
    env = {
        "NGINX_PORT": str(port),
        "SERVE_UPSTREAM": f"127.0.0.1:{_closed_port()}",
        "BACKEND_UPSTREAM": f"127.0.0.1:{_closed_port()}",
        "NGINX_LOCAL_RESOLVERS": "127.0.0.1",
    }
    template = (REPO / "services" / "frontend" / "nginx.conf").read_text()
    # envsubst of the defined variables only, as the image's 20-envsubst-on-templates.sh does.
    server = re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), m.group(0)), template)
    server = server.replace("root /usr/share/nginx/html;", f"root {html};")
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read tmp_path (0700)
    (tmp_path / "logs").mkdir()
    (tmp_path / "nginx.conf").write_text(
        f"{user}worker_processes 1;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/logs/error.log;\n"
        f"events {{ worker_connections 64; }}\nhttp {{\n  access_log off;\n"
        f"  include /etc/nginx/mime.types;\n  client_body_temp_path {tmp_path}/body;\n"
        f"  proxy_temp_path {tmp_path}/proxy;\n  fastcgi_temp_path {tmp_path}/fcgi;\n"
        f"  uwsgi_temp_path {tmp_path}/uwsgi;\n  scgi_temp_path {tmp_path}/scgi;\n{server}\n}}\n"
    )
    proc = subprocess.Popen(
        [NGINX, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                pytest.fail(f"nginx exited: {proc.stderr.read().decode()}")
            try:
                urllib.request.urlopen(url + "/healthz", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


@pytest.mark.parametrize(
    "path", ["/", "/index.html", "/assets/index-abc.js", "/onnx/digits/model.onnx", "/config.json"]
)
def test_app_files_are_cross_origin_isolated(nginx, path):
    status, headers, _ = get(nginx + path)
    assert status == 200
    for name, value in ISOLATED.items():
        assert headers[name] == value, f"{path}: {name} is {headers[name]!r}"


@pytest.mark.parametrize(
    "path", ["/", "/assets/index-abc.js", "/onnx/digits/model.onnx", "/config.json", "/assets/index-missing.js"]
)
def test_app_files_have_the_local_servers_security_headers(nginx, path):
    _, headers, _ = get(nginx + path)
    for name, value in security_headers().items():  # connect-src 'self': Serve and the backend are proxied
        assert headers.get_all(name) == [value], f"{path}: {name} is {headers.get_all(name)!r}"
    assert headers["Server"] == "nginx", "server_tokens off: no version"


@pytest.mark.parametrize("path", ["/a/client/route", "/assets/index-missing.js", "/onnx/other/model.onnx"])
def test_a_path_that_is_no_file_is_a_404_not_the_app(nginx, path):
    status, _, body = get(nginx + path)
    assert status == 404 and b"<title>app</title>" not in body


def test_locations_with_their_own_headers_keep_them(nginx):
    assert get(nginx + "/config.json")[1]["Cache-Control"] == "no-store"
    assert get(nginx + "/onnx/digits/model.onnx")[1]["Cache-Control"] == "no-cache"


@pytest.mark.parametrize("path, key", [("/serve/v1/models/digits", "error"), ("/backend/runs", "className")])
def test_unreachable_upstreams_are_still_json_503(nginx, path, key):
    status, headers, body = get(nginx + path)
    assert status == 503 and headers["Retry-After"] == "1"
    assert key in json.loads(body)
