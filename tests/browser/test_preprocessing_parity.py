"""The page's image preprocessing (packages/marcelle-torch/src/image-tensor.js, used for
ONNX in the browser) gives the tensor the server's (models/inputs.py decode_image, used by
Ray Serve and the worker) makes from the same PNG: same geometry (a non-square image is
padded, never cropped), same grey, same value range, same channels. The module is loaded as
is into real Chromium; the PNGs are made here."""

from __future__ import annotations

import base64
import functools
import http.server
import io
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from marcelle_torch.models import ImageInput
from marcelle_torch.models.inputs import decode_image

COMPONENTS = Path(__file__).resolve().parents[2] / "packages" / "marcelle-torch" / "src"


@pytest.fixture(scope="module")
def module_url():
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(COMPONENTS))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def png(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def landscape_digit_at_the_edge() -> Image.Image:
    # A wide photo of a digit near its left edge: a centre crop would cut the digit off.
    img = Image.new("L", (240, 120), 235)
    ImageDraw.Draw(img).rectangle((6, 20, 60, 100), fill=20)
    return img


def portrait_light_on_dark() -> Image.Image:
    img = Image.new("L", (90, 180), 10)
    ImageDraw.Draw(img).ellipse((15, 100, 75, 170), fill=250)
    return img


def transparent_canvas_export() -> Image.Image:
    # What a canvas exports: transparent where nothing is drawn.
    img = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
    ImageDraw.Draw(img).line((30, 30, 130, 130), fill=(0, 0, 0, 255), width=16)
    return img


def colour_blocks() -> Image.Image:
    img = Image.new("RGB", (150, 100), (200, 30, 60))
    ImageDraw.Draw(img).rectangle((70, 10, 140, 90), fill=(20, 180, 240))
    return img


CASES = [
    ("landscape, digit at the edge", landscape_digit_at_the_edge, ImageInput(size=32)),
    ("portrait, light on dark", portrait_light_on_dark, ImageInput(size=32)),
    ("transparent canvas export", transparent_canvas_export, ImageInput(size=32)),
    ("range -1..1", landscape_digit_at_the_edge, ImageInput(size=32, value_range=(-1.0, 1.0))),
    ("RGB, 3 channels", colour_blocks, ImageInput(size=32, channels=3)),
]


@pytest.mark.parametrize("name, make, schema", CASES, ids=[c[0] for c in CASES])
def test_the_page_and_the_server_make_the_same_tensor(page, module_url, name, make, schema):
    b64 = png(make())
    server = decode_image(b64, schema, "instance 0").numpy()
    page.goto(module_url + "/")
    values = page.evaluate(
        """async ([url, b64, size, channels, range]) => {
            const { toTensor } = await import(url);
            const img = new Image();
            img.src = 'data:image/png;base64,' + b64;
            await img.decode();
            return Array.from(toTensor(img, size, { channels, range }));
        }""",
        [module_url + "/image-tensor.js", b64, schema.size, schema.channels, list(schema.value_range)],
    )
    browser = np.asarray(values, dtype=np.float32).reshape(server.shape)
    span = schema.value_range[1] - schema.value_range[0]
    diff = np.abs(browser - server) / span
    # Resampling filters differ a little at edges (Chromium's smoothing, Pillow's bilinear);
    # a crop instead of a pad, another grey, range or channel order differs by far more.
    assert diff.mean() < 0.03, f"{name}: mean difference {diff.mean():.3f}"
    assert np.quantile(diff, 0.95) < 0.15, f"{name}: 95th percentile difference {np.quantile(diff, 0.95):.3f}"
