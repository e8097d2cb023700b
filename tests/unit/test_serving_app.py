"""The application builder's checks and the ingress' CORS matching (no Ray cluster needed)."""

from __future__ import annotations

import pytest
from ray import serve

from marcelle_torch.errors import ModelNotFound
from marcelle_torch.serving.api import origin_allowed
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


@pytest.mark.parametrize(
    "allowed, origin, ok",
    [
        (["http://a.test"], "http://a.test", True),
        (["http://a.test"], "http://b.test", False),
        (["http://a.test"], None, False),
        (["*"], "http://anything.test:9", True),
        (["http://127.0.0.1:*"], "http://127.0.0.1:5173", True),
        (["http://127.0.0.1:*"], "https://127.0.0.1:5173", False),
        (["http://127.0.0.1:*"], "http://127.0.0.10:5173", False),
        (["http://127.0.0.1:*"], "http://127.0.0.1", False),
    ],
)
def test_cors_origin_matching(allowed, origin, ok):
    assert origin_allowed(allowed, origin) is ok
