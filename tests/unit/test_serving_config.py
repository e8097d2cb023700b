"""The packaged serve config and its loader (validated by Ray's own ServeDeploySchema)."""

from __future__ import annotations

import importlib.resources

import pytest
import yaml

from marcelle_torch.serving.config import (
    APP_IMPORT_PATH,
    DEFAULT_CONFIG,
    MODEL_APP_IMPORT_PATH,
    ConfigError,
    load_serve_config,
    model_applications,
    model_deployment_name,
)


def test_packaged_config_is_package_data_and_valid():
    packaged = importlib.resources.files("marcelle_torch.serving") / "serve_config.yaml"
    assert packaged.is_file()
    config = load_serve_config()
    app, model_app = config["applications"]
    assert app["import_path"] == APP_IMPORT_PATH
    assert app["args"]["models"] == ["digits"]
    assert {d["name"] for d in app["deployments"]} == {"Router"}
    # One application per model, named after it, routed exactly at its predict path.
    assert model_app["import_path"] == MODEL_APP_IMPORT_PATH
    assert model_app["name"] == model_deployment_name("digits")
    assert model_app["route_prefix"] == "/v1/models/digits:predict"
    (model,) = model_app["deployments"]
    assert model["name"] == "model-digits"
    # Batches can only fill when a replica takes at least max_batch_size requests at once.
    assert model["max_ongoing_requests"] >= model["user_config"]["max_batch_size"]
    assert model["ray_actor_options"]["num_gpus"] == 0


def test_packaged_config_repeats_the_typed_defaults():
    from marcelle_torch.serving.options import ModelAppArgs, ModelUserConfig, RouterArgs

    config = load_serve_config()
    router, model_app = config["applications"]
    assert router["args"]["cors_origins"] == RouterArgs().cors_origins
    defaults = ModelAppArgs(model="digits").model_dump()
    assert {k: model_app["args"][k] for k in defaults} == defaults
    assert model_app["deployments"][0]["user_config"] == ModelUserConfig().model_dump()


def test_model_override_adds_and_drops_model_applications(tmp_path, monkeypatch):
    (tmp_path / "extra_model.py").write_text(
        "from torch import nn\nfrom marcelle_torch.models import ModelSpec, TensorInput\n"
        "def spec():\n    return ModelSpec(name='extra', task='classification', build=nn.Identity,\n"
        "                     input=TensorInput(shape=(2,)), labels=('x', 'y'))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = load_serve_config(models=["extra_model:spec"], cors_origins=["http://a.test"])
    router, extra = config["applications"]
    assert router["args"]["models"] == ["extra_model:spec"]
    assert (extra["name"], extra["route_prefix"]) == ("model-extra", "/v1/models/extra:predict")
    assert extra["args"]["model"] == "extra_model:spec" and extra["args"]["cors_origins"] == ["http://a.test"]
    # Settings copied from the packaged model application.
    digits = model_applications(load_serve_config())[0]
    assert extra["deployments"][0]["user_config"] == digits["deployments"][0]["user_config"]


def test_overrides_are_applied_and_validated():
    config = load_serve_config(host="127.0.0.1", port=18000, cors_origins=["http://a.test"], num_gpus=1)
    assert config["http_options"]["host"] == "127.0.0.1"
    assert config["http_options"]["port"] == 18000
    for app in config["applications"]:
        assert app["args"]["cors_origins"] == ["http://a.test"]
    model = model_applications(config)[0]["deployments"][0]
    assert model["ray_actor_options"]["num_gpus"] == 1
    # The file itself is untouched.
    assert yaml.safe_load(DEFAULT_CONFIG.read_text())["http_options"]["port"] == 8000


def test_a_loopback_server_answers_only_its_own_host_names():
    for host in ("127.0.0.1", "localhost"):
        for app in load_serve_config(host=host)["applications"]:
            assert app["args"]["allowed_hosts"] == ["localhost", "127.0.0.1", "[::1]"], app["name"]
    # Listening for other machines (a cluster: nginx passes the browser's Host), any name.
    for app in load_serve_config(host="0.0.0.0")["applications"]:
        assert app["args"]["allowed_hosts"] == ["*"], app["name"]


def test_host_names_are_matched_without_the_port():
    from marcelle_torch.hosts import host_allowed, local_host_names

    names = local_host_names("127.0.0.1")
    assert host_allowed("localhost:8000", names) and host_allowed("[::1]:8000", names)
    assert host_allowed("LOCALHOST", names)
    assert not host_allowed("evil.example:8000", names) and not host_allowed("127.0.0.1.evil.example", names)
    assert host_allowed(None, names), "a request without Host is no browser's"
    assert host_allowed("anything", ["*"])
    assert local_host_names("demo.lan") == [*names, "demo.lan"]
    assert local_host_names("::1") == names and local_host_names("0.0.0.0") == names


def test_gpu_override_adds_settings_for_a_model_without_any(tmp_path, monkeypatch):
    (tmp_path / "gpu_user_model.py").write_text(
        "from torch import nn\nfrom marcelle_torch.models import ModelSpec, TensorInput\n"
        "def spec():\n    return ModelSpec(name='on-gpu', task='classification', build=nn.Identity,\n"
        "                     input=TensorInput(shape=(2,)), labels=('x', 'y'))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = load_serve_config(models=["digits", "gpu_user_model:spec"], num_gpus=0.5)
    deployments = {d["name"]: d for a in model_applications(config) for d in a["deployments"]}
    assert deployments["model-on-gpu"]["ray_actor_options"]["num_gpus"] == 0.5


def _write(tmp_path, text):
    path = tmp_path / "serve.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, expected",
    [
        ("applications: [", "not valid YAML (line"),
        ("- a\n- b\n", "expected a mapping"),
        ("applications:\n  - name: x\n    import_path: other.mod:app\n", "no application has import_path"),
        (
            f"applications:\n  - name: x\n    import_path: {APP_IMPORT_PATH}\n    args: {{models: []}}\n",
            "args.models must be a non-empty list",
        ),
        (
            f"applications:\n  - name: x\n    import_path: {APP_IMPORT_PATH}\n    args: {{models: [digits]}}\n"
            "    deployments:\n      - name: Ingress\n        num_replicas: many\n",
            "applications.0.deployments.0: `num_replicas` must be an int",
        ),
        ("http_options: {port: eighty}\napplications: []\n", "http_options.port"),
    ],
)
def test_bad_configs_give_one_clear_line(tmp_path, text, expected):
    with pytest.raises(ConfigError) as info:
        load_serve_config(_write(tmp_path, text))
    message = info.value.message
    assert expected in message
    assert "\n" not in message
    assert info.value.status == 400


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read serve config .*nope.yaml"):
        load_serve_config(tmp_path / "nope.yaml")


def test_deployment_names_come_from_the_spec_name(tmp_path, monkeypatch):
    # Two packages whose factories are both called `spec` must not share a deployment.
    for pkg, name in (("pkg_a", "alpha"), ("pkg_b", "beta")):
        (tmp_path / f"{pkg}.py").write_text(
            "from torch import nn\nfrom marcelle_torch.models import ModelSpec, TensorInput\n"
            f"def spec():\n    return ModelSpec(name='{name}', task='classification', build=nn.Identity,\n"
            "                     input=TensorInput(shape=(2,)), labels=('x', 'y'))\n"
        )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert model_deployment_name("digits") == "model-digits"
    assert model_deployment_name("pkg_a:spec") == "model-alpha"
    assert model_deployment_name("pkg_b:spec") == "model-beta"
