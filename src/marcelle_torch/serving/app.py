"""The Ray Serve application: one ingress deployment and one deployment per model.

HTTP contract (after the KServe / TF-Serving v1 protocol):

- ``POST /v1/models/{name}:predict`` ``{"instances": [...]}`` ->
  ``{"predictions": [{"label", "confidences"}]}``
- ``GET /v1/models/{name}``: metadata (labels, input schema, version, device, batching)
- ``GET /v1/models``: every model's metadata
- ``GET /healthz``: liveness; ``GET /readyz``: 200 only once every model's weights are loaded
- errors: ``{"error": {"code", "message"}}`` with the status of ``marcelle_torch.errors``

``Ingress`` parses HTTP (size limit, JSON, CORS allow-list) and routes by model name;
``ModelServer`` loads one ModelSpec, decodes instances and runs batched forward passes.

Instances are decoded in the model replica, not in the ingress: a base64 PNG is ~30 times
smaller than the float tensor it becomes, so the request crosses between actors small; the
decoding work scales with the model's replicas (autoscaled) instead of piling up in the
single ingress; and the ingress stays free of model code. Each request is decoded before it
joins a batch, so one bad request never fails the others.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import (InferenceTimeout, InvalidInput, MarcelleTorchError, ModelNotFound, ModelNotReady,
                      Overloaded, PayloadTooLarge)
from ..models.inputs import parse_predict_body
from .config import ConfigError, model_deployment_name
from .metrics import ServeMetrics

logger = logging.getLogger("ray.serve")

DEFAULT_BATCHING = {"max_batch_size": 16, "batch_wait_timeout_s": 0.005}
READY_PROBE_S = 2.0


class NotFound(MarcelleTorchError):
    status = 404
    code = "not_found"


class MethodNotAllowed(MarcelleTorchError):
    status = 405
    code = "method_not_allowed"


class OriginNotAllowed(MarcelleTorchError):
    status = 403
    code = "origin_not_allowed"


def pick_device() -> str:
    """cuda when Ray gave this replica a GPU (``num_gpus`` in ray_actor_options) and torch sees it."""
    import ray
    import torch

    return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"


@serve.deployment(
    max_ongoing_requests=64,  # must stay >= max_batch_size, or batches never fill
    user_config=DEFAULT_BATCHING,
    ray_actor_options={"num_cpus": 1, "num_gpus": 0},
)
class ModelServer:
    """Serves one model: loads its weights once, batches concurrent requests."""

    def __init__(self, model: str, train_if_missing: bool = True):
        from ..models import get_spec, load_model

        self.spec = get_spec(model)
        self.device = pick_device()
        started = time.monotonic()
        self.model = load_model(self.spec, device=self.device, train_if_missing=train_if_missing, logger=logger)
        logger.info("model %s loaded on %s in %.1fs", self.spec.name, self.device, time.monotonic() - started)
        self.metrics = ServeMetrics()
        self.batching = dict(DEFAULT_BATCHING)
        # What this replica has really batched: the observable that batching happens.
        self.stats = {"batches": 0, "instances": 0, "largest_batch_requests": 0, "largest_batch_instances": 0}

    def reconfigure(self, config: dict) -> None:
        """Batching comes from the deployment's user_config (changed without a redeploy)."""
        unknown = set(config or {}) - set(DEFAULT_BATCHING)
        if unknown:
            raise ValueError(f"user_config: unknown keys {sorted(unknown)}; known: {sorted(DEFAULT_BATCHING)}")
        batching = DEFAULT_BATCHING | dict(config or {})
        size, wait = int(batching["max_batch_size"]), float(batching["batch_wait_timeout_s"])
        if size < 1 or wait < 0:
            raise ValueError("user_config: max_batch_size must be >= 1 and batch_wait_timeout_s >= 0")
        self._infer.set_max_batch_size(size)
        self._infer.set_batch_wait_timeout_s(wait)
        self.batching = {"max_batch_size": size, "batch_wait_timeout_s": wait}

    def ready(self) -> bool:
        # Reachable only once __init__ has loaded the weights.
        return True

    def metadata(self) -> dict:
        return self.spec.metadata() | {"device": self.device, "batching": self.batching, "stats": dict(self.stats)}

    async def predict(self, instances) -> dict:
        """JSON instances -> ``{"predictions": [...]}``, or ``{"error": ..., "status": ...}``."""
        from ..models import decode_instances, postprocess

        name = self.spec.name
        try:
            batch = decode_instances(self.spec, instances)
        except InvalidInput as exc:
            self.metrics.outcome(name, "bad_input")
            return exc.to_json() | {"status": exc.status}
        except Exception as exc:  # a decoder that breaks on some input is the server's fault
            logger.exception("model %s: decoding failed", name)
            self.metrics.outcome(name, "error")
            return {"error": {"code": "internal", "message": f"model {name} could not decode the input: "
                              f"{type(exc).__name__}"}, "status": 500}
        try:
            outputs = await self._infer(batch)
        except Exception as exc:  # a model that fails is the server's fault: 500, said plainly
            logger.exception("model %s failed", name)
            self.metrics.outcome(name, "error")
            return {"error": {"code": "internal", "message": f"model {name} failed: {type(exc).__name__}"},
                    "status": 500}
        self.metrics.outcome(name, "ok")
        return {"predictions": postprocess(self.spec, outputs)}

    @serve.batch(**DEFAULT_BATCHING)
    async def _infer(self, requests: list) -> list:
        """Several requests' instances in one forward pass, split back per request."""
        import torch

        sizes = [len(r) for r in requests]
        joined = torch.cat(requests).to(self.device)
        started = time.perf_counter()
        # In a thread, so the replica's loop keeps accepting requests into the next batch.
        outputs = await asyncio.to_thread(self._forward, joined)
        self.metrics.latency.observe(time.perf_counter() - started,
                                     tags={"model": self.spec.name, "device": self.device})
        self.metrics.batch_size.observe(len(joined), tags={"model": self.spec.name})
        self.stats["batches"] += 1
        self.stats["instances"] += len(joined)
        self.stats["largest_batch_requests"] = max(self.stats["largest_batch_requests"], len(requests))
        self.stats["largest_batch_instances"] = max(self.stats["largest_batch_instances"], len(joined))
        return list(outputs.cpu().split(sizes))

    def _forward(self, batch):
        import torch

        with torch.inference_mode():
            return self.model(batch)


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
class Ingress:
    """HTTP in and out: size limit, JSON, CORS allow-list, routing by model name, error mapping."""

    def __init__(self, models: dict, cors_origins: list[str], max_body_bytes: int, request_timeout_s: float):
        self.models = models  # model name -> DeploymentHandle of its ModelServer
        self.cors_origins = set(cors_origins)
        self.max_body_bytes = max_body_bytes
        self.request_timeout_s = request_timeout_s
        self.metrics = ServeMetrics()

    async def __call__(self, request: Request) -> Response:
        origin = request.headers.get("origin")
        try:
            if request.method == "OPTIONS":
                return self._preflight(request, origin)
            status, body = await self._route(request)
        except MarcelleTorchError as exc:
            status, body = exc.status, exc.to_json()
        except Exception as exc:  # a fault of the server, never of the client: a JSON 500, logged
            logger.exception("ingress failed on %s %s", request.method, request.url.path)
            self.metrics.outcome(self._model_of(request), "error")
            status, body = 500, {"error": {"code": "internal", "message": f"internal error: {type(exc).__name__}"}}
        headers = self._cors_headers(origin)
        if status == 503:
            headers["Retry-After"] = "1"
        return JSONResponse(body, status_code=status, headers=headers)

    async def _route(self, request: Request) -> tuple[int, dict]:
        path = request.url.path
        root = request.scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        path = path.rstrip("/") or "/"
        method = request.method

        if path in ("/healthz", "/readyz", "/v1/models"):
            self._allow(method, "GET")
            if path == "/healthz":
                return 200, {"status": "ok"}
            if path == "/readyz":
                return await self._readiness()
            return 200, {"models": await asyncio.gather(*(self._metadata(n) for n in self.models))}
        if path.startswith("/v1/models/"):
            rest = path[len("/v1/models/"):]
            if rest.endswith(":predict"):
                self._allow(method, "POST")
                name = self._model(rest[: -len(":predict")])
                return await self._predict(name, await self._read_instances(request))
            self._allow(method, "GET")
            return 200, await self._metadata(self._model(rest))
        raise NotFound(f"no route {request.method} {path}; see GET /v1/models, "
                       "POST /v1/models/{name}:predict, /healthz, /readyz")

    def _model_of(self, request: Request) -> str:
        """The model a request is for, as the metrics label it ('' when none)."""
        rest = request.url.path.partition("/v1/models/")[2]
        name = rest.removesuffix(":predict").rstrip("/")
        return name if name in self.models else ""

    def _model(self, name: str) -> str:
        if name not in self.models:
            raise ModelNotFound(f"unknown model {name!r}; served models: {', '.join(sorted(self.models))}")
        return name

    @staticmethod
    def _allow(method: str, allowed: str) -> None:
        if method != allowed and not (allowed == "GET" and method == "HEAD"):
            raise MethodNotAllowed(f"method {method} not allowed here; use {allowed}")

    async def _read_instances(self, request: Request) -> list:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > self.max_body_bytes:
            raise PayloadTooLarge(f"request body is {int(length)} bytes; the limit is {self.max_body_bytes}")
        body = bytearray()
        async for chunk in request.stream():  # counted as it comes: a chunked body has no length
            body += chunk
            if len(body) > self.max_body_bytes:
                raise PayloadTooLarge(f"request body is over the limit of {self.max_body_bytes} bytes")
        return parse_predict_body(bytes(body))

    async def _call(self, name: str, method: str, *args):
        response = getattr(self.models[name], method).remote(*args)
        try:
            return await asyncio.wait_for(response, self.request_timeout_s)
        except asyncio.TimeoutError:
            response.cancel()
            raise InferenceTimeout(f"model {name} did not answer within {self.request_timeout_s:g}s") from None
        except Exception as exc:
            from ray.exceptions import RayActorError  # ActorDiedError, ActorUnavailableError
            from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

            if isinstance(exc, BackPressureError):
                raise Overloaded(f"model {name} is overloaded (its request queue is full); retry later") from None
            # A replica that is gone or restarting comes back: 503, retry. Anything else that
            # escapes the replica is a fault of the server (500), raised to __call__.
            if isinstance(exc, (RayActorError, DeploymentUnavailableError)):
                logger.warning("model %s unavailable: %r", name, exc)
                raise ModelNotReady(f"model {name} is not available: {type(exc).__name__}") from None
            raise

    async def _predict(self, name: str, instances: list) -> tuple[int, dict]:
        try:
            result = await self._call(name, "predict", instances)
        except InferenceTimeout:
            self.metrics.outcome(name, "timeout")
            raise
        status = result.pop("status", 200)
        return status, result

    async def _metadata(self, name: str) -> dict:
        return await self._call(name, "metadata")

    async def _readiness(self) -> tuple[int, dict]:
        async def probe(name):
            try:
                await asyncio.wait_for(self.models[name].ready.remote(), READY_PROBE_S)
                return "ready"
            except Exception:
                return "loading"

        states = dict(zip(self.models, await asyncio.gather(*(probe(n) for n in self.models))))
        waiting = sorted(n for n, s in states.items() if s != "ready")
        if waiting:
            return 503, ModelNotReady(f"models not ready yet: {', '.join(waiting)}").to_json() | {"models": states}
        return 200, {"status": "ready", "models": states}

    def _allowed_origin(self, origin: str | None) -> bool:
        if origin is None:
            return False
        if "*" in self.cors_origins or origin in self.cors_origins:
            return True
        # "http://127.0.0.1:*" allows that scheme and host on any port (dev servers bind port 0).
        base, sep, port = origin.rpartition(":")
        return bool(sep) and port.isdigit() and f"{base}:*" in self.cors_origins

    def _cors_headers(self, origin: str | None) -> dict:
        # Only an allowed origin gets the header; a browser then refuses the response to others.
        if not self._allowed_origin(origin):
            return {"Vary": "Origin"}
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}

    def _preflight(self, request: Request, origin: str | None) -> Response:
        if not self._allowed_origin(origin):
            err = OriginNotAllowed(f"origin {origin!r} is not allowed; set cors_origins in the serve config")
            return JSONResponse(err.to_json(), status_code=err.status, headers={"Vary": "Origin"})
        headers = self._cors_headers(origin) | {
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
            "Access-Control-Allow-Headers": request.headers.get("access-control-request-headers", "Content-Type"),
            "Access-Control-Max-Age": "600",
        }
        return Response(status_code=204, headers=headers)


def build_app(args: dict) -> serve.Application:
    """The application builder named in the serve config (``import_path``); ``args`` from there."""
    from ..models import get_spec

    args = dict(args or {})
    known = {"models", "cors_origins", "max_body_bytes", "request_timeout_s", "train_if_missing"}
    unknown = set(args) - known
    if unknown:
        raise ConfigError(f"application args: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    models = args.get("models") or ["digits"]
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise ConfigError("application args: models must be a list of model names")
    origins = args.get("cors_origins", [])
    if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
        raise ConfigError("application args: cors_origins must be a list of origins")
    handles = {}
    for ref in models:
        spec = get_spec(ref).require("serve")  # fail the deploy now, not in a replica
        if spec.name in handles:
            raise ConfigError(f"application args: model {spec.name} listed twice")
        handles[spec.name] = ModelServer.options(name=model_deployment_name(spec.name)).bind(
            ref, bool(args.get("train_if_missing", True)))
    return Ingress.bind(handles, origins, int(args.get("max_body_bytes", 4 * 1024 * 1024)),
                        float(args.get("request_timeout_s", 30.0)))
