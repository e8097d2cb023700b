"""The web app image's nginx template, run by the real nginx binary: every file of the app is
served cross-origin isolated (COOP same-origin + COEP require-corp) and with the CSP and the other
security headers, as the local server does, including the locations that set their own headers
(nginx drops server-level add_header there); nginx does not show its version; and the JSON 503s
for an unreachable Serve or backend are still answered."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from nginx_host import NGINX, run_nginx

from marcelle_torch.stack.webapp import security_headers

REPO = Path(__file__).resolve().parents[2]
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
    with run_nginx(tmp_path, html, f"127.0.0.1:{_closed_port()}", f"127.0.0.1:{_closed_port()}") as url:
        yield url


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
