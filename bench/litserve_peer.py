"""LitServe serving the project's predict contract: the peer server of bench/serve_latency.py.

Its own module, imported only by the server's process: LitServe starts its inference workers
with ``spawn``, which unpickles the API by module and class name, and the bench's other users
(the docs render its report) do not need LitServe installed.
"""

from __future__ import annotations

import json

import litserve as ls
from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse, Response

from marcelle_torch.errors import MarcelleTorchError
from marcelle_torch.models import decode_instances, get_spec, load_model, postprocess
from marcelle_torch.models.inputs import InvalidInput


class PredictAPI(ls.LitAPI):
    """``{"instances": [...]}`` -> ``{"predictions": [...]}``; a batch is LitServe's dynamic batch of
    requests, each of any number of instances (one forward pass for all of them)."""

    def __init__(self, model_ref: str, max_batch_size: int, batch_timeout_s: float):
        super().__init__(
            max_batch_size=max_batch_size,
            batch_timeout=batch_timeout_s,
            api_path=f"/v1/models/{get_spec(model_ref).name}:predict",
        )
        self.model_ref = model_ref

    def setup(self, device):
        import torch

        torch.set_num_threads(1)
        self.spec = get_spec(self.model_ref)
        self.model = load_model(self.spec, train_if_missing=True)

    def decode_request(self, request):
        # In a LitServe batch, an error here fails the whole batch (its loop's design).
        try:
            if not isinstance(request, dict) or "instances" not in request:
                raise InvalidInput('request body must be a JSON object {"instances": [...]}')
            return decode_instances(self.spec, request["instances"])
        except MarcelleTorchError as exc:
            raise HTTPException(exc.status, detail=exc.to_json()) from None

    def batch(self, inputs):
        return inputs  # requests hold different numbers of instances: predict concatenates

    def predict(self, x):
        import torch

        parts = x if isinstance(x, list) else [x]
        sizes = [len(p) for p in parts]
        with torch.inference_mode():
            outputs = self.model(torch.cat(parts) if len(parts) > 1 else parts[0])
        predictions = [postprocess(self.spec, part) for part in outputs.split(sizes)]
        return predictions if isinstance(x, list) else predictions[0]

    def unbatch(self, output):
        return output

    def encode_response(self, output):
        return Response(json.dumps({"predictions": output}), media_type="application/json")


async def contract_error(request: Request, exc: HTTPException):
    """The contract's error body (``{"error": {...}}``) instead of FastAPI's ``{"detail": ...}``."""
    if isinstance(exc.detail, dict) and "error" in exc.detail:
        return JSONResponse(exc.detail, status_code=exc.status_code)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)


def run(port: int, model_ref: str, workers: int, batch_timeout_ms: float, max_batch_size: int = 16) -> None:
    api = PredictAPI(model_ref, max_batch_size, batch_timeout_ms / 1000)
    server = ls.LitServer(
        api,
        accelerator="cpu",
        devices=1,
        workers_per_device=workers,
        healthcheck_path="/readyz",
        # fast_queue (ZeroMQ) left off: on this bench's CPU-only model it answered fewer requests.
    )
    server.app.add_exception_handler(HTTPException, contract_error)
    server.run(host="127.0.0.1", port=port, log_level="warning", generate_client_file=False)
