"""Typed settings of the Serve applications: one place for their defaults.

Ray's typed application builders (ray 2.60.0 serve/_private/api.py
``call_user_app_builder_with_args_if_necessary``): a builder whose one parameter is annotated
with a pydantic model receives the config's ``args`` validated into it. The packaged
serve_config.yaml, ``marcelle-torch serve`` and the chart read their defaults from here
(a test checks that the YAML repeats them); only pydantic is imported (no Ray, no torch).

- ``RouterArgs``: args of the ``marcelle-torch`` application (route ``/``: health, readiness,
  the model list and metadata, the OpenAPI document);
- ``ModelAppArgs``: args of one ``model-<name>`` application (route
  ``/v1/models/<name>:predict``), whose one deployment parses, batches and answers predictions;
- ``ModelUserConfig``: that deployment's ``user_config`` (batching, queue), changed without a
  redeploy.
"""

from __future__ import annotations

import os
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_CORS_ORIGINS = ("http://localhost:5173", "http://127.0.0.1:5173")
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_REQUEST_TIMEOUT_S = 30.0
DEFAULT_MAX_BATCH_SIZE = 16
DEFAULT_MAX_QUEUED_REQUESTS = 128
# Torch threads per model replica: its num_cpus (see torch_threads).
DEFAULT_REPLICA_NUM_CPUS = 1
ROUTER_APP = "marcelle-torch"


def model_app_name(name: str) -> str:
    """The application (and its one deployment) serving the model called ``name``."""
    return "model-" + name


def predict_route(name: str) -> str:
    """The route prefix of ``name``'s application: exactly its predict path."""
    return f"/v1/models/{name}:predict"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


StrictT = TypeVar("StrictT", bound=_Strict)


class HttpArgs(_Strict):
    """What every application of this project needs to answer HTTP the same way."""

    cors_origins: list[str] = Field(
        default=list(DEFAULT_CORS_ORIGINS),
        description="origins allowed to call the API from a browser ('*' for any; 'http://host:*' for any port)",
    )
    allowed_hosts: list[str] = Field(
        default=["*"],
        min_length=1,
        description="names the Host header may carry (no port), '*' for any; `marcelle-torch serve` on "
        "loopback sets the loopback names, so no other site's page reaches it by DNS rebinding",
    )
    max_body_bytes: int = Field(
        default=DEFAULT_MAX_BODY_BYTES, ge=1, description="larger request bodies are refused with 413"
    )
    request_timeout_s: float = Field(
        default=DEFAULT_REQUEST_TIMEOUT_S, gt=0, description="a prediction taking longer is answered 504"
    )


class RouterArgs(HttpArgs):
    models: list[str] = Field(
        default=["digits"], min_length=1, description="the served models (built-in names or package.module:factory)"
    )

    @field_validator("models")
    @classmethod
    def _unique(cls, models: list[str]) -> list[str]:
        if len(set(models)) != len(models):
            raise ValueError("models: a model is listed twice")
        return models


class ModelAppArgs(HttpArgs):
    model: str = Field(description="a built-in name or a package.module:factory import path")
    train_if_missing: bool = Field(
        default=True, description="train a built-in model whose weights are not in the cache yet"
    )
    store: str | None = Field(
        default=None,
        description="the model store whose published version of this model the replicas follow "
        "(default: $MARCELLE_TORCH_STORE, else the weights cache's versions/)",
    )


class ModelUserConfig(_Strict):
    """Batching and queueing of one model replica (the deployment's ``user_config``)."""

    max_batch_size: int = Field(
        default=DEFAULT_MAX_BATCH_SIZE, ge=1, description="instances (not requests) per forward pass at most"
    )
    batch_wait_timeout_s: float = Field(
        default=0.0,
        ge=0,
        description="0 (adaptive): a batch is what is queued when the model becomes free, no fixed "
        "wait; > 0: also wait up to this long for a batch to fill",
    )
    max_queued_requests: int = Field(
        default=DEFAULT_MAX_QUEUED_REQUESTS,
        ge=1,
        description="requests waiting for the model in one replica beyond which a request is answered "
        "503 overloaded at once",
    )


def torch_threads(num_cpus: float | None) -> int:
    """Torch intra-op threads for a replica given ``num_cpus``: one per CPU it holds, at least one.

    Measured (bench/serve_latency.py, compute-bound section): replicas of one CPU and one thread,
    as many as the node has cores, beat fewer replicas with more threads each, because the
    request work around the forward pass (HTTP, JSON, decoding) is single-threaded Python.
    """
    cpus = int(num_cpus or 0) or 1
    return max(1, min(cpus, os.cpu_count() or 1))


def parse_args(model: type[StrictT], args: object) -> StrictT:
    """``args`` (a dict, or already the model) validated; ConfigError in one line if wrong."""
    from pydantic import ValidationError

    from .config import ConfigError

    if isinstance(args, model):
        return args
    if args is not None and not isinstance(args, dict):
        raise ConfigError(f"application args must be a mapping, got {type(args).__name__}")
    try:
        return model.model_validate(args or {})
    except ValidationError as exc:
        raise ConfigError(one_line(exc, "application args")) from None


def one_line(exc, where: str) -> str:
    """A pydantic ValidationError as one line naming the first wrong field."""
    errors = exc.errors()
    extra = sorted(str(e["loc"][-1]) for e in errors if e["type"] == "extra_forbidden")
    if extra:
        return f"{where}: unknown keys {extra}"
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] in ("list_type", "string_type") and first["loc"]:
        msg = f"{first['loc'][0]} must be a list" if first["type"] == "list_type" else msg
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {loc}: {msg}{more}"
