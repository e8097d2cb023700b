"""The Serve config file (Ray's serveConfigV2 format), loaded and checked by Ray's own schema.

One file, ``serve_config.yaml`` beside this module, is read by ``marcelle-torch serve``
and embedded by the Helm chart into the RayService, so local and Kubernetes runs deploy
the same applications with the same settings: the router (``build_app``, route ``/``) and one
application per model (``build_model_app``, route ``/v1/models/<name>:predict``, one deployment
``model-<name>``). ``--model`` overrides add model applications copied from the first one in
the file (its deployment settings and user_config) and drop the others.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from ..errors import MarcelleTorchError
from ..hosts import is_loopback, local_host_names

DEFAULT_CONFIG = Path(__file__).with_name("serve_config.yaml")
APP_IMPORT_PATH = "marcelle_torch.serving.app:build_app"
MODEL_APP_IMPORT_PATH = "marcelle_torch.serving.app:build_model_app"


class ConfigError(MarcelleTorchError):
    status = 400
    code = "invalid_config"


def model_deployment_name(model: str) -> str:
    """The deployment serving ``model``, a name, a folder or a ``pkg.mod:factory`` reference (its settings
    sit under this name in the config): ``model-<spec name>``, so two references whose factories
    have the same name (``a.models:spec``, ``b.models:spec``) never share a deployment."""
    from ..models.folder import is_folder_ref

    if ":" in model or is_folder_ref(model):  # an import path, a folder or a URL: its spec's name
        from ..models import get_spec

        model = get_spec(model).name
    return "model-" + model


def load_serve_config(
    path: str | Path | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    cors_origins: list[str] | None = None,
    num_gpus: float | None = None,
    models: list[str] | None = None,
) -> dict:
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
    config = apply_overrides(config, host=host, port=port, cors_origins=cors_origins, num_gpus=num_gpus, models=models)
    return validate_serve_config(config, source=str(path))


def apply_overrides(config: dict, *, host=None, port=None, cors_origins=None, num_gpus=None, models=None) -> dict:
    config = copy.deepcopy(config)
    http = config.setdefault("http_options", {}) or {}
    config["http_options"] = http
    if host is not None:
        http["host"] = host
    if port is not None:
        http["port"] = int(port)
    if models is not None:
        config = _set_models(config, list(models))
    for app in our_applications(config) + model_applications(config):
        args = app.setdefault("args", {}) or {}
        app["args"] = args
        if cors_origins is not None:
            args["cors_origins"] = list(cors_origins)
        # On loopback, only this machine's names: no other site's page gets in by DNS rebinding.
        if host is not None and is_loopback(host) and args.get("allowed_hosts", ["*"]) == ["*"]:
            args["allowed_hosts"] = local_host_names(host)
    if num_gpus is not None:
        for app in model_applications(config):
            for d in app.setdefault("deployments", []) or [{"name": app["name"]}]:
                d.setdefault("ray_actor_options", {})["num_gpus"] = num_gpus
    return config


def _model_app(ref: str, template: dict | None) -> dict:
    """The application serving ``ref``, with ``template``'s settings (another model's application)."""
    from .options import predict_route

    name = model_deployment_name(ref)
    app: dict[str, Any] = copy.deepcopy(template) if template else {"import_path": MODEL_APP_IMPORT_PATH, "args": {}}
    app["name"] = name
    app["route_prefix"] = predict_route(name.removeprefix("model-"))
    app["args"] = dict(app.get("args") or {}, model=ref)
    deployments = app.get("deployments") or [{}]
    app["deployments"] = [dict(deployments[0], name=name)]
    return app


def _set_models(config: dict, models: list[str]) -> dict:
    """``config`` serving exactly ``models``: the router's list, and one application each."""
    from ..models.folder import canonical_ref

    models = [canonical_ref(ref) for ref in models]
    existing = model_applications(config)
    by_ref = {(a.get("args") or {}).get("model"): a for a in existing}
    template = existing[0] if existing else None
    apps = [a for a in config.get("applications") or [] if a not in existing]
    for app in our_applications(config):
        app.setdefault("args", {})["models"] = models
    apps += [by_ref.get(ref) or _model_app(ref, template) for ref in models]
    config["applications"] = apps
    return config


def our_applications(config: dict) -> list[dict]:
    """The router applications in ``config`` (this project's ``build_app``)."""
    apps = config.get("applications") or []
    return [a for a in apps if isinstance(a, dict) and a.get("import_path") == APP_IMPORT_PATH]


def model_applications(config: dict) -> list[dict]:
    """The model applications in ``config`` (this project's ``build_model_app``)."""
    apps = config.get("applications") or []
    return [a for a in apps if isinstance(a, dict) and a.get("import_path") == MODEL_APP_IMPORT_PATH]


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
    if len(apps) > 1:
        raise ConfigError(f"{source}: {len(apps)} applications have import_path {APP_IMPORT_PATH}; one routes all")
    (app,) = apps
    models = (app.get("args") or {}).get("models")
    if not isinstance(models, list) or not models or not all(isinstance(m, str) and m for m in models):
        raise ConfigError(
            f"{source}: application {app.get('name')!r}: args.models must be a non-empty list of model names"
        )
    served = [(a.get("args") or {}).get("model") for a in model_applications(config)]
    if sorted(map(str, served)) != sorted(models):
        raise ConfigError(
            f"{source}: application {app.get('name')!r} lists models {models} but the model "
            f"applications ({MODEL_APP_IMPORT_PATH}) serve {served}: one application per model"
        )
    from .options import predict_route

    for a in model_applications(config):
        name = model_deployment_name(a["args"]["model"])
        expected = predict_route(name.removeprefix("model-"))
        if a.get("name") != name or a.get("route_prefix") != expected:
            raise ConfigError(
                f"{source}: the application serving {a['args']['model']!r} must be named {name!r} "
                f"with route_prefix {expected!r} (its predict path)"
            )
        names = [d.get("name") for d in a.get("deployments") or []]
        if any(n != name for n in names):
            raise ConfigError(f"{source}: application {name!r}: its one deployment is named {name!r}, not {names}")
    return config
