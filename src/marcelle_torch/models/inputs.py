"""Turning JSON instances into a model's input tensor, and its output into JSON.

Shared by every server-side path (Serve, worker) so they accept exactly the same inputs
and say exactly the same thing about a bad one.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import InvalidInput
from .spec import ImageInput, ModelSpec, TensorInput

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

MAX_IMAGE_PIXELS = 4096 * 4096


def parse_predict_body(body: bytes) -> list:
    """A predict request's body (``{"instances": [...]}``, JSON) -> its instances, unchecked."""
    try:
        payload = json.loads(body)
    except RecursionError:
        # The parser recurses once per nesting level: a deep body exhausts the stack.
        raise InvalidInput("request body is nested too deeply to be a predict request") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer over Python's digit limit
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict) or "instances" not in payload:
        raise InvalidInput('request body must be a JSON object {"instances": [...]}')
    return payload["instances"]


def decode_instances(spec: ModelSpec, instances: Any) -> torch.Tensor:
    """``instances`` (a JSON list) -> float tensor (N, *input shape); InvalidInput says what is wrong."""
    if not isinstance(instances, list):
        raise InvalidInput(f"'instances' must be a list, got {_json_type(instances)}")
    if not instances:
        raise InvalidInput("'instances' is empty: send at least one instance")
    return torch.stack([decode_instance(spec, item, i) for i, item in enumerate(instances)])


def decode_instance(spec: ModelSpec, item: Any, index: int = 0) -> torch.Tensor:
    where = f"instance {index}"
    schema = spec.input
    if isinstance(schema, ImageInput):
        if isinstance(item, dict):
            if set(item) != {"b64"}:
                raise InvalidInput(
                    f'{where}: an object instance must be {{"b64": <base64 image>}}, got keys {sorted(item)}'
                )
            return decode_image(item["b64"], schema, where)
        if isinstance(item, str):
            return decode_image(item, schema, where)
        return _decode_array(item, schema.shape, schema.value_range, where, allow_squeezed=schema.channels == 1)
    if isinstance(schema, TensorInput):
        return _decode_array(item, schema.shape, schema.value_range, where, dtype=schema.dtype)
    raise InvalidInput(f"model {spec.name} has an input schema this server does not know")


def decode_image(data: Any, schema: ImageInput, where: str) -> torch.Tensor:
    """A base64 (or data-URL) PNG/JPEG -> (C, size, size) in the schema's value range."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(data, str):
        raise InvalidInput(f"{where}: b64 must be a string, got {_json_type(data)}")
    if data.startswith("data:"):
        _, _, data = data.partition(",")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{where}: b64 is not valid base64") from None
    try:
        img: Image.Image = Image.open(io.BytesIO(raw))
    except (UnidentifiedImageError, Image.DecompressionBombError):
        raise InvalidInput(f"{where}: b64 does not hold an image (PNG or JPEG expected)") from None
    except Exception as exc:  # a malformed file (e.g. a PNG text chunk too large once inflated)
        raise _unreadable(where, exc) from None
    if img.width * img.height > MAX_IMAGE_PIXELS:
        raise InvalidInput(f"{where}: image is {img.width}x{img.height}, more than {MAX_IMAGE_PIXELS} pixels")
    try:
        # Everything Pillow does with the client's bytes, in one place: what fails here is the
        # file's doing (truncated data, a broken chunk, a colour mode with no conversion), so it
        # is a 400 saying so, whatever exception the format's plugin raises.
        img.load()
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            # A canvas export is transparent where nothing is drawn: put it on white, as on screen.
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, rgba)
        img = img.convert("L" if schema.channels == 1 else "RGB")
    except Exception as exc:
        raise _unreadable(where, exc) from None
    img = _pad_square(img)
    img = img.resize((schema.size, schema.size), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = arr[None] if schema.channels == 1 else arr.transpose(2, 0, 1)
    lo, hi = schema.value_range
    return torch.from_numpy(np.ascontiguousarray(arr * (hi - lo) + lo))


def _unreadable(where: str, exc: Exception) -> InvalidInput:
    detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return InvalidInput(f"{where}: b64 holds an image that cannot be decoded ({detail}); send a PNG or JPEG")


def _pad_square(img: PILImage) -> PILImage:
    """Pad a non-square image to a square with its border colour, so resizing keeps its shape."""
    from PIL import Image

    if img.width == img.height:
        return img
    arr = np.asarray(img)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    fill = tuple(int(v) for v in np.median(border, axis=0).reshape(-1))
    side = max(img.width, img.height)
    square = Image.new(img.mode, (side, side), fill[0] if len(fill) == 1 else fill)
    square.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return square


def _decode_array(
    item: Any,
    shape: tuple[int, ...],
    value_range: tuple[float, float] | None,
    where: str,
    dtype: str = "float32",
    allow_squeezed: bool = False,
) -> torch.Tensor:
    if not isinstance(item, list):
        raise InvalidInput(f"{where}: expected a nested list of shape {list(shape)}, got {_json_type(item)}")
    try:
        arr = np.array(item, dtype=np.float64)
    except (ValueError, TypeError):
        raise InvalidInput(
            f"{where}: expected numbers in a nested list of shape {list(shape)} (ragged or not numeric)"
        ) from None
    except OverflowError:  # an integer beyond float64 (JSON integers have no size limit)
        raise InvalidInput(f"{where}: a number is too large (beyond a 64-bit float)") from None
    if allow_squeezed and arr.shape == tuple(shape[1:]):
        arr = arr[None]
    if arr.shape != tuple(shape):
        raise InvalidInput(f"{where}: wrong shape {list(arr.shape)}, expected {list(shape)}")
    if not np.isfinite(arr).all():
        raise InvalidInput(f"{where}: values must be finite numbers")
    if value_range is not None:
        lo, hi = value_range
        if arr.min() < lo or arr.max() > hi:
            raise InvalidInput(f"{where}: values must lie in [{lo}, {hi}], got [{arr.min():g}, {arr.max():g}]")
    return torch.from_numpy(arr.astype(dtype))


def postprocess(spec: ModelSpec, outputs: torch.Tensor) -> list[dict]:
    """Model outputs for a batch -> one JSON prediction each.

    Classification gives Marcelle's ClassifierResults: ``{label, confidences: {label: p}}``.
    """
    outputs = outputs.detach().float().cpu()
    if spec.task == "classification":
        results = []
        for row in outputs.tolist():
            confidences = {label: float(p) for label, p in zip(spec.labels, row, strict=True)}
            best = max(confidences.items(), key=lambda item: item[1])[0]
            results.append({"label": best, "confidences": confidences})
        return results
    return [{"output": row} for row in outputs.tolist()]


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number" if math.isfinite(value) else "a non-finite number"
    names: dict[type, str] = {str: "a string", list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)
