"""The Open Inference Protocol (KServe v2, REST), beside the v1 API: its bodies in and out.

Routes (the router's ``/v2...``; ``infer`` is parsed, batched and answered by a replica of the
model's own deployment, the one that answers ``:predict``):

- ``GET /v2``: server metadata; ``GET /v2/health/live``, ``GET /v2/health/ready``;
- ``GET /v2/models/{name}``: model metadata, ``GET /v2/models/{name}/ready``;
- ``POST /v2/models/{name}/infer``.

A model declares one input, ``input`` (``FP32``, ``[-1, *input shape]``, the name the ONNX export
gives it too), and two outputs: ``probabilities`` (``FP32``, ``[-1, n_labels]``) and ``label``
(``BYTES``, ``[-1]``). An infer request sends ``input`` either as ``FP32`` data of that shape
(flat in row-major order, or nested), or, for an image model, as ``BYTES`` of shape ``[N]``: one
PNG/JPEG per instance (base64 in JSON; raw bytes in the binary tensor extension), decoded as the
v1 path decodes ``{"b64": ...}``. The binary tensor extension (``Inference-Header-Content-Length``)
is read for inputs, since tritonclient and KServe's SDK send binary by default; outputs are always
JSON, which both clients read whatever they asked for.

Errors are the protocol's ``{"error": "<message>"}`` with the status of the project's error
class (``marcelle_torch.errors``), the same mapping as v1.

Only numpy and the standard library here: the router imports this module and never imports torch.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from ..errors import InvalidInput

INPUT_NAME = "input"  # as the ONNX export names it (marcelle_torch.onnx.export.INPUT_NAME)
OUTPUTS = ("probabilities", "label")
HEADER_LENGTH = "inference-header-content-length"
MAX_ELEMENTS = 1 << 24  # an FP32 input past 64 MiB is refused before anything is allocated


# ----------------------------------------------------------------------------- schemas (OpenAPI)


class TensorMetadata(BaseModel):
    name: str
    datatype: str = Field(description="FP32, BYTES, ...")
    shape: list[int] = Field(description="-1 for a dimension of any size (the batch)")


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelMetadataV2(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class LiveV2(BaseModel):
    live: bool


class ReadyV2(BaseModel):
    ready: bool


class ModelReadyV2(BaseModel):
    name: str
    ready: bool


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = Field(
        default=None, description="row-major, flat or nested; absent when the binary extension carries it"
    )


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = Field(default=None, description="which outputs to return (default: all)")


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[ResponseOutput]


class ErrorV2(BaseModel):
    error: str = Field(description="what was wrong, for a person")


def errors_doc_v2(*statuses: int) -> dict:
    """OpenAPI ``responses`` for these error statuses in the protocol's error shape."""
    from .api import errors_doc

    doc = errors_doc(*statuses)
    for entry in doc.values():
        entry["model"] = ErrorV2
    return doc


# ----------------------------------------------------------------------------- metadata


def model_metadata(meta: dict) -> dict:
    """The v2 model metadata of a model, from its v1 metadata (``ModelSpec.metadata``)."""
    return {
        "name": meta["name"],
        "versions": [meta["version"]],
        "platform": "pytorch",
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *meta["input"]["shape"]]}],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(meta["labels"])]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ],
    }


# ----------------------------------------------------------------------------- infer: request


def parse_infer_request(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """An infer body -> (its JSON object, the binary part after it; empty without the extension)."""
    binary = b""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length {header_length!r} is not a length within the body ({len(body)} bytes)"
            )
        body, binary = body[: int(header_length)], body[int(header_length) :]
    try:
        payload = json.loads(body)
    except RecursionError:
        raise InvalidInput("request body is nested too deeply to be an infer request") from None
    except ValueError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
        raise InvalidInput('request body must be a JSON object {"inputs": [{"name", "shape", "datatype", "data"}]}')
    return payload, binary


def _shape(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise InvalidInput(f"{where}: 'shape' must be a list of integers")
    if any(d < 0 for d in value):
        raise InvalidInput(f"{where}: 'shape' {value} has a negative dimension")
    return value


def decode_infer_inputs(payload: dict, binary: bytes, input_shape: list[int], image: bool) -> tuple[str, Any]:
    """The one input of an infer request -> ("tensor", float32 array (N, *input_shape)) or
    ("images", N base64 strings for the v1 image decoder); InvalidInput says what was wrong."""
    inputs = payload["inputs"]
    if len(inputs) != 1:
        raise InvalidInput(f"expected exactly one input ({INPUT_NAME!r}), got {len(inputs)}")
    item = inputs[0]
    if not isinstance(item, dict):
        raise InvalidInput("inputs[0] must be an object {name, shape, datatype, data}")
    name = item.get("name")
    if name != INPUT_NAME:
        raise InvalidInput(f"unknown input {name!r}; this model's input is {INPUT_NAME!r}")
    where = f"input {INPUT_NAME!r}"
    shape = _shape(item.get("shape"), where)
    datatype = item.get("datatype")
    params = item.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput(f"{where}: 'parameters' must be an object")
    raw = _binary_part(params, binary, where)
    if datatype == "FP32":
        expected = [-1, *input_shape]
        if len(shape) != len(expected) or shape[1:] != input_shape or shape[0] < 1:
            raise InvalidInput(f"{where}: shape {shape} does not match {expected} (at least one instance)")
        count = math.prod(shape)
        if count > MAX_ELEMENTS:
            raise InvalidInput(f"{where}: {count} elements is more than {MAX_ELEMENTS}")
        if raw is not None:
            if len(raw) != 4 * count:
                raise InvalidInput(f"{where}: {len(raw)} bytes of binary data for shape {shape} (FP32: {4 * count})")
            arr = np.frombuffer(raw, dtype="<f4").reshape(shape)
        else:
            arr = _json_numbers(item.get("data"), count, where).reshape(shape)
        if not np.isfinite(arr).all():
            raise InvalidInput(f"{where}: values must be finite numbers")
        return "tensor", arr.astype(np.float32, copy=False)
    if datatype == "BYTES":
        if not image:
            raise InvalidInput(f"{where}: BYTES (an encoded image) is only for image models; send FP32")
        if len(shape) not in (1, 2) or shape[0] < 1 or (len(shape) == 2 and shape[1] != 1):
            raise InvalidInput(f"{where}: BYTES shape must be [N] (one PNG/JPEG per instance), got {shape}")
        images = _binary_bytes(raw, where) if raw is not None else _json_strings(item.get("data"), where)
        if len(images) != shape[0]:
            raise InvalidInput(f"{where}: shape {shape} but {len(images)} elements")
        return "images", images
    raise InvalidInput(f"{where}: datatype {datatype!r} is not accepted; send FP32 (or BYTES for an image)")


def _binary_part(params: dict, binary: bytes, where: str) -> bytes | None:
    size = params.get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or size != len(binary):
        raise InvalidInput(f"{where}: binary_data_size {size!r} does not match the {len(binary)} bytes sent")
    return binary


def _json_numbers(data: Any, count: int, where: str) -> np.ndarray:
    if not isinstance(data, list):
        raise InvalidInput(f"{where}: 'data' must be a list of numbers (flat or nested)")
    try:
        arr = np.array(data, dtype=np.float32)
    except (ValueError, TypeError):
        raise InvalidInput(f"{where}: 'data' must hold numbers only, flat or evenly nested") from None
    except OverflowError:
        raise InvalidInput(f"{where}: a number is too large for FP32") from None
    if arr.size != count:
        raise InvalidInput(f"{where}: 'data' holds {arr.size} values; the shape needs {count}")
    return arr


def _json_strings(data: Any, where: str) -> list[str]:
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], list):
        data = data[0]  # [[...]]: tolerated, some clients nest BYTES data per batch row
    if not isinstance(data, list) or not all(isinstance(s, str) for s in data):
        raise InvalidInput(f"{where}: BYTES 'data' must be a list of base64 strings (PNG/JPEG)")
    return data


def _binary_bytes(raw: bytes, where: str) -> list[str]:
    """The binary extension's BYTES: each element a 4-byte little-endian length, then its bytes."""
    out, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise InvalidInput(f"{where}: binary BYTES data ends inside an element's length")
        (n,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + n > len(raw):
            raise InvalidInput(f"{where}: binary BYTES element of {n} bytes runs past the data")
        out.append(base64.b64encode(raw[at : at + n]).decode())
        at += n
    return out


def requested_outputs(payload: dict) -> list[str]:
    """The outputs the request asks for (all when it names none); InvalidInput for an unknown one."""
    outputs = payload.get("outputs")
    if outputs is None:
        return list(OUTPUTS)
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise InvalidInput("'outputs' must be a list of objects {name}")
    names = [o.get("name") for o in outputs]
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown:
        raise InvalidInput(f"unknown output {unknown[0]!r}; this model's outputs are {', '.join(OUTPUTS)}")
    return [n for n in OUTPUTS if n in names] or list(OUTPUTS)


# ----------------------------------------------------------------------------- infer: response


def infer_response(meta: dict, predictions: list[dict], payload: dict, outputs: list[str]) -> dict:
    """v1 predictions (``{label, confidences}`` each) -> the v2 response, the same numbers."""
    labels = meta["labels"]
    tensors = []
    for name in outputs:
        if name == "probabilities":
            flat = [p["confidences"][label] for p in predictions for label in labels]
            tensors.append({"name": name, "datatype": "FP32", "shape": [len(predictions), len(labels)], "data": flat})
        else:
            tensors.append(
                {
                    "name": name,
                    "datatype": "BYTES",
                    "shape": [len(predictions)],
                    "data": [p["label"] for p in predictions],
                }
            )
    response: dict = {"model_name": meta["name"], "model_version": meta["version"], "outputs": tensors}
    if isinstance(payload.get("id"), str):
        response["id"] = payload["id"]
    return response


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()
