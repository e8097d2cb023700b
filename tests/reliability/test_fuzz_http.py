"""Fuzzing the Serve HTTP API (the session's real ``marcelle-torch serve``): a corpus of
malformed bodies, images and headers, then requests generated with Hypothesis from the
documented contract (docs/ray-serve.md / serving/app.py: the routes, ``{"instances": [...]}``, image
instances as base64), for both protocols: v1 and the Open Inference Protocol (v2: serving/v2.py,
``{"inputs": [{"name", "shape", "datatype", "data"}]}``, FP32 or BYTES, JSON or the binary tensor
extension). The Serve app publishes no /openapi.json yet; when it does, a
schema-driven run (schemathesis) belongs here too.

The guarantee: no answer is a 5xx (a 503 for overload is allowed, never seen idle), and every
4xx is JSON whose message says what was wrong: ``{"error": {"code", "message"}}`` on v1 routes,
the protocol's ``{"error": "<message>"}`` under ``/v2``.
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
INFER = "/v2/models/digits/infer"
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


def check(status: int, headers, body: bytes, what: str, head: bool = False, path: str = "") -> None:
    TALLY["cases"] += 1
    TALLY["by_status"][status] = TALLY["by_status"].get(status, 0) + 1
    if status >= 500:
        TALLY["5xx"] += 1
    assert status < 500, f"{what}: {status} {body[:300]!r}"
    if status >= 400 and not head:  # an answer to HEAD has no body
        ctype = headers.get("content-type", "")
        assert ctype.startswith("application/json"), f"{what}: {status} is not JSON ({ctype}): {body[:200]!r}"
        error = json.loads(body)["error"]
        if path == "/v2" or path.startswith("/v2/"):  # the Open Inference Protocol's error shape
            assert isinstance(error, str) and len(error) >= 12, f"{what}: error {error!r}"
            return
        assert error["code"] in CODES_4XX, f"{what}: code {error['code']!r}"
        assert isinstance(error["message"], str) and len(error["message"]) >= 12, f"{what}: message {error!r}"


def send(client: httpx.Client, method: str, path: str, what: str, **kwargs) -> httpx.Response:
    response = client.request(method, path, **kwargs)
    check(response.status_code, response.headers, response.content, what, head=method == "HEAD", path=path)
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


def v2_input(datatype="FP32", shape=(1, 1, 128, 128), data=None, name="input", **extra) -> dict:
    item = {"name": name, "shape": list(shape), "datatype": datatype, **extra}
    if data is not None:
        item["data"] = data
    return item


def binary_request(inputs: list[dict], binary: bytes, header_length: str | None = None) -> tuple[bytes, dict]:
    """A body in the binary tensor extension: the JSON, then ``binary``; with its header."""
    head = json.dumps({"inputs": inputs}).encode()
    length = str(len(head)) if header_length is None else header_length
    return head + binary, {"inference-header-content-length": length, "content-type": "application/octet-stream"}


def bytes_elements(*items: bytes) -> bytes:
    """BYTES in the binary extension: each element a 4-byte little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(x)) + x for x in items)


def test_malformed_v2_bodies_get_the_protocols_4xx_never_5xx(serve_url, make_digit):
    good, _ = make_digit(0)
    pixels = [0.5] * (128 * 128)
    with httpx.Client(base_url=serve_url, timeout=120) as client:
        bodies = {
            "empty": b"",
            "truncated": b'{"inputs": [',
            "null": b"null",
            "list": b"[]",
            "instances (v1)": json.dumps({"instances": [good]}).encode(),
            "inputs-object": b'{"inputs": {"name": "input"}}',
            "inputs-empty": b'{"inputs": []}',
            "inputs-two": json.dumps({"inputs": [v2_input(data=pixels), v2_input(data=pixels)]}).encode(),
            "input-not-object": b'{"inputs": [3]}',
            "no-name": json.dumps({"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}).encode(),
            "name-number": json.dumps({"inputs": [v2_input(name=3, data=pixels)]}).encode(),
            "no-shape": json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "data": pixels}]}).encode(),
            "shape-string": json.dumps({"inputs": [v2_input(shape="1,1,128,128", data=pixels)]}).encode(),
            "shape-floats": json.dumps({"inputs": [v2_input(shape=[1.0, 1, 128, 128], data=pixels)]}).encode(),
            "shape-bools": json.dumps({"inputs": [v2_input(shape=[True, 1, 128, 128], data=pixels)]}).encode(),
            "shape-negative": json.dumps({"inputs": [v2_input(shape=[-1, 1, 128, 128], data=pixels)]}).encode(),
            "shape-zero-batch": json.dumps({"inputs": [v2_input(shape=[0, 1, 128, 128], data=[])]}).encode(),
            "shape-huge": json.dumps({"inputs": [v2_input(shape=[10**12, 1, 128, 128], data=pixels)]}).encode(),
            "shape-beyond-int64": json.dumps({"inputs": [v2_input(shape=[10**30, 1, 128, 128], data=pixels)]}).encode(),
            "shape-wrong": json.dumps({"inputs": [v2_input(shape=[1, 128, 128], data=pixels)]}).encode(),
            "data-short": json.dumps({"inputs": [v2_input(data=pixels[:-1])]}).encode(),
            "data-long": json.dumps({"inputs": [v2_input(data=pixels + [0.0])]}).encode(),
            "data-missing": json.dumps({"inputs": [v2_input()]}).encode(),
            "data-object": json.dumps({"inputs": [v2_input(data={"a": 1})]}).encode(),
            "data-strings": json.dumps({"inputs": [v2_input(data=["x"] * len(pixels))]}).encode(),
            "data-ragged": json.dumps({"inputs": [v2_input(data=[[0.0] * 128] * 127 + [[0.0]])]}).encode(),
            "data-deep": json.dumps(
                {
                    "inputs": [
                        v2_input(shape=[1], data=[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]])
                    ]
                }
            ).encode(),
            "data-nan": json.dumps({"inputs": [v2_input(data=[float("nan")] * len(pixels))]}).encode(),
            "data-infinity": json.dumps({"inputs": [v2_input(data=[float("inf")] * len(pixels))]}).encode(),
            "data-over-fp32": json.dumps({"inputs": [v2_input(data=[1e300] * len(pixels))]}).encode(),
            "data-huge-integers": json.dumps({"inputs": [v2_input(data=[10**400] * len(pixels))]}).encode(),
            "data-out-of-range": json.dumps({"inputs": [v2_input(data=[7.0] * len(pixels))]}).encode(),
            "data-bools": json.dumps({"inputs": [v2_input(data=[True] * len(pixels))]}).encode(),
            "datatype-int8": json.dumps({"inputs": [v2_input(datatype="INT8", data=pixels)]}).encode(),
            "datatype-fp16": json.dumps({"inputs": [v2_input(datatype="FP16", data=pixels)]}).encode(),
            "datatype-null": json.dumps({"inputs": [v2_input(datatype=None, data=pixels)]}).encode(),
            "parameters-list": json.dumps({"inputs": [v2_input(data=pixels, parameters=[1])]}).encode(),
            "bytes-not-strings": json.dumps({"inputs": [v2_input("BYTES", [1], data=[1])]}).encode(),
            "bytes-count": json.dumps({"inputs": [v2_input("BYTES", [2], data=[good["b64"]])]}).encode(),
            "bytes-shape-3d": json.dumps({"inputs": [v2_input("BYTES", [1, 1, 1], data=[good["b64"]])]}).encode(),
            "bytes-not-base64": json.dumps({"inputs": [v2_input("BYTES", [1], data=["***"])]}).encode(),
            "bytes-not-image": json.dumps({"inputs": [v2_input("BYTES", [1], data=[b64(b"hello")])]}).encode(),
            "outputs-unknown": json.dumps(
                {"inputs": [v2_input("BYTES", [1], data=[good["b64"]])], "outputs": [{"name": "logits"}]}
            ).encode(),
            "outputs-not-list": json.dumps(
                {"inputs": [v2_input("BYTES", [1], data=[good["b64"]])], "outputs": 3}
            ).encode(),
            "outputs-names-lists": json.dumps(
                {"inputs": [v2_input("BYTES", [1], data=[good["b64"]])], "outputs": [{"name": [1]}]}
            ).encode(),
            "id-object": json.dumps({"id": {"a": 1}, "inputs": [v2_input("BYTES", [1], data=[good["b64"]])]}).encode(),
            "deep": b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            "long-integer": b'{"inputs": [1' + b"0" * 100_000 + b"]}",
            "invalid-utf8": b'{"inputs": ["\xff\xfe"]}',
        }
        for name, body in bodies.items():
            send(client, "POST", INFER, f"v2 body {name}", content=body, headers={"content-type": "application/json"})
        for name, raw in image_cases().items():
            send(client, "POST", INFER, f"v2 image {name}", json={"inputs": [v2_input("BYTES", [1], data=[b64(raw)])]})
            body, headers = binary_request(
                [v2_input("BYTES", [1], parameters={"binary_data_size": len(bytes_elements(raw))})], bytes_elements(raw)
            )
            send(client, "POST", INFER, f"v2 image {name} (binary)", content=body, headers=headers)

        fp32 = struct.pack("<f", 0.5) * (128 * 128)
        sized = [v2_input(parameters={"binary_data_size": len(fp32)})]
        binary = {
            "header-past-body": binary_request(sized, fp32, header_length=str(10**9)),
            "header-negative": binary_request(sized, fp32, header_length="-1"),
            "header-not-number": binary_request(sized, fp32, header_length="abc"),
            "header-zero": binary_request(sized, fp32, header_length="0"),
            "header-cuts-json": binary_request(sized, fp32, header_length="10"),
            "size-mismatch": binary_request([v2_input(parameters={"binary_data_size": 12})], fp32),
            "size-negative": binary_request([v2_input(parameters={"binary_data_size": -4})], fp32),
            "size-string": binary_request([v2_input(parameters={"binary_data_size": "4"})], fp32),
            "fp32-short": binary_request([v2_input(parameters={"binary_data_size": len(fp32) - 4})], fp32[:-4]),
            "fp32-odd": binary_request([v2_input(parameters={"binary_data_size": 7})], b"\0" * 7),
            "fp32-nan": binary_request(sized, struct.pack("<f", float("nan")) * (128 * 128)),
            "fp32-out-of-range": binary_request(sized, struct.pack("<f", 9.0) * (128 * 128)),
            "no-binary-sent": binary_request(sized, b""),
            "bytes-length-cut": binary_request(
                [v2_input("BYTES", [1], parameters={"binary_data_size": 2})], b"\x05\x00"
            ),
            "bytes-element-past-end": binary_request(
                [v2_input("BYTES", [1], parameters={"binary_data_size": 6})], struct.pack("<I", 10**6) + b"ab"
            ),
            "bytes-count-mismatch": binary_request(
                [v2_input("BYTES", [3], parameters={"binary_data_size": 9})], bytes_elements(b"abcde")
            ),
        }
        for name, (body, headers) in binary.items():
            send(client, "POST", INFER, f"v2 binary {name}", content=body, headers=headers)

        over = b'{"inputs": ["' + b"A" * (LIMIT + 10) + b'"]}'
        assert send(client, "POST", INFER, "v2 over the limit", content=over).status_code == 413
        for method in ("GET", "PUT", "DELETE", "PATCH"):
            send(client, method, INFER, f"{method} infer")
        for path in ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/digits", "/v2/models/digits/ready"):
            send(client, "POST", path, f"POST {path}", json={})
        for path in (
            "/v2/models/nope/infer",
            "/v2/models/%00/infer",
            "/v2/models/..%2f..%2fetc/infer",
            "/v2/models//infer",
            "/v2/models/digits/infer/x",
            "/v2/models/digits/versions/1/infer",
            "/v2/models/" + "d" * 4000 + "/infer",
            "/v2/repository/index",
        ):
            send(
                client, "POST", path, f"path {path[:60]}", json={"inputs": [v2_input("BYTES", [1], data=[good["b64"]])]}
            )


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


v2_shape = st.lists(st.integers(-2, 130) | st.sampled_from([1, 128, 10**20]) | json_leaf, max_size=5) | json_leaf
v2_data = (
    st.lists(pixel, max_size=8)
    | st.lists(image_b64, max_size=3)
    | grid
    | json_value
    | st.builds(lambda v: [v] * (128 * 128), pixel)
)
v2_tensor = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["input", "input", "x", ""]) | json_leaf,
        "shape": v2_shape,
        "datatype": st.sampled_from(["FP32", "FP32", "BYTES", "BYTES", "INT64", "FP16", "fp32", ""]) | json_leaf,
    },
    optional={
        "data": v2_data,
        "parameters": st.dictionaries(st.sampled_from(["binary_data_size", "content_type"]), json_leaf, max_size=2)
        | json_value,
    },
)
v2_body = st.fixed_dictionaries(
    {"inputs": st.lists(v2_tensor, max_size=2) | json_value},
    optional={
        "id": json_leaf,
        "outputs": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["label", "probabilities", "x"])}))
        | json_value,
        "parameters": json_value,
    },
)
v2_paths = st.sampled_from(
    [INFER, INFER, INFER, "/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/digits", "/v2/models/digits/ready"]
) | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?#/"), max_size=30).map(
    lambda s: f"/v2/models/{s}/infer"
)


def test_v2_requests_generated_from_the_contract_get_json_4xx_never_5xx(serve_url):
    with httpx.Client(base_url=serve_url, timeout=120) as client:

        @settings(
            max_examples=300, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
        )
        @given(
            method=methods,
            path=v2_paths,
            body=v2_body,
            tail=st.binary(max_size=64),
            header=st.none() | st.sampled_from(["auto", "0", "-3", "x", "99999999"]),
        )
        def one(method, path, body, tail, header):
            content = json.dumps(body).encode()
            headers = {"content-type": "application/json", "origin": "http://127.0.0.1:5173"}
            if header is not None:  # the binary tensor extension: the JSON's length, then bytes
                headers["inference-header-content-length"] = str(len(content)) if header == "auto" else header
                content += tail
            send(
                client,
                method,
                path,
                f"{method} {path[:60]} {content[:160]!r}",
                content=content if method not in ("GET", "HEAD", "OPTIONS") else None,
                headers=headers,
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
