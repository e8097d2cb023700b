"""The web app's static server: config.json, no SPA fallback, MIME types, caching, missing build."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest

from marcelle_torch.errors import MarcelleTorchError
from marcelle_torch.stack.webapp import WebappNotBuilt, content_type, start_webapp

CONFIG = {"serveUrl": "http://127.0.0.1:8000", "model": "digits"}
WASM = b"\x00asm\x01\x00\x00\x00"


@pytest.fixture
def dist(tmp_path):
    root = tmp_path / "dist"
    (root / "assets").mkdir(parents=True)
    (root / "onnx" / "digits").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>marcelle-torch</title>")
    (root / "assets" / "index-abc123.js").write_text("console.log('app');")
    (root / "assets" / "ort-wasm-simd-threaded.wasm").write_bytes(WASM)
    (root / "assets" / "ort.bundle.min.mjs").write_text("export {};")
    (root / "onnx" / "digits" / "model.onnx").write_bytes(b"onnx-bytes")
    (root / "onnx" / "digits" / "meta.json").write_text('{"labels": []}')
    (tmp_path / "secret.txt").write_text("outside dist")
    return root


@pytest.fixture
def server(dist):
    url, stop = start_webapp(dist, CONFIG)
    yield url
    stop()


def get(url, method="GET", headers=None):
    """(status, headers, body) also for error statuses."""
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def test_config_json_is_the_given_dict_and_never_cached(server):
    status, headers, body = get(f"{server}/config.json")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert headers["Cache-Control"] == "no-store"
    assert json.loads(body) == CONFIG


def test_index_and_no_spa_fallback(server, dist):
    index = (dist / "index.html").read_bytes()
    for path in ("/", "/index.html"):
        status, headers, body = get(f"{server}{path}")
        assert status == 200, path
        assert headers["Content-Type"] == "text/html; charset=utf-8", path
        assert headers["Cache-Control"] == "no-cache", path
        assert body == index, path
    # Marcelle's dashboard routes in the hash (/#onnx): any other path is not a page.
    for path in ("/some/client/route", "/onnx"):
        status, headers, _ = get(f"{server}{path}")
        assert status == 404, path
        assert not headers["Content-Type"].startswith("text/html"), path


def test_missing_file_with_extension_is_404_not_html(server):
    for path in ("/assets/missing-123.js", "/onnx/digits/other.onnx", "/favicon.ico"):
        status, headers, body = get(f"{server}{path}")
        assert status == 404, path
        assert not headers["Content-Type"].startswith("text/html"), path


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/assets/ort-wasm-simd-threaded.wasm", "application/wasm"),
        ("/assets/ort.bundle.min.mjs", "text/javascript; charset=utf-8"),
        ("/assets/index-abc123.js", "text/javascript; charset=utf-8"),
        ("/onnx/digits/model.onnx", "application/octet-stream"),
        ("/onnx/digits/meta.json", "application/json"),
    ],
)
def test_mime_types(server, path, expected):
    status, headers, _ = get(f"{server}{path}")
    assert status == 200
    assert headers["Content-Type"] == expected
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_wasm_bytes_and_immutable_cache_for_hashed_assets(server):
    status, headers, body = get(f"{server}/assets/ort-wasm-simd-threaded.wasm")
    assert status == 200 and body == WASM
    assert "immutable" in headers["Cache-Control"]
    # The ONNX bundle is not content-hashed: browsers must revalidate it.
    _, headers, _ = get(f"{server}/onnx/digits/model.onnx")
    assert headers["Cache-Control"] == "no-cache"


def test_etag_revalidation(server):
    _, headers, _ = get(f"{server}/onnx/digits/model.onnx")
    status, _, body = get(f"{server}/onnx/digits/model.onnx", headers={"If-None-Match": headers["ETag"]})
    assert status == 304 and body == b""


def test_head_has_length_but_no_body(server):
    status, headers, body = get(f"{server}/onnx/digits/model.onnx", method="HEAD")
    assert status == 200 and body == b""
    assert headers["Content-Length"] == str(len(b"onnx-bytes"))


def test_no_path_traversal(server):
    # urllib would normalise "..": send the raw request line.
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"GET /../secret.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    assert b"outside dist" not in response
    assert response.startswith(b"HTTP/1.1 404")


def test_only_get_and_head(server):
    status, headers, _ = get(f"{server}/config.json", method="POST")
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"


def test_missing_dist_is_one_clear_error(tmp_path):
    with pytest.raises(WebappNotBuilt, match="run `make webapp` first") as info:
        start_webapp(tmp_path / "nope", CONFIG)
    assert "\n" not in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(WebappNotBuilt, match="index.html is missing"):
        start_webapp(tmp_path / "empty", CONFIG)


def test_port_in_use_and_bad_config_are_clear_errors(dist):
    url, stop = start_webapp(dist, CONFIG)
    try:
        port = int(url.rsplit(":", 1)[1])
        with pytest.raises(MarcelleTorchError, match=f"cannot serve the web app on 127.0.0.1:{port}"):
            start_webapp(dist, CONFIG, port=port)
    finally:
        stop()
    with pytest.raises(MarcelleTorchError, match="not JSON-serialisable"):
        start_webapp(dist, {"bad": object()})


def test_stop_frees_the_port_and_is_idempotent(dist):
    url, stop = start_webapp(dist, CONFIG)
    assert get(f"{url}/config.json")[0] == 200
    stop()
    stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/config.json", timeout=5)


def test_content_type_fallback():
    assert content_type("x.WASM") == "application/wasm"
    assert content_type("x.unknown-ext") == "application/octet-stream"


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/some/route",
        "/assets/index-abc123.js",
        "/assets/ort.bundle.min.mjs",
        "/config.json",
        "/onnx/digits/model.onnx",
        "/missing.js",
    ],
)
def test_every_response_is_cross_origin_isolated(server, path):
    # The page and the scripts its workers start: onnxruntime-web gets threads only in a
    # cross-origin isolated page (the browser test checks `crossOriginIsolated` itself).
    _, headers, _ = get(f"{server}{path}")
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
