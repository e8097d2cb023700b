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


# --- the model store's published ONNX bundles (training in the loop) -------------------------


@pytest.fixture
def store_nginx(tmp_path):
    """nginx with a model store beside the app's files: `digits` has two versions, `other` none."""
    from marcelle_torch.models.store import ModelStore

    html = tmp_path / "html"
    (html / "onnx" / "digits").mkdir(parents=True)
    (html / "onnx" / "other").mkdir(parents=True)
    (html / "onnx" / "digits" / "model.onnx").write_bytes(b"image bundle")
    (html / "onnx" / "other" / "model.onnx").write_bytes(b"other image bundle")
    root = tmp_path / "store"
    for version in ("aaaaaaaaaaaa", "bbbbbbbbbbbb"):
        folder = root / "digits" / version
        (folder / "onnx").mkdir(parents=True)
        (folder / "marcelle-model.yaml").write_text("name: digits\n")
        (folder / "onnx" / "model.onnx").write_bytes(f"version {version}".encode())
        (folder / "weights.pt").write_bytes(b"weights")
    (root / ".checkpoints").mkdir()
    (root / ".checkpoints" / "run.pt").write_bytes(b"checkpoint")
    store = ModelStore(root)
    store.publish("digits", "aaaaaaaaaaaa")
    closed = f"127.0.0.1:{_closed_port()}"
    with run_nginx(tmp_path, html, closed, closed, store=root) as url:
        yield url, store


def test_a_published_versions_bundle_is_served_from_the_store(store_nginx):
    url, store = store_nginx
    status, headers, body = get(url + "/onnx/digits/model.onnx")
    assert (status, body) == (200, b"version aaaaaaaaaaaa")
    # The /onnx/ location's own headers and the isolation and security headers, as the image's bundle has.
    assert headers["Cache-Control"] == "no-cache" and headers["Content-Type"] == "application/octet-stream"
    for name, value in security_headers().items():
        assert headers.get_all(name) == [value], name
    # A publish (or a rollback) is one symlink swap: the next request follows it, no reload.
    store.publish("digits", "bbbbbbbbbbbb")
    assert get(url + "/onnx/digits/model.onnx")[2] == b"version bbbbbbbbbbbb"
    store.publish("digits", None)  # back to the model's own weights: the image's bundle
    assert get(url + "/onnx/digits/model.onnx")[2] == b"image bundle"


def test_without_a_published_version_the_images_bundle_is_served(store_nginx):
    url, _ = store_nginx
    status, headers, body = get(url + "/onnx/other/model.onnx")
    assert (status, body) == (200, b"other image bundle")
    assert headers["Cache-Control"] == "no-cache"
    for name, value in security_headers().items():
        assert headers.get_all(name) == [value], name
    status, headers, _ = get(url + "/onnx/other/missing.onnx")
    assert status == 404 and headers["Cross-Origin-Embedder-Policy"] == "require-corp"


@pytest.mark.parametrize(
    "path",
    [
        "/onnx/digits/../aaaaaaaaaaaa/weights.pt",
        "/onnx/digits/aaaaaaaaaaaa/weights.pt",
        "/onnx/digits/%2e%2e/aaaaaaaaaaaa/weights.pt",
        "/onnx/.checkpoints/run.pt",
        "/onnx/digits/..%2f..%2f.checkpoints/run.pt",
        "/onnx/digits/../../.checkpoints/run.pt",
    ],
)
def test_only_the_published_bundle_of_the_store_is_reachable(store_nginx, path):
    url, _ = store_nginx
    status, _, body = get(url + path)
    assert status in (400, 404) and b"weights" not in body and b"checkpoint" not in body, (status, body)
