"""The web app's static server: config.json, no SPA fallback, MIME types, caching, missing build,
and the security headers, the same as the chart's nginx (services/frontend/nginx.conf) sends."""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from marcelle_torch.errors import MarcelleTorchError
from marcelle_torch.stack.webapp import (
    WebappNotBuilt,
    connect_sources,
    content_type,
    security_headers,
    start_webapp,
)

NGINX_CONF = Path(__file__).resolve().parents[2] / "services" / "frontend" / "nginx.conf"

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
def test_every_response_is_cross_origin_isolated_and_has_the_csp(server, path):
    # The page and the scripts its workers start: onnxruntime-web gets threads only in a
    # cross-origin isolated page (the browser test checks `crossOriginIsolated` itself), and a
    # worker runs under its own script's CSP.
    _, headers, _ = get(f"{server}{path}")
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    for name, value in security_headers(connect_sources(CONFIG)).items():
        assert headers.get_all(name) == [value], f"{path}: {name}"
    csp = headers["Content-Security-Policy"]
    # CONFIG's Serve, and the app's default backend (no backendUrl given), REST and socket.io.
    assert "connect-src 'self' http://127.0.0.1:8000 http://127.0.0.1:3030 ws://127.0.0.1:3030;" in csp


@pytest.mark.parametrize(
    "config, expected",
    [
        # The app's defaults (services/frontend/src/config.js) when the keys are missing.
        ({}, ["http://127.0.0.1:8000", "http://127.0.0.1:3030", "ws://127.0.0.1:3030"]),
        (
            {"serveUrl": "http://localhost:9000/", "backendUrl": "https://marcelle.example/api"},
            ["http://localhost:9000", "https://marcelle.example", "wss://marcelle.example"],
        ),
        # Same origin as the page (the chart's /serve and /backend): 'self' covers them.
        ({"serveUrl": "/serve", "backendUrl": "/backend", "onnxBundle": "onnx/digits/"}, []),
        (
            {"serveUrl": "/serve", "backendUrl": "/backend", "onnxBundle": "https://cdn.example/m/"},
            ["https://cdn.example"],
        ),
        ({"serveUrl": "http://h:1", "backendUrl": "http://h:1"}, ["http://h:1", "ws://h:1"]),
        # Added bundles: each one's origin, once.
        (
            {
                "serveUrl": "/s",
                "backendUrl": "/b",
                "onnxBundles": ["onnx/x/", "https://m.example/a/", "https://m.example/b/"],
            },
            ["https://m.example"],
        ),
    ],
)
def test_connect_src_has_the_origins_the_config_points_the_app_to(config, expected):
    assert connect_sources(config) == expected
    csp = security_headers(connect_sources(config))["Content-Security-Policy"]
    assert "connect-src " + " ".join(["'self'", *expected]) + ";" in csp


def nginx_add_headers() -> dict[str, dict[str, str]]:
    """The add_header lines of nginx.conf, by block ("server" or the location's argument)."""
    blocks: dict[str, dict[str, str]] = {}
    stack: list[str] = []
    for line in NGINX_CONF.read_text().splitlines():
        code = re.sub(r"\"[^\"]*\"|'[^']*'", '""', line).split("#", 1)[0]  # braces in strings are no blocks
        if header := re.match(r'\s*add_header\s+(\S+)\s+("[^"]*"|\S+)(\s+always)?\s*;', line):
            name, value, always = header.groups()
            # Without `always`, nginx leaves the header off its error responses.
            blocks.setdefault(stack[-1], {})[name] = value.strip('"') + ("" if always else " (without always)")
        if opened := re.match(r"\s*(server|location\s+(.+?))\s*\{", code):
            stack.append(opened.group(2) or "server")
        elif code.count("{") > code.count("}"):
            stack.append("other")
        stack = stack[: len(stack) - max(0, code.count("}") - code.count("{"))]
    return blocks


def test_nginx_sends_the_same_security_headers():
    # nginx drops the server's add_header lines in a location with its own: each location that
    # serves the app's files must repeat them. Its connect-src is 'self' (same-origin proxying).
    expected = security_headers()
    blocks = nginx_add_headers()
    assert {name: blocks["server"].get(name) for name in expected} == expected
    for location in ("= /config.json", "/onnx/"):
        assert {name: blocks[location].get(name) for name in expected} == expected, location
    for location, headers in blocks.items():
        if not location.startswith("@"):  # the JSON 503s of an unreachable Serve / backend
            assert set(expected) <= set(headers), f"location {location} drops {set(expected) - set(headers)}"
    assert re.search(r"^\s*server_tokens off;", NGINX_CONF.read_text(), re.M), "nginx must not show its version"


def test_a_models_bundle_follows_the_stores_published_version(dist, tmp_path):
    from marcelle_torch.models.store import ModelStore

    store = ModelStore(tmp_path / "store")
    version = tmp_path / "store" / "digits" / "0123456789ab"
    (version / "onnx").mkdir(parents=True)
    (version / "marcelle-model.yaml").write_text("name: digits\n")
    (version / "model.pth").write_bytes(b"weights: never served")
    (version / "onnx" / "model.onnx").write_bytes(b"published-onnx")
    (version / "onnx" / "model.json").write_text('{"version": "0123456789ab"}')
    url, stop = start_webapp(dist, CONFIG, store=store.root)
    try:
        assert get(url + "/onnx/digits/model.onnx")[2] == b"onnx-bytes"  # nothing published: the app's own
        store.publish("digits", "0123456789ab")
        status, headers, body = get(url + "/onnx/digits/model.onnx")
        assert (status, body) == (200, b"published-onnx") and headers["ETag"]
        assert get(url + "/onnx/digits/model.json")[2] == b'{"version": "0123456789ab"}'
        for path in ("/onnx/digits/../model.pth", "/onnx/digits/%2e%2e/model.pth", "/onnx/digits/meta.json"):
            assert get(url + path)[0] == 404, path  # the version's own files, and the old bundle's, are not
        store.publish("digits", None)  # rollback: the app's own again
        assert get(url + "/onnx/digits/model.onnx")[2] == b"onnx-bytes"
    finally:
        stop()
