"""Fuzzing the Serve HTTP API (the session's real ``marcelle-torch serve``): a corpus of
malformed bodies, images and headers, then requests generated with Hypothesis from the
documented contract (docs/ray-serve.md / serving/app.py: the routes, ``{"instances": [...]}``, image
instances as base64). The Serve app publishes no /openapi.json yet; when it does, a
schema-driven run (schemathesis) belongs here too.

The guarantee: no answer is a 5xx (a 503 for overload is allowed, never seen idle), and every
4xx is JSON ``{"error": {"code", "message"}}`` whose message says what was wrong.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import struct
import zlib
from urllib.parse import urlsplit

import httpx
import pytest
from faults import record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.ray

PREDICT = "/v1/models/digits:predict"
LIMIT = 4 * 1024 * 1024  # args.max_body_bytes of the packaged serve config
CODES_4XX = {
    "invalid_input",
    "model_not_found",
    "payload_too_large",
    "not_found",
    "method_not_allowed",
    "origin_not_allowed",
}
TALLY = {"cases": 0, "5xx": 0, "by_status": {}}


# --------------------------------------------------------------------------- files


def png(width=8, height=8, mode="L", **save) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (width, height), 255 if mode in ("L", "1") else None).save(buf, format="PNG", **save)
    return buf.getvalue()


def encode(fmt: str, mode: str, size=(16, 16), **save) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format=fmt, **save)
    return buf.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def with_chunk(raw: bytes, extra: bytes) -> bytes:
    return raw[:33] + extra + raw[33:]  # right after IHDR


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` (a decompression bomb's shape)."""
    raw = png()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return raw[:8] + chunk(b"IHDR", ihdr) + raw[33:]


def idat_bomb() -> bytes:
    """A 4000x4000 greyscale PNG of zeros: 16 MB of pixels in ~16 kB (under the pixel limit)."""
    rows = (b"\0" + b"\0" * 4000) * 4000
    ihdr = struct.pack(">IIBBBBB", 4000, 4000, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def image_cases() -> dict[str, bytes]:
    inflating = zlib.compress(b"a" * (20 << 20), 9)
    cases = {
        "ztxt-bomb": with_chunk(png(), chunk(b"zTXt", b"k\0\0" + inflating)),
        "iccp-bomb": with_chunk(png(), chunk(b"iCCP", b"p\0\0" + inflating)),
        "itxt-bomb": with_chunk(png(), chunk(b"iTXt", b"k\0\1\0\0\0" + inflating)),
        "header-100000x100000": png_claiming(100_000, 100_000),
        "header-0x0": png_claiming(0, 0),
        "header-5000x4000": png_claiming(5000, 4000),
        "idat-bomb-4000x4000": idat_bomb(),
        "bad-crc": png()[:-4] + b"\0\0\0\0",
        "png-16bit": png(mode="I;16"),
        "png-1bit": png(mode="1"),
        "png-rgba": png(mode="RGBA"),
        "png-palette": png(mode="P"),
        "gif": encode("GIF", "P"),
        "gif-animated": encode(
            "GIF", "L", save_all=True, append_images=[__import__("PIL.Image").Image.new("L", (16, 16))]
        ),
        "bmp": encode("BMP", "RGB"),
        "tiff-float": encode("TIFF", "F"),
        "tiff-lab": encode("TIFF", "LAB"),
        "tiff-cmyk": encode("TIFF", "CMYK"),
        "tiff-ycbcr": encode("TIFF", "YCbCr"),
        "jpeg-cmyk": encode("JPEG", "CMYK"),
        "webp": encode("WEBP", "RGB"),
        "ico": encode("ICO", "RGBA"),
        "ppm": encode("PPM", "RGB"),
        "tga": encode("TGA", "RGB"),
        "pcx": encode("PCX", "RGB"),
        "1x1": encode("PNG", "L", size=(1, 1)),
        "1x4000": encode("PNG", "L", size=(1, 4000)),
        "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
        "empty": b"",
        "zeros": b"\0" * 1000,
    }
    for name in ("png-rgba", "jpeg-cmyk", "tiff-float", "gif", "webp", "idat-bomb-4000x4000"):
        raw = cases[name]
        for cut in (0.2, 0.6, 0.9):
            cases[f"{name}-truncated-{cut}"] = raw[: int(len(raw) * cut)]
    return cases


# --------------------------------------------------------------------------- checks


def check(status: int, headers, body: bytes, what: str, head: bool = False) -> None:
    TALLY["cases"] += 1
    TALLY["by_status"][status] = TALLY["by_status"].get(status, 0) + 1
    if status >= 500:
        TALLY["5xx"] += 1
    assert status < 500, f"{what}: {status} {body[:300]!r}"
    if status >= 400 and not head:  # an answer to HEAD has no body
        ctype = headers.get("content-type", "")
        assert ctype.startswith("application/json"), f"{what}: {status} is not JSON ({ctype}): {body[:200]!r}"
        error = json.loads(body)["error"]
        assert error["code"] in CODES_4XX, f"{what}: code {error['code']!r}"
        assert isinstance(error["message"], str) and len(error["message"]) >= 12, f"{what}: message {error!r}"


def send(client: httpx.Client, method: str, path: str, what: str, **kwargs) -> httpx.Response:
    response = client.request(method, path, **kwargs)
    check(response.status_code, response.headers, response.content, what, head=method == "HEAD")
    return response


def raw_request(url: str, head: bytes, body: bytes = b"") -> tuple[int, dict, bytes]:
    """One request written byte for byte on a socket (headers httpx would refuse to send)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
        sock.sendall(head + b"\r\n" + body)
        data = b""
        while True:
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
            if b"\r\n\r\n" in data:
                top, _, rest = data.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in top.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    None,
                )
                if length is not None and len(rest) >= length:
                    break
    top, _, rest = data.partition(b"\r\n\r\n")
    lines = top.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {
        k.strip().lower().decode(): v.strip().decode(errors="replace")
        for k, _, v in (line.partition(b":") for line in lines[1:])
    }
    return status, headers, rest


# --------------------------------------------------------------------------- the corpus


def test_malformed_bodies_images_and_headers_get_json_4xx_never_5xx(serve_url, make_digit):
    good, _ = make_digit(0)
    with httpx.Client(base_url=serve_url, timeout=120) as client:
        bodies = {
            "empty": b"",
            "truncated": b'{"instances": [',
            "null": b"null",
            "list": b"[]",
            "string": b'"x"',
            "number-overflow": b"1e999",
            "nan": b'{"instances": [NaN]}',
            "infinity": b'{"instances": [[Infinity]]}',
            "deep-list": b"[" * 100_000,
            "deep-object": b'{"a":' * 50_000,
            "long-integer": b'{"instances": [1' + b"0" * 100_000 + b"]}",
            "float-overflow": b'{"instances": [[[1e400]]]}',
            "huge-integers": json.dumps({"instances": [[[10**400] * 128] * 128]}).encode(),
            "negative-zero-tiny": json.dumps({"instances": [[[-0.0, 1e-400]]]}).encode(),
            "nan-in-shape": json.dumps({"instances": [[[float("nan")] * 128] * 128]}).encode(),
            "out-of-range": json.dumps({"instances": [[[1e300] * 128] * 128]}).encode(),
            "bool-grid": json.dumps({"instances": [[[True] * 128] * 128]}).encode(),
            "ragged": json.dumps({"instances": [[[0.0] * 128] * 127 + [[0.0]]]}).encode(),
            "invalid-utf8": b'{"instances": ["\xff\xfe"]}',
            "utf16": json.dumps({"instances": [good]}).encode("utf-16"),
            "bom": b"\xef\xbb\xbf" + json.dumps({"instances": [good]}).encode(),
            "duplicate-keys": b'{"instances": [], "instances": 3}',
            "extra-keys": json.dumps({"instances": [good], "parameters": {"x": 1}, "signature_name": 3}).encode(),
            "b64-data-url-wrong-mime": json.dumps({"instances": ["data:text/plain;base64," + good["b64"]]}).encode(),
            "b64-with-newlines": json.dumps(
                {"instances": [{"b64": "\n".join(good["b64"][i : i + 60] for i in range(0, len(good["b64"]), 60))}]}
            ).encode(),
            "b64-number": b'{"instances": [{"b64": 12}]}',
            "b64-null": b'{"instances": [{"b64": null}]}',
            "b64-and-more": json.dumps({"instances": [{"b64": good["b64"], "x": 1}]}).encode(),
            "many-instances": json.dumps({"instances": [good] * 300}).encode(),
            "many-bad-instances": json.dumps({"instances": [[0]] * 20_000}).encode(),
        }
        for name, body in bodies.items():
            send(client, "POST", PREDICT, f"body {name}", content=body, headers={"content-type": "application/json"})
        for name, raw in image_cases().items():
            send(client, "POST", PREDICT, f"image {name}", json={"instances": [{"b64": b64(raw)}]})
            send(
                client,
                "POST",
                PREDICT,
                f"image {name} (data URL)",
                json={"instances": [f"data:image/png;base64,{b64(raw)}"]},
            )

        for ctype in (
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/json; charset=latin-1",
            "image/png",
            "",
            "application/json, text/html",
        ):
            send(
                client,
                "POST",
                PREDICT,
                f"content-type {ctype!r}",
                content=json.dumps({"instances": [good]}),
                headers={"content-type": ctype},
            )
        send(client, "POST", PREDICT, "a form body", data={"instances": "1"})
        send(client, "POST", PREDICT, "a PNG as the body", content=png(), headers={"content-type": "image/png"})

        over = b'{"instances": ["' + b"A" * (LIMIT + 10) + b'"]}'
        assert send(client, "POST", PREDICT, "over the limit", content=over).status_code == 413
        assert (
            send(
                client,
                "POST",
                PREDICT,
                "chunked over the limit",
                content=iter([over[i : i + 65536] for i in range(0, len(over), 65536)]),
            ).status_code
            == 413
        )

        for method in ("GET", "PUT", "DELETE", "PATCH"):
            send(client, method, PREDICT, f"{method} predict")
        for path in ("/healthz", "/readyz", "/v1/models", "/v1/models/digits"):
            send(client, "POST", path, f"POST {path}", json={})
        send(client, "OPTIONS", PREDICT, "a preflight without an origin")
        send(client, "OPTIONS", PREDICT, "a preflight from elsewhere", headers={"origin": "http://evil.test"})
        for path in (
            "/v1/models/%00:predict",
            "/v1/models/..%2f..%2fetc:predict",
            "/v1/models/:predict",
            "/v1/models/digits:predict/x",
            "//v1//models//digits:predict",
            "/v1/models/" + "d" * 4000,
            "/v1/models/\u00e9\u00e8:predict",
            "/v1/models/digits:predict?x=" + "%" * 50,
            "/v2",
            "/",
        ):
            send(client, "POST", path, f"path {path[:60]}", json={"instances": [good]})

    # Requests malformed at the HTTP level are refused by the HAProxy edge before the app, with
    # its built-in HTML pages (HAProxy 2.8 ignores error files there; docs/security.md): 4xx,
    # never 5xx, is what is checked for them.
    framing = framing_cases(serve_url)
    for name, (status, _hdrs, body) in framing.items():
        TALLY["cases"] += 1
        TALLY["by_status"][status] = TALLY["by_status"].get(status, 0) + 1
        TALLY["5xx"] += status >= 500
        assert status < 500, f"header {name}: {status} {body[:300]!r}"
    status, hdrs, body = framing["chunked over the limit, raw"]
    check(status, hdrs, body, "chunked over the limit, raw")
    assert status == 413, status


def framing_cases(serve_url: str) -> dict[str, tuple[int, dict, bytes]]:
    """Requests malformed at the HTTP level, written byte for byte: name -> (status, headers, body)."""
    headers = {
        "negative length": b"Content-Length: -1\r\n",
        "non-numeric length": b"Content-Length: abc\r\n",
        "length and chunked": b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "expect 100": b"Expect: 100-continue\r\nContent-Length: 2\r\n",
        "huge header": b"X-Big: " + b"a" * 60_000 + b"\r\nContent-Length: 2\r\n",
        "many headers": b"".join(b"X-H%d: v\r\n" % i for i in range(200)) + b"Content-Length: 2\r\n",
    }
    answers = {}
    for name, extra in headers.items():
        head = f"POST {PREDICT} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n".encode() + extra
        answers[name] = raw_request(serve_url, head, b"{}")
    chunked = (
        f"POST {PREDICT} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n"
    ).encode()
    answers["a chunk of bad size"] = raw_request(serve_url, chunked, b"zz\r\n{}\r\n0\r\n\r\n")
    answers["chunked over the limit, raw"] = raw_request(
        serve_url, chunked, b"".join(b"10000\r\n" + b"A" * 0x10000 + b"\r\n" for _ in range(70)) + b"0\r\n\r\n"
    )
    return answers


# --------------------------------------------------------------------------- generated from the contract

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**320)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=40,
)
pixel = st.floats(allow_nan=True, allow_infinity=True) | st.integers() | st.sampled_from([0.0, 0.5, 1.0])
grid = st.builds(
    lambda w, h, v: [[[v] * w] * h],
    st.sampled_from([0, 1, 127, 128, 129]),
    st.sampled_from([0, 1, 127, 128, 129]),
    pixel,
)
image_b64 = (
    st.binary(max_size=600).map(b64)
    | st.text(max_size=40)
    | st.sampled_from(list(image_cases().values())).map(b64)
    | st.tuples(st.sampled_from(list(image_cases().values())), st.integers(1, 200)).map(
        lambda t: b64(t[0][: -t[1]] if len(t[0]) > t[1] else t[0])
    )
)
instance = (
    json_value | grid | image_b64.map(lambda s: {"b64": s}) | image_b64.map(lambda s: f"data:image/png;base64,{s}")
)
body = st.lists(instance, max_size=4).map(lambda xs: {"instances": xs}) | st.dictionaries(
    st.sampled_from(["instances", "inputs", "b64", ""]), json_value, max_size=3
)
encoded = (
    body.map(lambda b: json.dumps(b).encode())
    | st.binary(max_size=300)
    | body.map(lambda b: json.dumps(b).encode()).flatmap(lambda raw: st.integers(0, len(raw)).map(lambda n: raw[:n]))
)
paths = st.sampled_from([PREDICT, "/v1/models/digits", "/v1/models", "/healthz", "/readyz"]) | st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?#"), max_size=30
).map(lambda s: f"/v1/models/{s}:predict")
methods = st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE", "OPTIONS", "HEAD", "PATCH"])
ctypes = st.sampled_from(["application/json", "text/plain", "application/octet-stream", "", "image/png"])


def test_requests_generated_from_the_contract_get_json_4xx_never_5xx(serve_url):
    openapi = httpx.get(f"{serve_url}/openapi.json", timeout=60)
    check(openapi.status_code, openapi.headers, openapi.content, "GET /openapi.json")
    with httpx.Client(base_url=serve_url, timeout=120) as client:

        @settings(
            max_examples=300, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
        )
        @given(method=methods, path=paths, content=encoded, ctype=ctypes)
        def one(method, path, content, ctype):
            send(
                client,
                method,
                path,
                f"{method} {path[:60]} {content[:120]!r}",
                content=content if method not in ("GET", "HEAD", "OPTIONS") else None,
                headers={"content-type": ctype, "origin": "http://127.0.0.1:5173"},
            )

        one()


def test_zz_fuzz_figures():
    """Runs last in this file: the tally of both tests, for the docs' Reliability table."""
    assert TALLY["cases"] > 300, TALLY
    record(
        "fuzz_http",
        {
            "cases": TALLY["cases"],
            "responses_5xx": TALLY["5xx"],
            "by_status": {str(k): v for k, v in sorted(TALLY["by_status"].items())},
        },
    )
