"""The Serve config file (Ray's serveConfigV2 format), loaded and checked by Ray's own schema.

One file, ``serve_config.yaml`` beside this module, is read by ``marcelle-torch serve``
and embedded by the Helm chart into the RayService, so local and Kubernetes runs deploy
the same application with the same settings.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from ..errors import MarcelleTorchError

DEFAULT_CONFIG = Path(__file__).with_name("serve_config.yaml")
APP_IMPORT_PATH = "marcelle_torch.serving.app:build_app"


class ConfigError(MarcelleTorchError):
    status = 400
    code = "invalid_config"


def model_deployment_name(model: str) -> str:
    """The deployment serving ``model``, a name or a ``pkg.mod:factory`` reference (its settings
    sit under this name in the config): ``model-<spec name>``, so two references whose factories
    have the same name (``a.models:spec``, ``b.models:spec``) never share a deployment."""
    if ":" in model:
        from ..models import get_spec

        model = get_spec(model).name
    return "model-" + model


def load_serve_config(path: str | Path | None = None, *, host: str | None = None, port: int | None = None,
                      cors_origins: list[str] | None = None, num_gpus: float | None = None,
                      models: list[str] | None = None) -> dict:
    """Read a serveConfigV2 file (default: the packaged one), apply overrides, validate.

    Returns the config as a plain dict; raises ConfigError with one line saying what is wrong.
    """
    path = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        config = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read serve config {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1})" if where else ""
        raise ConfigError(f"serve config {path} is not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"serve config {path}: expected a mapping with 'applications', got {type(config).__name__}")
    config = apply_overrides(config, host=host, port=port, cors_origins=cors_origins, num_gpus=num_gpus,
                             models=models)
    return validate_serve_config(config, source=str(path))


def apply_overrides(config: dict, *, host=None, port=None, cors_origins=None, num_gpus=None, models=None) -> dict:
    config = copy.deepcopy(config)
    http = config.setdefault("http_options", {}) or {}
    config["http_options"] = http
    if host is not None:
        http["host"] = host
    if port is not None:
        http["port"] = int(port)
    for app in our_applications(config):
        args = app.setdefault("args", {}) or {}
        app["args"] = args
        if cors_origins is not None:
            args["cors_origins"] = list(cors_origins)
        if models is not None:
            args["models"] = list(models)
        if num_gpus is not None:
            names = {model_deployment_name(m) for m in args.get("models", [])}
            deployments = app.setdefault("deployments", [])
            for name in names - {d.get("name") for d in deployments}:
                deployments.append({"name": name})
            for d in deployments:
                if d.get("name") in names:
                    d.setdefault("ray_actor_options", {})["num_gpus"] = num_gpus
    return config


def our_applications(config: dict) -> list[dict]:
    """The applications in ``config`` that run this project's app builder."""
    apps = config.get("applications") or []
    return [a for a in apps if isinstance(a, dict) and a.get("import_path") == APP_IMPORT_PATH]


def validate_serve_config(config: dict, source: str = "serve config") -> dict:
    """Check ``config`` with Ray's ServeDeploySchema (what `serve deploy` and KubeRay accept)."""
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    try:
        ServeDeploySchema.model_validate(config)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        msg = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{source}: {loc}: {msg}{more}") from None
    except ValueError as exc:  # Ray's own validators raise plain ValueErrors too
        raise ConfigError(f"{source}: {str(exc).splitlines()[0]}") from None
    apps = our_applications(config)
    if not apps:
        raise ConfigError(f"{source}: no application has import_path {APP_IMPORT_PATH}")
    for app in apps:
        models = (app.get("args") or {}).get("models")
        if not isinstance(models, list) or not models or not all(isinstance(m, str) and m for m in models):
            raise ConfigError(f"{source}: application {app.get('name')!r}: args.models must be a non-empty "
                              "list of model names")
    return config
