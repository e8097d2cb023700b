"""Drives a running server with clients nobody here wrote: KServe's Python SDK (v1 and v2) and
Triton's ``tritonclient.http``. Runs in the separate client venv that
tests/integration/test_serve_protocols.py builds (not in the project's venv: kserve pulls
dependencies the project pins otherwise), so it imports neither the project nor pytest.

Usage: ``python protocol_clients.py <request.json>``; the request holds ``url``, ``model``,
``png_b64`` (a list of base64 PNGs) and ``tensor`` (a nested list, N x the model's input shape).
Prints one JSON object: what each client call returned (numbers as lists).
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys

import numpy as np


def plain(value):
    if isinstance(value, np.ndarray):
        if value.dtype == np.object_:
            return [v.decode() if isinstance(v, bytes) else v for v in value.reshape(-1).tolist()]
        return value.tolist()
    return value


async def kserve_calls(url: str, model: str, pngs: list[str], tensor: np.ndarray) -> dict:
    # kserve 0.21.0: python/kserve/kserve/inference_client.py (InferenceRESTClient, RESTConfig),
    # python/kserve/kserve/protocol/infer_type.py (InferRequest, InferInput).
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    out: dict = {}
    v1 = InferenceRESTClient(RESTConfig(protocol="v1", timeout=120))
    out["v1_live"] = await v1.is_server_live(url)
    out["v1_model_ready"] = await v1.is_model_ready(url, model)
    response = await v1.infer(url, {"instances": [{"b64": p} for p in pngs]}, model_name=model)
    out["v1_infer"] = response["predictions"]
    await v1.close()

    v2 = InferenceRESTClient(RESTConfig(protocol="v2", timeout=120))
    out["v2_live"] = await v2.is_server_live(url)
    out["v2_ready"] = await v2.is_server_ready(url)
    out["v2_model_ready"] = await v2.is_model_ready(url, model)
    out["v2_unknown_model_ready"] = await v2.is_model_ready(url, "no-such-model")
    for binary in (True, False):
        fp32 = InferInput("input", list(tensor.shape), "FP32")
        fp32.set_data_from_numpy(tensor, binary_data=binary)
        raw = InferInput("input", [len(pngs)], "BYTES")
        if binary:
            raw.set_data_from_numpy(np.array([base64.b64decode(p) for p in pngs], dtype=np.object_), binary_data=True)
        else:  # JSON strings: an image travels as base64 text
            raw.set_data_from_numpy(np.array([p.encode() for p in pngs], dtype=np.object_), binary_data=False)
        for kind, tensor_input in (("fp32", fp32), ("bytes", raw)):
            result = await v2.infer(url, InferRequest(model, [tensor_input]), model_name=model)
            outputs = {o.name: plain(o.as_numpy()) for o in result.outputs}
            out[f"v2_infer_{kind}_{'binary' if binary else 'json'}"] = outputs
    await v2.close()
    return out


def triton_calls(url: str, model: str, pngs: list[str], tensor: np.ndarray) -> dict:
    # tritonclient 2.73.0: tritonclient/http/_client.py (InferenceServerClient),
    # _infer_input.py (InferInput), _requested_output.py (InferRequestedOutput).
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    host = url.split("://", 1)[1].rstrip("/")
    client = httpclient.InferenceServerClient(host, network_timeout=120.0, connection_timeout=120.0)
    out: dict = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "unknown_model_ready": client.is_model_ready("no-such-model"),
        "server_metadata": client.get_server_metadata(),
        "model_metadata": client.get_model_metadata(model),
    }
    for binary in (True, False):
        fp32 = httpclient.InferInput("input", list(tensor.shape), "FP32")
        fp32.set_data_from_numpy(tensor, binary_data=binary)
        raw = httpclient.InferInput("input", [len(pngs)], "BYTES")
        if binary:
            raw.set_data_from_numpy(np.array([base64.b64decode(p) for p in pngs], dtype=np.object_), binary_data=True)
        else:
            raw.set_data_from_numpy(np.array([p.encode() for p in pngs], dtype=np.object_), binary_data=False)
        wanted = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "label")]
        for kind, tensor_input in (("fp32", fp32), ("bytes", raw)):
            result = client.infer(model, [tensor_input], outputs=wanted)
            outputs = {n: plain(result.as_numpy(n)) for n in ("probabilities", "label")}
            out[f"infer_{kind}_{'binary' if binary else 'json'}"] = outputs
    version = out["model_metadata"]["versions"][0]  # the served version, by its versioned paths
    out["version_ready"] = client.is_model_ready(model, version)
    out["other_version_ready"] = client.is_model_ready(model, version + "-other")
    fp32 = httpclient.InferInput("input", list(tensor.shape), "FP32")
    fp32.set_data_from_numpy(tensor)
    out["infer_version"] = {"label": plain(client.infer(model, [fp32], model_version=version).as_numpy("label"))}
    try:  # a client's mistake: the server's message reaches the client's exception
        bad = httpclient.InferInput("input", [1, 2], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 2), dtype=np.float32), binary_data=False)
        client.infer(model, [bad])
        out["bad_input"] = None
    except InferenceServerException as exc:
        out["bad_input"] = {"status": exc.status(), "message": exc.message()}
    client.close()
    return out


def main() -> None:
    request = json.loads(open(sys.argv[1]).read())
    tensor = np.asarray(request["tensor"], dtype=np.float32)
    args = (request["url"], request["model"], request["png_b64"], tensor)
    print(json.dumps({"kserve": asyncio.run(kserve_calls(*args)), "triton": triton_calls(*args)}))


if __name__ == "__main__":
    main()
