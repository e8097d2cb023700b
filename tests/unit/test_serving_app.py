"""The application builder's checks and the ingress' CORS matching (no Ray cluster needed)."""

from __future__ import annotations

import httpx
import pytest
from ray import serve
from starlette.testclient import TestClient

from marcelle_torch.errors import ModelNotFound
from marcelle_torch.serving.api import make_api
from marcelle_torch.serving.app import build_app, build_model_app
from marcelle_torch.serving.config import ConfigError, load_serve_config, model_applications, our_applications


def test_build_apps_from_the_packaged_config_args():
    config = load_serve_config()
    (router,) = our_applications(config)
    assert isinstance(build_app(router["args"]), serve.Application)
    (model,) = model_applications(config)
    assert isinstance(build_model_app(model["args"]), serve.Application)


@pytest.mark.parametrize(
    "args, error, message",
    [
        ({"model": "digits", "colour": "red"}, ConfigError, "unknown keys ['colour']"),
        ({"model": "digits", "max_body_bytes": 0}, ConfigError, "max_body_bytes"),
        ({"model": "digits-generator"}, Exception, "generation model"),
    ],
)
def test_build_model_app_refuses_bad_args(args, error, message):
    with pytest.raises(error) as info:
        build_model_app(args)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "args, error, message",
    [
        ({"models": ["digits"], "colour": "red"}, ConfigError, "unknown keys ['colour']"),
        ({"models": "digits"}, ConfigError, "models must be a list"),
        ({"models": ["digits"], "cors_origins": "*"}, ConfigError, "cors_origins must be a list"),
        ({"models": ["digits", "digits"]}, ConfigError, "listed twice"),
        ({"models": ["no-such-model"]}, ModelNotFound, "unknown model 'no-such-model'"),
    ],
)
def test_build_app_refuses_bad_args(args, error, message):
    with pytest.raises(error) as info:
        build_app(args)
    assert message in info.value.message


def cors_answers(allowed: list[str], origin: str | None) -> tuple[httpx.Response, httpx.Response]:
    """A preflight and a simple GET from ``origin``, answered by the app ``make_api`` builds (what
    both kinds of Serve application run), over HTTP through its ASGI interface."""
    api = make_api("test", allowed, publish_docs=False)
    api.add_api_route("/ping", lambda: {"ok": True}, methods=["GET"])
    headers = {"Origin": origin} if origin is not None else {}
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}

    # Starlette's TestClient runs the app on an event loop of its own thread: this test may run in
    # a process whose main thread already runs one (Playwright's, in a whole `make test`).
    with TestClient(api) as client:
        return client.options("/ping", headers=headers | preflight), client.get("/ping", headers=headers)


@pytest.mark.parametrize(
    "allowed, origin, ok",
    [
        (["http://a.test"], "http://a.test", True),
        (["http://a.test"], "http://b.test", False),
        (["*"], "http://anything.test:9", True),
        (["http://127.0.0.1:*"], "http://127.0.0.1:5173", True),
        (["http://127.0.0.1:*"], "https://127.0.0.1:5173", False),
        (["http://127.0.0.1:*"], "http://127.0.0.10:5173", False),
        (["http://127.0.0.1:*"], "http://127.0.0.1", False),
    ],
)
def test_cors_origin_matching(allowed, origin, ok):
    preflight, simple = cors_answers(allowed, origin)
    assert simple.status_code == 200
    if ok:
        assert preflight.status_code == 204, preflight.text
        assert preflight.headers["access-control-allow-origin"] in (origin, "*")
        assert simple.headers["access-control-allow-origin"] in (origin, "*")
    else:
        assert preflight.status_code == 403, preflight.text
        assert preflight.json()["error"]["code"] == "origin_not_allowed"
        assert "access-control-allow-origin" not in preflight.headers
        assert "access-control-allow-origin" not in simple.headers


def test_no_origin_gets_no_cors_headers():
    _, simple = cors_answers(["http://a.test"], None)
    assert simple.status_code == 200 and simple.json() == {"ok": True}
    assert not [h for h in simple.headers if h.startswith("access-control-")]
