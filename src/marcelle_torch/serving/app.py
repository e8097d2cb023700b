"""The Ray Serve applications: one per model, each its own HTTP ingress, and a small router.

HTTP contract (after the KServe / TF-Serving v1 protocol; the router's ``/openapi.json`` and
``/docs`` describe every route, body and error):

- ``POST /v1/models/{name}:predict`` ``{"instances": [...]}`` ->
  ``{"predictions": [{"label", "confidences"}]}``
- ``GET /v1/models/{name}``: metadata (labels, input schema, version, device, batching, replicas)
- ``GET /v1/models``: every model's metadata
- ``GET /healthz``: liveness; ``GET /readyz``: 200 only once every model's deployment is healthy
- ``GET /``: KServe v1 liveness ``{"status": "alive"}``; the metadata carries KServe's ``ready``
- errors: ``{"error": {"code", "message"}}`` with the status of ``marcelle_torch.errors``
- the Open Inference Protocol (KServe v2, REST) under ``/v2``: health, metadata, infer (v2.py),
  errors ``{"error": "<message>"}`` with the same statuses

One hop from HTTP to the batch: the application ``model-<name>`` has the route prefix
``/v1/models/<name>:predict`` (exactly its predict path), so Serve's proxy (or its HAProxy)
hands each prediction straight to a replica of ``ModelServer``, which reads the body, decodes the
instances, queues them for the replica's adaptive batcher (batching.py) and answers. No routing
deployment sits between the socket and the batch. Everything else (health, readiness, the model
list, metadata, unknown models and routes, the OpenAPI document) is the ``Router`` application at
``/``: off the predictions' path.

A v2 infer (``POST /v2/models/<name>/infer``) takes one hop more: the router reads the body and
hands it, through the deployment handle, to ``ModelServer.infer_v2`` on a replica of the model,
which parses, decodes and batches it with that replica's ``:predict`` requests. An application
has one route prefix, matched as the whole path or followed by ``/`` (ray 2.60.0
serve/_private/proxy_router.py ``match_route``; HAProxy's ``path_beg`` ACLs alike), so no prefix
but the router's ``/`` covers both protocols' paths; docs/ray-serve.md has what the hop costs.

Why applications and not Ray Serve's model multiplexing: multiplexing picks a model by the
``serve_multiplexed_model_id`` header and loads models into shared replicas on demand, for many
models of one architecture; here each model has its own weights, input schema, batching, replica
count and resources (GPU or not), and the contract names the model in the path. A deployment
per model is needed anyway; an application per model gives it a route of its own.
"""

# No `from __future__ import annotations` here: Ray reads the builders' parameter annotations
# as classes (ray 2.60.0 serve/_private/api.py call_user_app_builder_with_args_if_necessary).

import asyncio
import json
import logging
import threading
import time
from typing import Any, cast

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from starlette.routing import Route

from ..errors import InferenceTimeout, InvalidInput, MarcelleTorchError, ModelNotFound, ModelNotReady, Overloaded
from ..models.store import ModelStore
from .api import (
    RETRY_AFTER_S,
    Health,
    ModelList,
    ModelMetadata,
    PredictRequest,
    PredictResponse,
    Readiness,
    errors_doc,
    make_api,
    read_body,
    to_project_error,
    unknown_model,
)
from .batching import AdaptiveBatcher
from .config import ConfigError
from .metrics import ServeMetrics
from .options import ModelAppArgs, ModelUserConfig, RouterArgs, model_app_name, parse_args, torch_threads

logger = logging.getLogger("ray.serve")

STATUS_CACHE_S = 0.5
FOLLOW_PERIOD_S = 0.5  # how often a replica reads the store's published link (one readlink)
METADATA_TIMEOUT_S = 10.0
PREDICT_DOC: dict[str, Any] = {
    "summary": "Predict",
    "description": "Classify each instance. Answered by the model's own application (one hop to its batch).",
    "responses": {200: {"model": PredictResponse}} | errors_doc(400, 404, 405, 413, 500, 503, 504),
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
        }
    },
    "response_model": None,
}


def pick_device() -> str:
    """cuda when Ray gave this replica a GPU (``num_gpus`` in ray_actor_options) and torch sees it."""
    import ray
    import torch

    return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"


class DecodeFailed(MarcelleTorchError):
    """A decoder that breaks on some input is the server's fault (500), said plainly."""


class ModelFailed(MarcelleTorchError):
    pass


# ----------------------------------------------------------------------------- one model


@serve.deployment(
    # Ray's own queue limits answer in plain text; this replica's queue limit (user_config
    # max_queued_requests) answers JSON 503 itself, so Ray's stay wide open.
    max_ongoing_requests=512,
    user_config=ModelUserConfig().model_dump(),
    ray_actor_options={"num_cpus": 1, "num_gpus": 0},
    health_check_period_s=5,
)
@serve.ingress()
class ModelServer:
    """Serves one model over HTTP: reads and decodes requests, batches them adaptively, answers."""

    def __init__(self, args: ModelAppArgs):
        import ray
        import torch

        from ..models import get_spec, load_model

        self.args = parse_args(ModelAppArgs, args)
        self.spec = get_spec(self.args.model).require("serve")
        self.device = pick_device()
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        self.threads = torch_threads(cpus)
        torch.set_num_threads(self.threads)
        started = time.monotonic()
        self.model = load_model(
            self.spec, device=self.device, train_if_missing=self.args.train_if_missing, logger=logger
        )
        logger.info(
            "model %s loaded on %s in %.1fs (%d torch threads)",
            self.spec.name,
            self.device,
            time.monotonic() - started,
            self.threads,
        )
        # What answers: (spec, module) of the model's own weights or of the store's published
        # version, swapped as one reference, so a batch runs one version from end to end.
        self.served = (self.spec, self.model)
        self.store = ModelStore(self.args.store)
        self._published: str | None = None
        try:
            self._follow_published()  # a new replica starts on the published version
        except Exception as exc:
            logger.error("model %s: the published version cannot be loaded: %s", self.spec.name, exc)
        threading.Thread(target=self._follow_loop, daemon=True, name="follow-published").start()
        self.metrics = ServeMetrics()
        self.config = ModelUserConfig()
        # Requests answered ok are counted once per pass (a Ray metric update is a call into the
        # core worker, not free per request).
        self.batcher = AdaptiveBatcher(
            self._run_batch,
            self.config.max_batch_size,
            self.config.batch_wait_timeout_s,
            on_delivered=lambda n: self.metrics.outcome(self.spec.name, "ok", n),
        )
        self._tags = {"model": self.spec.name}
        self._latency_tags = {"model": self.spec.name, "device": self.device}

    def _follow_published(self) -> None:
        """Load the version the store publishes, if it changed, then swap it in: requests go on
        meanwhile on the version before, so a publish or a rollback fails none of them."""
        from ..models import load_model
        from ..models.folder import load_folder

        published = self.store.published(self.spec.name)
        if published == self._published:
            return
        started = time.monotonic()
        if published is None:
            served = (self.spec, self.model)
        else:
            spec = load_folder(self.store.version_dir(self.spec.name, published))
            served = (spec, load_model(spec, device=self.device, logger=logger))
        self.served = served
        self._published = published
        logger.info(
            "model %s: now version %s (%.1fs to load)", self.spec.name, served[0].version, time.monotonic() - started
        )

    def _follow_loop(self) -> None:
        failed = None
        while True:
            time.sleep(FOLLOW_PERIOD_S)
            try:
                self._follow_published()
                failed = None
            except Exception as exc:  # keep serving the version it has; say it once per cause
                if repr(exc) != failed:
                    logger.error("model %s: the published version cannot be loaded: %s", self.spec.name, exc)
                    failed = repr(exc)

    def __serve_build_asgi_app__(self):
        """The replica's HTTP app (ray 2.60.0 serve/api.py ``ingress``: a class given no app builds
        its own at replica start, so the CORS allow-list comes from this application's args)."""
        api = make_api(
            f"marcelle-torch model {self.spec.name}",
            self.args.cors_origins,
            publish_docs=False,
            on_error=self._count_error,
            allowed_hosts=self.args.allowed_hosts,
        )
        # The hot path as a plain Starlette route in the FastAPI app: the body is read raw (the
        # parser has its own limits) and nothing is left for FastAPI's dependency solving to do.
        # Its OpenAPI description is the router's (PREDICT_DOC), which publishes the document.
        on_error = api.state.error_response

        async def predict(request: Request) -> Response:
            try:
                return await self.predict(request.path_params["name"], request)
            except Exception as exc:
                return on_error(request, exc)

        api.router.routes.append(Route("/v1/models/{name}:predict", predict, methods=["POST"]))
        return api

    def reconfigure(self, config: dict) -> None:
        """Batching and queueing come from the deployment's user_config (changed without a redeploy)."""
        self.config = parse_args(ModelUserConfig, config)
        self.batcher.configure(self.config.max_batch_size, self.config.batch_wait_timeout_s)

    def check_health(self) -> None:
        """Ray's periodic health check (not a request: it never waits behind predictions)."""
        if not self.batcher.alive():
            raise RuntimeError(f"model {self.spec.name}: the batching loop has stopped")

    async def metadata(self) -> dict:
        return self.served[0].metadata() | {
            "device": self.device,
            "batching": self.config.model_dump(),
            "torch_threads": self.threads,
        }

    def _count_error(self, request: Request, err: MarcelleTorchError) -> None:
        outcome = {400: "bad_input", 500: "error", 504: "timeout"}.get(err.status)
        if outcome and request.url.path.endswith(":predict"):
            self.metrics.outcome(self.spec.name, outcome)

    async def predict(self, name: str, request: Request) -> Response:
        if name != self.spec.name:  # the route prefix is this model's predict path: only by a misroute
            raise unknown_model(name, [self.spec.name])
        from ..models.inputs import parse_predict_body

        instances = parse_predict_body(await read_body(request, self.args.max_body_bytes))
        batch = self._decode(instances)
        spec, predictions = await self._predict(batch)
        body = {"predictions": predictions, "model_version": spec.version}
        return Response(json.dumps(body), media_type="application/json")

    def _decode(self, instances: Any):
        from ..models import decode_instances

        try:
            return decode_instances(self.spec, instances)
        except InvalidInput:
            raise
        except Exception as exc:
            logger.exception("model %s: decoding failed", self.spec.name)
            raise DecodeFailed(f"model {self.spec.name} could not decode the input: {type(exc).__name__}") from None

    async def _predict(self, batch) -> tuple:
        """A decoded batch through this replica's batcher: (the spec of the version that answered,
        one prediction per instance)."""
        name = self.spec.name
        if self.batcher.queued >= self.config.max_queued_requests:
            raise Overloaded(
                f"model {name} is overloaded ({self.batcher.queued} requests queued in this replica); retry later"
            )
        try:
            predictions = await asyncio.wait_for(self.batcher.submit(batch, len(batch)), self.args.request_timeout_s)
        except TimeoutError:
            raise InferenceTimeout(f"model {name} did not answer within {self.args.request_timeout_s:g}s") from None
        except MarcelleTorchError:
            raise
        except Exception as exc:  # a model that fails is the server's fault: 500, said plainly
            logger.error("model %s failed", name, exc_info=exc)
            raise ModelFailed(f"model {name} failed: {type(exc).__name__}") from None
        return predictions

    async def infer_v2(self, body: bytes, header_length: str | None, version: str | None = None) -> tuple[int, bytes]:
        """``POST /v2/models/<name>/infer``, called by the router through this deployment's handle:
        parsed here, through the same batcher as ``:predict``, answered as (status, JSON body) in
        the protocol's shapes (an error as ``{"error": message}``, counted as :predict's are)."""
        import numpy as np
        import torch

        from ..models.spec import ImageInput
        from . import v2

        try:
            _check_version(self.served[0].metadata(), version)
            payload, binary = v2.parse_infer_request(body, header_length)
            outputs = v2.requested_outputs(payload)
            image = isinstance(self.spec.input, ImageInput)
            kind, data = v2.decode_infer_inputs(payload, binary, list(self.spec.input.shape), image)
            if kind == "images":
                batch = self._decode(data)
            else:
                value_range = self.spec.input.value_range
                if (
                    value_range is not None
                    and data.size
                    and (data.min() < value_range[0] or data.max() > value_range[1])
                ):
                    raise InvalidInput(
                        f"input {v2.INPUT_NAME!r}: values must lie in [{value_range[0]}, {value_range[1]}], "
                        f"got [{data.min():g}, {data.max():g}]"
                    )
                batch = torch.from_numpy(np.array(data, dtype=np.float32))
            spec, predictions = await self._predict(batch)
            response = v2.infer_response(spec.metadata(), predictions, payload, outputs)
            return 200, json.dumps(response).encode()
        except Exception as exc:
            err = to_project_error(exc)
            if err.status >= 500 and not isinstance(err, (Overloaded, ModelNotReady, InferenceTimeout)):
                logger.error("model %s: v2 infer failed", self.spec.name, exc_info=exc)
            outcome = {400: "bad_input", 500: "error", 504: "timeout"}.get(err.status)
            if outcome:
                self.metrics.outcome(self.spec.name, outcome)
            return err.status, v2.error_body(err.message)

    def _run_batch(self, batches: list) -> list:
        """Several requests' instances in one forward pass (in the batcher's thread), split back."""
        import torch

        from ..models import postprocess

        sizes = [len(b) for b in batches]
        joined = torch.cat(batches) if len(batches) > 1 else batches[0]
        spec, model = self.served
        started = time.perf_counter()
        with torch.inference_mode():
            outputs = model(joined.to(self.device)).cpu()
        self.metrics.latency.observe(time.perf_counter() - started, tags=self._latency_tags)
        self.metrics.batch_size.observe(len(joined), tags=self._tags)
        return [(spec, postprocess(spec, part)) for part in outputs.split(sizes)]


# ----------------------------------------------------------------------------- the router


@serve.deployment(num_replicas=1, max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
@serve.ingress()
class Router:
    """Health, readiness, the model list and metadata, the OpenAPI document; never a prediction's hop."""

    def __init__(self, args: RouterArgs, models: list[str]):
        # The model names come resolved from build_app: this replica never imports the models
        # (nor torch, which would cost it seconds at start and a few hundred MiB).
        self.args = parse_args(RouterArgs, args)
        self.models = models
        self.metrics = ServeMetrics()
        self._handles: dict = {}
        self._status: tuple[float, dict] = (0.0, {})
        # One serve.status() at a time: ray 2.60.0's is not thread-safe (serve/config.py
        # serialize_policy registers and unregisters a module with cloudpickle, so two at once
        # raise ValueError), and concurrent requests would otherwise each start one.
        self._status_lock = asyncio.Lock()

    def __serve_build_asgi_app__(self):
        api = make_api(
            "marcelle-torch",
            self.args.cors_origins,
            publish_docs=True,
            on_error=self._count_error,
            allowed_hosts=self.args.allowed_hosts,
        )
        api.add_api_route(
            "/",
            self.live,
            methods=["GET"],
            response_model=Health,
            summary="Liveness (KServe v1)",
            description='KServe v1 liveness, as its server answers it: {"status": "alive"}.',
            responses=errors_doc(405),
        )
        api.add_api_route(
            "/healthz",
            self.healthz,
            methods=["GET"],
            response_model=Health,
            summary="Liveness",
            responses=errors_doc(405),
        )
        api.add_api_route(
            "/readyz",
            self.readyz,
            methods=["GET"],
            response_model=Readiness,
            summary="Readiness",
            description="200 once every model's deployment is healthy (weights loaded).",
            responses=errors_doc(405, 503),
        )
        api.add_api_route(
            "/v1/models",
            self.list_models,
            methods=["GET"],
            response_model=ModelList,
            summary="List models",
            responses=errors_doc(405, 500, 503, 504),
        )
        api.add_api_route("/v1/models/{name}:predict", self.predict_fallback, methods=["POST"], **PREDICT_DOC)
        api.add_api_route(
            "/v1/models/{name}",
            self.model_metadata,
            methods=["GET"],
            response_model=ModelMetadata,
            summary="Model metadata and status",
            description='KServe v1 model status ({"name", "ready": true}) with the model\'s metadata; '
            'a model without a live replica is a 503 whose body also says "ready": false.',
            responses=errors_doc(404, 405, 500, 503, 504),
        )
        self._add_v2_routes(api)
        # The v2 infer as a plain Starlette route ahead of its documented FastAPI route (which only
        # describes it): the body is read raw, and no dependency solving runs per request.
        on_error = api.state.error_response

        async def v2_infer(request: Request) -> Response:
            try:
                return await self._v2_infer(request.path_params["name"], request, request.path_params.get("version"))
            except Exception as exc:
                return on_error(request, exc)

        for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
            api.router.routes.insert(0, Route(path, v2_infer, methods=["POST"]))
        return api

    def _add_v2_routes(self, api) -> None:
        """The Open Inference Protocol (REST): metadata and health here, infer forwarded to the
        model's deployment (the replicas and batcher of its :predict)."""
        from . import v2

        for path, endpoint, model, summary, errors in (
            ("/v2", self.v2_server_metadata, v2.ServerMetadata, "Server metadata (v2)", (405,)),
            ("/v2/health/live", self.v2_live, v2.LiveV2, "Liveness (v2)", (405,)),
            ("/v2/health/ready", self.v2_ready, v2.ReadyV2, "Readiness (v2)", (405, 503)),
            (
                "/v2/models/{name}",
                self.v2_model_metadata,
                v2.ModelMetadataV2,
                "Model metadata (v2)",
                (404, 405, 500, 503, 504),
            ),
            ("/v2/models/{name}/ready", self.v2_model_ready, v2.ModelReadyV2, "Model readiness (v2)", (404, 405, 503)),
            (
                "/v2/models/{name}/versions/{version}",
                self.v2_version_metadata,
                v2.ModelMetadataV2,
                "Model metadata of a version (v2): 404 unless it is the served one",
                (404, 405, 500, 503, 504),
            ),
            (
                "/v2/models/{name}/versions/{version}/ready",
                self.v2_version_ready,
                v2.ModelReadyV2,
                "Model readiness of a version (v2): 404 unless it is the served one",
                (404, 405, 500, 503, 504),
            ),
        ):
            api.add_api_route(
                path,
                endpoint,
                methods=["GET"],
                response_model=model,
                summary=summary,
                responses=v2.errors_doc_v2(*errors),
            )
        for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
            self._add_v2_infer_doc(api, path)

    def _add_v2_infer_doc(self, api, path: str) -> None:
        from . import v2

        api.add_api_route(
            path,
            self.v2_infer if "{version}" not in path else self.v2_version_infer,
            methods=["POST"],
            summary="Infer (v2)"
            if "{version}" not in path
            else "Infer with a version (v2): 404 unless it is the served one",
            description="Open Inference Protocol infer: the input tensor as FP32 data in the shape of "
            "GET /v2/models/{name}, or one PNG/JPEG per instance as BYTES (base64 in JSON); the binary "
            "tensor extension (Inference-Header-Content-Length) is accepted. Outputs: probabilities "
            "(FP32, [N, n_labels]) and label (BYTES, [N]).",
            response_model=None,
            responses={200: {"model": v2.InferResponse}} | v2.errors_doc_v2(400, 404, 405, 413, 500, 503, 504),
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": v2.InferRequest.model_json_schema()},
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"},
                            "description": "binary tensor extension: the JSON request (its length in "
                            "Inference-Header-Content-Length), then the inputs' binary data",
                        },
                    },
                }
            },
        )

    def _count_error(self, request: Request, err: MarcelleTorchError) -> None:
        if err.status == 500:
            self.metrics.outcome("", "error")

    # -- the controller's view, shared by readiness and the metadata calls

    async def _deployments(self) -> dict:
        """model name -> (status, running replicas) of its deployment, from Serve's controller."""
        at, states = self._status
        if time.monotonic() - at < STATUS_CACHE_S:
            return states
        async with self._status_lock:
            at, states = self._status
            if time.monotonic() - at < STATUS_CACHE_S:  # another request refreshed it meanwhile
                return states
            return await self._refresh_deployments()

    async def _refresh_deployments(self) -> dict:
        status = await asyncio.to_thread(serve.status)
        states = {}
        for name in self.models:
            app = status.applications.get(model_app_name(name))
            dep = app.deployments.get(model_app_name(name)) if app else None
            if dep is None:
                states[name] = ("NOT_DEPLOYED", 0)
            else:
                running = sum(n for s, n in dep.replica_states.items() if str(getattr(s, "value", s)) == "RUNNING")
                states[name] = (str(dep.status.value), running)
        self._status = (time.monotonic(), states)
        return states

    async def _check_reachable(self, name: str) -> int:
        """Running replicas of ``name``; ModelNotReady (503) when none can take a request."""
        status, running = (await self._deployments())[name]
        if status not in ("HEALTHY", "UPSCALING", "DOWNSCALING") or running == 0:
            raise ModelNotReady(f"model {name} has no live replica now ({status.lower()}); retry later")
        return running

    def _handle(self, name: str):
        if name not in self._handles:
            self._handles[name] = serve.get_deployment_handle(model_app_name(name), app_name=model_app_name(name))
        return self._handles[name]

    async def _metadata(self, name: str) -> dict:
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        replicas = await self._check_reachable(name)
        response = self._handle(name).metadata.remote()
        try:
            meta = await asyncio.wait_for(response, METADATA_TIMEOUT_S)
        except TimeoutError:
            response.cancel()
            self._status = (0.0, {})
            await self._check_reachable(name)  # a replica lost meanwhile is a 503, not a 504
            raise InferenceTimeout(f"model {name} did not answer within {METADATA_TIMEOUT_S:g}s") from None
        except BackPressureError:
            raise Overloaded(f"model {name} is overloaded; retry later") from None
        except (RayActorError, DeploymentUnavailableError) as exc:
            logger.warning("model %s unavailable: %r", name, exc)
            raise ModelNotReady(f"model {name} is not available: {type(exc).__name__}") from None
        return meta | {"replicas": replicas, "ready": True}

    def _known(self, name: str) -> str:
        if name not in self.models:
            raise unknown_model(name, self.models)
        return name

    # -- routes

    async def live(self) -> dict:
        return {"status": "alive"}

    async def healthz(self) -> dict:
        return {"status": "ok"}

    async def readyz(self) -> Response:
        states = await self._deployments()
        models = {n: "ready" if s == "HEALTHY" and r > 0 else "loading" for n, (s, r) in states.items()}
        waiting = sorted(n for n, s in models.items() if s != "ready")
        if waiting:
            err = ModelNotReady(f"models not ready yet: {', '.join(waiting)}")
            return JSONResponse(err.to_json() | {"models": models}, status_code=503, headers={"Retry-After": "1"})
        return JSONResponse({"status": "ready", "models": models})

    async def list_models(self) -> dict:
        return {"models": list(await asyncio.gather(*(self._metadata(n) for n in self.models)))}

    async def model_metadata(self, name: str) -> Response:
        try:
            meta = await self._metadata(self._known(name))
        except ModelNotReady as err:
            body = err.to_json() | {"name": name, "ready": False}
            return JSONResponse(body, status_code=err.status, headers={"Retry-After": RETRY_AFTER_S})
        return JSONResponse(meta)

    # -- Open Inference Protocol (v2)

    async def v2_server_metadata(self) -> dict:
        from .. import __version__

        return {"name": "marcelle-torch", "version": __version__, "extensions": ["binary_tensor_data"]}

    async def v2_live(self) -> dict:
        return {"live": True}

    async def v2_ready(self) -> dict:
        states = await self._deployments()
        waiting = sorted(n for n, (s, r) in states.items() if not (s == "HEALTHY" and r > 0))
        if waiting:
            raise ModelNotReady(f"models not ready yet: {', '.join(waiting)}")
        return {"ready": True}

    async def v2_model_metadata(self, name: str) -> dict:
        return await self._v2_metadata(name, None)

    async def v2_version_metadata(self, name: str, version: str) -> dict:
        return await self._v2_metadata(name, version)

    async def v2_model_ready(self, name: str) -> dict:
        return await self._v2_ready(name, None)

    async def v2_version_ready(self, name: str, version: str) -> dict:
        return await self._v2_ready(name, version)

    async def v2_infer(self, name: str, request: Request) -> Response:
        return await self._v2_infer(name, request, None)

    async def v2_version_infer(self, name: str, version: str, request: Request) -> Response:
        return await self._v2_infer(name, request, version)

    async def _v2_metadata(self, name: str, version: str | None) -> dict:
        from .v2 import model_metadata

        meta = await self._metadata(self._known(name))
        _check_version(meta, version)
        return model_metadata(meta)

    async def _v2_ready(self, name: str, version: str | None) -> dict:
        if version is None:
            await self._check_reachable(self._known(name))
        else:
            _check_version(await self._metadata(self._known(name)), version)
        return {"name": name, "ready": True}

    async def _v2_infer(self, name: str, request: Request, version: str | None) -> Response:
        """Forwarded to the model's deployment: one more hop than :predict (see the module's doc)."""
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        from .v2 import HEADER_LENGTH

        self._known(name)
        body = await read_body(request, self.args.max_body_bytes)
        await self._check_reachable(name)
        response = self._handle(name).infer_v2.remote(body, request.headers.get(HEADER_LENGTH), version)
        try:
            status, content = await asyncio.wait_for(response, self.args.request_timeout_s + METADATA_TIMEOUT_S)
        except TimeoutError:
            response.cancel()
            raise InferenceTimeout(f"model {name} did not answer within {self.args.request_timeout_s:g}s") from None
        except BackPressureError:
            raise Overloaded(f"model {name} is overloaded; retry later") from None
        except (RayActorError, DeploymentUnavailableError) as exc:
            logger.warning("model %s unavailable: %r", name, exc)
            raise ModelNotReady(f"model {name} is not available: {type(exc).__name__}") from None
        headers = {"Retry-After": RETRY_AFTER_S} if status == 503 else None
        return Response(content, status_code=status, media_type="application/json", headers=headers)

    async def predict_fallback(self, name: str) -> Response:
        """Reached only when no model application has this route: an unknown model, or one whose
        application is not (or no longer) deployed."""
        self._known(name)
        raise ModelNotReady(f"model {name} is not deployed now; retry later")


def _check_version(meta: dict, version: str | None) -> None:
    """A v2 path's ``/versions/<version>``: only the served version is there (404 for another)."""
    if version is not None and version != meta["version"]:
        raise ModelNotFound(f"model {meta['name']} has no version {version!r}; it serves version {meta['version']!r}")


# ----------------------------------------------------------------------------- builders (serve config import paths)


def build_app(args: RouterArgs) -> serve.Application:
    """The ``marcelle-torch`` application (route ``/``): ``import_path: marcelle_torch.serving.app:build_app``."""
    from ..models import get_spec

    args = parse_args(RouterArgs, args)
    names = [get_spec(ref).require("serve").name for ref in args.models]  # fail the deploy now, not in a replica
    if len(set(names)) != len(names):
        raise ConfigError("application args: a model is listed twice (two references with one spec name)")
    # serve.deployment turned the class into a Deployment (mypy sees the class).
    return cast(Any, Router).options(name="Router").bind(args.model_dump(), names)


def build_model_app(args: ModelAppArgs) -> serve.Application:
    """One model's application (route ``/v1/models/<name>:predict``):
    ``import_path: marcelle_torch.serving.app:build_model_app``."""
    from ..models import get_spec

    args = parse_args(ModelAppArgs, args)
    spec = get_spec(args.model).require("serve")
    return cast(Any, ModelServer).options(name=model_app_name(spec.name)).bind(args.model_dump())
