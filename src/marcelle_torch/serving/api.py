"""The HTTP API's shared parts: schemas (for the OpenAPI document), CORS, and the one error mapping.

Both kinds of application (the router at ``/`` and each model's own application at
``/v1/models/<name>:predict``) build their FastAPI app with ``make_api``, so they answer CORS,
errors and unknown routes the same way. Only the router publishes ``/openapi.json`` and
``/docs``; it declares every route, the model routes included, with these schemas.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware

from ..errors import (
    HostNotAllowed,
    InferenceTimeout,
    InvalidInput,
    MarcelleTorchError,
    MethodNotAllowed,
    ModelNotFound,
    ModelNotReady,
    NotFound,
    OriginNotAllowed,
    Overloaded,
    PayloadTooLarge,
)
from ..hosts import host_allowed

logger = logging.getLogger("ray.serve")

RETRY_AFTER_S = "1"
ROUTES_HINT = (
    "see GET /v1/models, POST /v1/models/{name}:predict, /v2/models/{name}[/infer], /healthz, /readyz, /openapi.json"
)


def is_v2_path(path: str) -> bool:
    """The Open Inference Protocol's routes, whose errors are ``{"error": "<message>"}``."""
    return path == "/v2" or path.startswith("/v2/")


def error_json(path: str, err: MarcelleTorchError) -> dict:
    """An error's body in the protocol of ``path``: v2 ``{"error": message}``, else the project's."""
    return {"error": err.message} if is_v2_path(path) else err.to_json()


# ----------------------------------------------------------------------------- schemas


class ErrorDetail(BaseModel):
    code: str = Field(
        description="machine-readable: invalid_input, model_not_found, not_found, "
        "method_not_allowed, origin_not_allowed, payload_too_large, overloaded, "
        "not_ready, timeout, internal"
    )
    message: str = Field(description="what was wrong, for a person")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class PredictRequest(BaseModel):
    instances: list[Any] = Field(
        description='one item per instance: {"b64": <base64 PNG/JPEG>} for image models, or a nested '
        "list of the model's input shape (see GET /v1/models/{name}: input)",
        min_length=1,
    )


class Prediction(BaseModel):
    label: str
    confidences: dict[str, float] = Field(description="probability per label")


class PredictResponse(BaseModel):
    predictions: list[Prediction] = Field(description="one per instance, in order")
    model_version: str = Field(
        description="the version that answered: the model's own, or the model store's published one"
    )


class ModelMetadata(BaseModel, extra="allow"):
    name: str
    task: str
    version: str
    description: str
    labels: list[str]
    input: dict[str, Any] = Field(description="input schema: kind, shape, dtype, range, encodings")
    params: dict[str, Any]
    device: str = Field(description="cpu or cuda, where the replica that answered runs the model")
    batching: dict[str, Any] = Field(description="the deployment's user_config")
    replicas: int | None = Field(default=None, description="running replicas of the model's deployment")
    ready: bool = Field(description="KServe v1 model status: true once a replica has the weights loaded")


class ModelList(BaseModel):
    models: list[ModelMetadata]


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    models: dict[str, str] = Field(description="ready | loading per model")


def errors_doc(*statuses: int) -> dict:
    """OpenAPI ``responses`` for these error statuses, each with the error schema."""
    described = {
        400: "invalid input (what was wrong is in the message)",
        403: "origin not allowed (preflight)",
        404: "unknown model or route",
        405: "method not allowed",
        413: "request body too large",
        500: "a fault of the server (never the client's)",
        503: "overloaded or not ready: retry after Retry-After seconds",
        504: "the model did not answer within request_timeout_s",
    }
    doc = {s: {"model": ErrorResponse, "description": described[s]} for s in statuses}
    if 503 in doc:
        doc[503]["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    return doc


# ----------------------------------------------------------------------------- errors: one mapping


def to_project_error(exc: BaseException) -> MarcelleTorchError:
    """Any exception -> the project error it is answered as."""
    if isinstance(exc, MarcelleTorchError):
        return exc
    if isinstance(exc, HTTPException):
        if exc.status_code == 404:
            return NotFound(f"no route; {ROUTES_HINT}")
        if exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            return MethodNotAllowed(f"method not allowed here; use {allowed or 'another method'}")
        err = MarcelleTorchError(str(exc.detail))
        err.status, err.code = exc.status_code, "http_" + str(exc.status_code)
        return err
    if isinstance(exc, RequestValidationError):
        first = (exc.errors() or [{}])[0]
        return InvalidInput(f"{'.'.join(str(p) for p in first.get('loc', ()))}: {first.get('msg', 'invalid')}")
    return MarcelleTorchError(f"internal error: {type(exc).__name__}")


def error_response(request: Request, exc: BaseException, on_error: Callable | None = None) -> Response:
    """The one handler: every exception becomes ``{"error": {"code", "message"}}`` with its status.

    ``on_error(request, error)`` is told about each (the model replicas count outcomes there).
    A 503 carries Retry-After; a 500 is logged with its traceback.
    """
    err = to_project_error(exc)
    if err.status >= 500 and not isinstance(err, (Overloaded, ModelNotReady, InferenceTimeout)):
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    if on_error is not None:
        on_error(request, err)
    headers = {"Retry-After": RETRY_AFTER_S} if err.status == 503 else None
    return JSONResponse(error_json(request.url.path, err), status_code=err.status, headers=headers)


class _ErrorMappingRoute(APIRoute):
    """Exceptions raised in an endpoint go to the app's error handler (not Starlette's 500 page)."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return request.app.state.error_response(request, exc)

        return route


# ----------------------------------------------------------------------------- CORS


def cors_options(origins: list[str]) -> dict:
    """CORSMiddleware arguments for a config's allow-list: exact origins, ``*``, and ``scheme://host:*``
    (that host on any port, e.g. dev servers that bind port 0)."""
    if "*" in origins:
        return {"allow_origins": ["*"], "allow_origin_regex": None}
    exact = [o for o in origins if not o.endswith(":*")]
    any_port = [re.escape(o[:-2]) + r":[0-9]+" for o in origins if o.endswith(":*")]
    return {"allow_origins": exact, "allow_origin_regex": "|".join(f"(?:{r})" for r in any_port) or None}


class JsonCORSMiddleware(CORSMiddleware):
    """Starlette's CORS middleware; its preflight answers are 204, and a refusal is our JSON error."""

    def preflight_response(self, request_headers) -> Response:
        response = super().preflight_response(request_headers)
        origin = request_headers.get("origin")
        if response.status_code != 200:
            if not self.is_allowed_origin(origin):
                err: MarcelleTorchError = OriginNotAllowed(
                    f"origin {origin!r} is not allowed; set cors_origins in the serve config"
                )
            else:
                err = InvalidInput(f"CORS preflight refused: {bytes(response.body).decode(errors='replace')}")
            return JSONResponse(err.to_json(), status_code=err.status, headers={"Vary": "Origin"})
        headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
        return Response(status_code=204, headers=headers)


# ----------------------------------------------------------------------------- the app


class _HostCheck:
    """Refuses (403, JSON) a request whose Host header is not one of ``allowed``."""

    def __init__(self, app, allowed: list[str]):
        self.app, self.allowed = app, allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"host"), None)
            if not host_allowed(host, self.allowed):
                err = HostNotAllowed(f"Host {host!r} is not one of this server's names; set allowed_hosts")
                body = error_json(scope.get("path", ""), err)
                await JSONResponse(body, status_code=err.status)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def make_api(
    title: str,
    cors_origins: list[str],
    *,
    publish_docs: bool,
    on_error: Callable | None = None,
    version: str = "1",
    allowed_hosts: list[str] | None = None,
) -> FastAPI:
    api = FastAPI(
        title=title,
        version=version,
        description="PyTorch models for Marcelle apps over HTTP: the KServe/TF-Serving v1 protocol "
        '(/v1, errors {"error": {"code", "message"}}) and the Open Inference Protocol, KServe v2 '
        '(/v2, errors {"error": "<message>"}).',
        openapi_url="/openapi.json" if publish_docs else None,
        docs_url="/docs" if publish_docs else None,
        redoc_url=None,
    )
    api.router.route_class = _ErrorMappingRoute
    api.state.error_response = lambda request, exc: error_response(request, exc, on_error)
    for exc_class in (HTTPException, RequestValidationError, MarcelleTorchError):
        api.add_exception_handler(exc_class, api.state.error_response)
    api.add_middleware(
        JsonCORSMiddleware,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["*"],
        max_age=600,
        **cors_options(cors_origins),
    )
    api.add_middleware(_NoRootPath)
    # Outermost: a foreign Host gets no answer of the app's, CORS preflights included.
    api.add_middleware(_HostCheck, allowed=list(allowed_hosts or ["*"]))
    return api


class _NoRootPath:
    """Route on the whole path: Ray sets ``root_path`` to the application's route prefix (ray 2.60.0
    serve/_private/replica.py, direct ingress) and Starlette strips it before routing, so a model
    application whose prefix is exactly ``/v1/models/<name>:predict`` would see the empty path.
    Without it, both kinds of application declare the same full routes."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope.get("root_path"):
            scope = dict(scope, root_path="")
        await self.app(scope, receive, send)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (counted as it comes: a chunked
    body has no Content-Length)."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"request body is {int(length)} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
    return bytes(body)


def unknown_model(name: str, served) -> ModelNotFound:
    return ModelNotFound(f"unknown model {name!r}; served models: {', '.join(sorted(served))}")
