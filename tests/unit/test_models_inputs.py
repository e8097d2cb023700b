"""decode_instances: every accepted encoding, and a clear InvalidInput for each bad one."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from marcelle_torch.errors import InvalidInput
from marcelle_torch.models import ImageInput, ModelSpec, TensorInput, decode_instances, get_spec, postprocess


@pytest.fixture(scope="module")
def digits():
    return get_spec("digits")


def encode(img: Image.Image, fmt="PNG") -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def test_png_jpeg_dataurl_and_list_give_the_shape(digits):
    img = Image.new("L", (300, 200), 255)
    batch = decode_instances(
        digits,
        [
            {"b64": encode(img)},
            "data:image/png;base64," + encode(img),
            {"b64": encode(img.convert("RGB"), "JPEG")},
            np.zeros((128, 128)).tolist(),
            np.zeros((1, 128, 128)).tolist(),
        ],
    )
    assert batch.shape == (5, 1, 128, 128)
    assert batch.dtype == torch.float32
    assert float(batch[0].min()) == pytest.approx(1.0)  # white stays white after padding


def test_transparent_canvas_is_put_on_white(digits):
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    rgba.putpixel((10, 10), (0, 0, 0, 255))
    x = decode_instances(digits, [{"b64": encode(rgba)}])
    assert float(x.max()) == pytest.approx(1.0)
    assert float(x.min()) < 0.5


@pytest.mark.parametrize(
    "instances, message",
    [
        ({"b64": "x"}, "'instances' must be a list, got an object"),
        ("abc", "'instances' must be a list, got a string"),
        (None, "'instances' must be a list, got null"),
        ([], "'instances' is empty"),
        ([{"b64": "not base64!"}], "instance 0: b64 is not valid base64"),
        ([{"b64": base64.b64encode(b"hello").decode()}], "instance 0: b64 does not hold an image"),
        ([{"b64": 3}], "instance 0: b64 must be a string, got a number"),
        ([{"png": "x"}], "an object instance must be"),
        ([[[0.0] * 3] * 3], r"instance 0: wrong shape \[3, 3\], expected \[1, 128, 128\]"),
        ([np.zeros((128, 128)).tolist(), 5], "instance 1: expected a nested list"),
        ([[[0, 1], [2]]], "ragged or not numeric"),
        ([np.full((128, 128), 2.0).tolist()], r"values must lie in \[0.0, 1.0\]"),
        ([np.full((128, 128), np.nan).tolist()], "values must be finite"),
        ([True], "got a boolean"),
    ],
)
def test_bad_instances_say_what_is_wrong(digits, instances, message):
    with pytest.raises(InvalidInput, match=message) as info:
        decode_instances(digits, instances)
    assert info.value.status == 400


def test_huge_image_is_refused(digits):
    img = Image.new("L", (5000, 4000), 255)
    with pytest.raises(InvalidInput, match="more than"):
        decode_instances(digits, [{"b64": encode(img)}])


def test_tensor_input_dtype_and_shape():
    spec = ModelSpec(
        name="t",
        task="classification",
        build=lambda: torch.nn.Identity(),
        input=TensorInput((2, 3), value_range=(-1.0, 1.0)),
        labels=("a",),
    )
    x = decode_instances(spec, [[[0, 0.5, 1], [-1, 0, 0]]])
    assert x.shape == (1, 2, 3)
    with pytest.raises(InvalidInput, match=r"expected \[2, 3\]"):
        decode_instances(spec, [[0, 1]])


def test_postprocess_gives_classifier_results(digits):
    probs = torch.zeros(2, 10)
    probs[0, 3] = 1.0
    probs[1, 7] = 1.0
    out = postprocess(digits, probs)
    assert [p["label"] for p in out] == ["3", "7"]
    assert set(out[0]["confidences"]) == set(digits.labels)


def test_image_input_value_range_is_applied():
    spec = ModelSpec(
        name="r",
        task="classification",
        build=lambda: torch.nn.Identity(),
        input=ImageInput(size=8, value_range=(-1.0, 1.0)),
        labels=("a",),
    )
    x = decode_instances(spec, [{"b64": encode(Image.new("L", (8, 8), 255))}])
    assert float(x.max()) == pytest.approx(1.0)


def _png_with_chunk(kind: bytes, data: bytes) -> str:
    import struct
    import zlib

    buf = io.BytesIO()
    Image.new("L", (8, 8), 255).save(buf, format="PNG")
    raw = buf.getvalue()
    chunk = struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return base64.b64encode(raw[:33] + chunk + raw[33:]).decode()  # after the IHDR chunk


def _encoded(mode: str, fmt: str) -> str:
    buf = io.BytesIO()
    Image.new(mode, (8, 8)).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize(
    "instance, message",
    [
        # Found by the HTTP fuzzing (tests/reliability/test_fuzz_http.py): each escaped as a 500.
        (
            {"b64": _png_with_chunk(b"zTXt", b"k\0\0" + __import__("zlib").compress(b"a" * (20 << 20)))},
            "cannot be decoded .*too large",
        ),
        ({"b64": _encoded("LAB", "TIFF")}, "cannot be decoded .*LAB"),
        ([[10**400] * 128] * 128, "a number is too large"),
    ],
)
def test_files_and_numbers_the_decoders_choke_on_are_bad_input(digits, instance, message):
    with pytest.raises(InvalidInput, match=message) as info:
        decode_instances(digits, [instance])
    assert info.value.status == 400
