"""The Open Inference Protocol's bodies (serving/v2.py), without Ray: what a request may send and
what it is answered. The real server with KServe's and Triton's clients:
tests/integration/test_serve_protocols.py."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest

from marcelle_torch.errors import InvalidInput
from marcelle_torch.serving import v2

SHAPE = [1, 4, 4]
META = {
    "name": "m",
    "version": "7",
    "labels": ["a", "b"],
    "input": {"shape": SHAPE},
}


def decode(body: dict, binary: bytes = b"", header: str | None = None, image: bool = True):
    raw = json.dumps(body).encode()
    if header == "auto":
        header = str(len(raw))
    payload, rest = v2.parse_infer_request(raw + binary, header)
    return v2.decode_infer_inputs(payload, rest, SHAPE, image)


def test_metadata_declares_the_input_and_both_outputs():
    assert v2.model_metadata(META) == {
        "name": "m",
        "versions": ["7"],
        "platform": "pytorch",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 4, 4]}],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ],
    }


@pytest.mark.parametrize("nested", [False, True])
def test_fp32_data_flat_or_nested(nested):
    values = np.arange(32, dtype=np.float32) / 32
    data = values.reshape(2, 1, 4, 4).tolist() if nested else values.tolist()
    kind, arr = decode({"inputs": [{"name": "input", "shape": [2, 1, 4, 4], "datatype": "FP32", "data": data}]})
    assert kind == "tensor" and arr.dtype == np.float32 and arr.shape == (2, 1, 4, 4)
    assert np.array_equal(arr.reshape(-1), values)


def test_fp32_and_bytes_in_the_binary_extension():
    values = np.linspace(0, 1, 16, dtype=np.float32)
    body = {
        "inputs": [{"name": "input", "shape": [1, 1, 4, 4], "datatype": "FP32", "parameters": {"binary_data_size": 64}}]
    }
    kind, arr = decode(body, values.astype("<f4").tobytes(), header="auto")
    assert kind == "tensor" and np.array_equal(arr.reshape(-1), values)

    images = [b"\x89PNG one", b"two"]
    raw = b"".join(struct.pack("<I", len(x)) + x for x in images)
    body = {
        "inputs": [{"name": "input", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}]
    }
    kind, items = decode(body, raw, header="auto")
    assert kind == "images" and [base64.b64decode(s) for s in items] == images


@pytest.mark.parametrize(
    "body, binary, header, image, message",
    [
        ({"inputs": []}, b"", None, True, "exactly one input"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}, b"", None, True, "unknown input 'x'"),
        (
            {"inputs": [{"name": "input", "shape": [1, 4, 4], "datatype": "FP32", "data": [0] * 16}]},
            b"",
            None,
            True,
            "does not match [-1, 1, 4, 4]",
        ),
        (
            {"inputs": [{"name": "input", "shape": [0, 1, 4, 4], "datatype": "FP32", "data": []}]},
            b"",
            None,
            True,
            "at least one instance",
        ),
        (
            {"inputs": [{"name": "input", "shape": [1, 1, 4, 4], "datatype": "FP32", "data": [0] * 15}]},
            b"",
            None,
            True,
            "holds 15 values; the shape needs 16",
        ),
        (
            {"inputs": [{"name": "input", "shape": [1, 1, 4, 4], "datatype": "FP32", "data": [float("nan")] * 16}]},
            b"",
            None,
            True,
            "finite",
        ),
        (
            {"inputs": [{"name": "input", "shape": [1, 1, 4, 4], "datatype": "FP32", "data": [10**400] * 16}]},
            b"",
            None,
            True,
            "too large",
        ),
        (
            {"inputs": [{"name": "input", "shape": [True, 1, 4, 4], "datatype": "FP32", "data": [0] * 16}]},
            b"",
            None,
            True,
            "list of integers",
        ),
        (
            {"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ["aGk="]}]},
            b"",
            None,
            False,
            "only for image models",
        ),
        (
            {"inputs": [{"name": "input", "shape": [2], "datatype": "BYTES", "data": ["aGk="]}]},
            b"",
            None,
            True,
            "but 1 elements",
        ),
        (
            {"inputs": [{"name": "input", "shape": [1], "datatype": "INT8", "data": [1]}]},
            b"",
            None,
            True,
            "datatype 'INT8'",
        ),
        (
            {
                "inputs": [
                    {"name": "input", "shape": [1, 1, 4, 4], "datatype": "FP32", "parameters": {"binary_data_size": 64}}
                ]
            },
            b"\0" * 60,
            "auto",
            True,
            "does not match the 60",
        ),
        (
            {"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}]},
            struct.pack("<I", 99) + b"ab",
            "auto",
            True,
            "runs past the data",
        ),
        (
            {"inputs": [{"name": "input", "shape": [1], "datatype": "FP32"}]},
            b"",
            "123456",
            True,
            "not a length within the body",
        ),
    ],
)
def test_a_clients_mistake_says_what_was_wrong(body, binary, header, image, message):
    with pytest.raises(InvalidInput) as err:
        decode(body, binary, header, image)
    assert message in err.value.message


def test_not_json_and_not_an_infer_request():
    with pytest.raises(InvalidInput, match="not valid JSON"):
        v2.parse_infer_request(b"{", None)
    with pytest.raises(InvalidInput, match='"inputs"'):
        v2.parse_infer_request(b'{"instances": []}', None)
    with pytest.raises(InvalidInput, match="nested too deeply"):
        v2.parse_infer_request(b"[" * 100_000, None)


def test_response_carries_the_v1_numbers_and_the_requested_outputs():
    predictions = [
        {"label": "b", "confidences": {"a": 0.25, "b": 0.75}},
        {"label": "a", "confidences": {"a": 0.5, "b": 0.5}},
    ]
    payload = {"id": "r1", "outputs": [{"name": "probabilities"}]}
    answer = v2.infer_response(META, predictions, payload, v2.requested_outputs(payload))
    assert answer == {
        "model_name": "m",
        "model_version": "7",
        "id": "r1",
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [2, 2], "data": [0.25, 0.75, 0.5, 0.5]}],
    }
    assert v2.requested_outputs({}) == ["probabilities", "label"]
    with pytest.raises(InvalidInput, match="unknown output 'x'"):
        v2.requested_outputs({"outputs": [{"name": "x"}]})
