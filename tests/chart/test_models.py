"""`models`: models given as chart values. Each is fetched and checked by an init container in
every Pod that runs it (Ray Pods, the run worker, the web app), served by its own Serve
application, taken by the run worker, and exported to ONNX for the web app; bad values are
refused by the schema or by name; without models the render is what it was."""

from __future__ import annotations

import copy
import json
import re

import pytest
import yaml
from k8s_tools import CHART, CI_VALUES, REPO, by_kind, ci_values, one, pod_specs, render, render_text

MODELS = yaml.safe_load(ci_values("models").read_text())["models"]
NAMES = [m["name"] for m in MODELS]
MODEL_APP = "marcelle_torch.serving.app:build_model_app"


def serve_config(objects) -> dict:
    return yaml.safe_load(one(objects, "RayService")["spec"]["serveConfigV2"])


def values_file(tmp_path, models, **extra) -> str:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({"models": models, **extra}))
    return str(path)


def model_refs() -> list[str]:
    """What each model's init container fetches: the URL with its sha256, or its path on the claim."""
    refs = []
    for i, m in enumerate(MODELS):
        refs.append(f"{m['uri']}#sha256={m['sha256']}" if "uri" in m else f"/model-sources/{i}/{m['pvc']['subPath']}")
    return refs


WITHOUT_MODELS = [v for v in CI_VALUES if not (yaml.safe_load(v.read_text()) or {}).get("models")]


def test_the_value_sets_without_models():
    assert {v.name for v in CI_VALUES} - {v.name for v in WITHOUT_MODELS} == {
        "models-values.yaml",
        "training-values.yaml",  # the trainer fine-tunes a model of `models` (test_training.py)
    }


@pytest.mark.parametrize("values", WITHOUT_MODELS, ids=lambda v: v.name)
def test_without_models_nothing_is_added(values):
    objects = render(values)
    for owner, spec in pod_specs(objects):
        assert not spec.get("initContainers"), owner
        assert not [v for v in spec.get("volumes", []) if v["name"].startswith(("models", "onnx-models", "model-"))]
    config = json.loads(one(objects, "ConfigMap", "-webapp-config")["data"]["config.json"])
    assert "onnxBundles" not in config
    worker = one(objects, "Deployment", "-worker")["spec"]["template"]["spec"]["containers"][0]
    assert "--models" not in worker["args"]
    apps = serve_config(objects)["applications"]
    assert [a["name"] for a in apps] == ["marcelle-torch", "model-digits"]


def test_every_pod_that_runs_models_fetches_each_first():
    from marcelle_torch.cli import build_parser

    objects = render(ci_values("models"))
    ray_image = one(objects, "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"][
        "containers"
    ][0]["image"]
    specs = dict(pod_specs(objects))
    assert len(specs) == 5  # head, CPU workers, backend, worker, web app
    for owner, spec in specs.items():
        if owner.endswith("-backend"):
            assert not spec.get("initContainers"), "the backend runs no model"
            continue
        fetches = [c for c in spec["initContainers"] if c["name"].startswith("fetch-")]
        assert [c["name"] for c in fetches] == [f"fetch-{i}-{name}" for i, name in enumerate(NAMES)], owner
        for container, ref, name in zip(fetches, model_refs(), NAMES, strict=True):
            assert container["command"] == ["marcelle-torch", "model", "fetch", ref, "--out", f"/models/{name}"] + [
                "--name",
                name,
            ]
            # The command the image's CLI runs: `model fetch` with these options.
            args = build_parser().parse_args(container["command"][1:])
            assert args.func.__name__ == "cmd_model_fetch" and str(args.out) == f"/models/{name}"
            assert container["image"] == (spec["containers"][0]["image"] if "RayService" in owner else ray_image)
            # What `kubectl describe pod` shows of a failed fetch: its last line of log, the one-line error.
            assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            assert not mounts["/models"].get("readOnly") and mounts["/tmp"]["name"] == "models-tmp"
            assert {e["name"]: e["value"] for e in container["env"]}["MARCELLE_TORCH_CACHE"].startswith("/tmp/")
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["models"] == {"name": "models", "emptyDir": {"sizeLimit": "4Gi"}}
        assert volumes["model-source-1"]["persistentVolumeClaim"] == {"claimName": "team-models", "readOnly": True}
        pvc_mount = next(m for m in fetches[1]["volumeMounts"] if m["name"] == "model-source-1")
        assert pvc_mount == {"name": "model-source-1", "mountPath": "/model-sources/1", "readOnly": True}
        if owner.endswith("-webapp"):
            continue
        main = spec["containers"][0]
        assert {"name": "models", "mountPath": "/models", "readOnly": True} in main["volumeMounts"], owner


def test_the_worker_runs_the_builtins_and_the_models():
    from marcelle_torch.models.registry import builtin_names
    from marcelle_torch.worker.cli import DEFAULT_MODELS

    worker = one(render(ci_values("models")), "Deployment", "-worker")["spec"]["template"]["spec"]["containers"][0]
    models = worker["args"][worker["args"].index("--models") + 1].split(",")
    # The chart's list of built-ins is the worker's default and the registry's.
    assert models[:2] == DEFAULT_MODELS.split(",") and sorted(models[:2]) == builtin_names()
    assert models[2:] == [f"/models/{name}" for name in NAMES]
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["models"]["items"]["properties"]["name"]["not"]["enum"] == builtin_names()


def test_the_web_app_serves_each_models_onnx_bundle_beside_the_builtin():
    objects = render(ci_values("models"))
    spec = one(objects, "Deployment", "-webapp")["spec"]["template"]["spec"]
    exports = [c for c in spec["initContainers"] if c["name"].startswith("onnx-")]
    assert [c["name"] for c in exports] == [f"onnx-{i}-{name}" for i, name in enumerate(NAMES)]
    names = [c["name"] for c in spec["initContainers"]]
    assert names.index("onnx-0-shapes") > names.index(f"fetch-{len(NAMES) - 1}-{NAMES[-1]}"), "export before fetch"
    for container, name in zip(exports, NAMES, strict=True):
        command = ["marcelle-torch", "export-onnx", f"/models/{name}", "--out", f"/onnx-models/{name}"]
        assert container["command"] == command
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/models"]["readOnly"] is True and mounts["/onnx-models"]["name"] == "onnx-models"
    # nginx serves /onnx/<name>/ from the folder the image serves the built-in bundle from.
    root = re.search(r"^\s*root\s+(\S+);", (REPO / "services/frontend/nginx.conf").read_text(), re.M).group(1)
    dockerfile = (REPO / "services/frontend/Dockerfile").read_text()
    assert re.search(rf"^COPY --from=build \S+/dist {re.escape(root)}$", dockerfile, re.M), (
        "nginx's root is not the build"
    )
    nginx = spec["containers"][0]
    served = {m["subPath"]: m for m in nginx["volumeMounts"] if m["name"] == "onnx-models"}
    assert list(served) == NAMES
    for name, mount in served.items():
        assert mount["mountPath"] == f"{root}/onnx/{name}" and mount["readOnly"] is True
    assert {"name": "onnx-models", "emptyDir": {"sizeLimit": "4Gi"}} in spec["volumes"]
    config = json.loads(one(objects, "ConfigMap", "-webapp-config")["data"]["config.json"])
    assert config["onnxBundle"] == "onnx/digits/"
    assert config["onnxBundles"] == ["onnx/digits/"] + [f"onnx/{name}/" for name in NAMES]


def test_each_model_is_a_serve_application_like_the_builtins():
    from ray.serve.schema import ServeDeploySchema

    from marcelle_torch.serving.options import model_app_name, predict_route

    config = serve_config(render(ci_values("models")))
    ServeDeploySchema.model_validate(config)
    apps = {a["name"]: a for a in config["applications"]}
    assert apps["marcelle-torch"]["args"]["models"] == ["digits"] + [f"/models/{name}" for name in NAMES]
    digits = apps["model-digits"]
    for name in NAMES:
        app = apps[model_app_name(name)]
        assert app["route_prefix"] == predict_route(name) and app["import_path"] == MODEL_APP
        assert app["args"] == {**digits["args"], "model": f"/models/{name}"}
        assert app["logging_config"] == digits["logging_config"]
        (deployment,) = app["deployments"]
        assert deployment["name"] == model_app_name(name)
    shapes, faces = (apps[model_app_name(n)]["deployments"][0] for n in NAMES)
    # shapes' own values; faces has the built-in model's settings.
    assert shapes["autoscaling_config"]["min_replicas"] == 0 and shapes["autoscaling_config"]["max_replicas"] == 3
    assert shapes["user_config"]["max_batch_size"] == 32
    assert {k: v for k, v in faces.items() if k != "name"} == {
        k: v for k, v in digits["deployments"][0].items() if k != "name"
    }


def test_the_projects_serve_config_check_accepts_the_render(tmp_path):
    """`marcelle-torch serve`'s own validation (application names and routes from each model's
    spec): the rendered config, with /models/<name> standing for real model folders here."""
    from model_folder import make_folder

    from marcelle_torch.serving.config import ConfigError, validate_serve_config

    def here(ref: str) -> str:
        return str(tmp_path / ref.removeprefix("/models/")) if ref.startswith("/models/") else ref

    config = serve_config(render(ci_values("models")))
    for app in config["applications"]:
        args = app["args"]
        if "models" in args:
            args["models"] = [here(m) for m in args["models"]]
        else:
            args["model"] = here(args["model"])
    for name in NAMES:
        make_folder(tmp_path, name)
    validate_serve_config(copy.deepcopy(config), source="rendered serveConfigV2")
    # A folder whose manifest gives another name is refused the same way (the init containers'
    # `--name` refuses it earlier, in one line naming it).
    (tmp_path / "faces").rename(tmp_path / "renamed")
    make_folder(tmp_path, "other", folder=tmp_path / "faces")
    with pytest.raises(ConfigError, match="must be named 'model-other'"):
        validate_serve_config(config, source="rendered serveConfigV2")


def test_gpus_per_model(tmp_path):
    models = [{"name": "big", "uri": "https://m.example/big.tgz", "sha256": "a" * 64, "numGpus": 0.5}]
    models.append({"name": "small", "uri": "https://m.example/small.zip", "sha256": "b" * 64})
    config = serve_config(render(values_file(tmp_path, models, gpu={"enabled": True, "numGpusPerReplica": 1})))
    gpus = {a["name"]: a["deployments"][0]["ray_actor_options"]["num_gpus"] for a in config["applications"][1:]}
    assert gpus == {"model-digits": 1, "model-big": 0.5, "model-small": 1}
    gpu_values = yaml.safe_load((CHART / "values.yaml").read_text())["gpu"]
    floors = {a["name"]: a["deployments"][0]["autoscaling_config"]["min_replicas"] for a in config["applications"][1:]}
    assert set(floors.values()) == {gpu_values["modelMinReplicas"]}


def test_the_gpu_workers_fetch_with_their_own_image():
    sets = ("models[0].name=shapes", "models[0].uri=https://m.example/s.tar.gz", f"models[0].sha256={'c' * 64}")
    objects = render(ci_values("gpu"), sets=sets)
    groups = one(objects, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    gpu = next(g for g in groups if g["groupName"] == "gpu")["template"]["spec"]
    image = gpu["containers"][0]["image"]
    assert gpu["initContainers"][0]["image"] == image and image.endswith("-gpu")


URI = {"uri": "https://m.example/a.tar.gz", "sha256": "a" * 64}
PVC = {"pvc": {"claimName": "c"}}
REFUSED = [
    # (what, models value, words of helm's error)
    ("an upper-case name", [{"name": "Shapes", **URI}], "at '/models/0/name'"),
    ("a name of 64", [{"name": "a" * 64, **URI}], "at '/models/0/name'"),
    ("a built-in's name", [{"name": "digits", **URI}], "at '/models/0/name': 'not' failed"),
    ("the generator's name", [{"name": "digits-generator", **PVC}], "at '/models/0/name': 'not' failed"),
    ("a short sha256", [{"name": "a", **URI, "sha256": "abc"}], "at '/models/0/sha256'"),
    ("an upper-case sha256", [{"name": "a", **URI, "sha256": "A" * 64}], "at '/models/0/sha256'"),
    ("a uri without sha256", [{"name": "a", "uri": URI["uri"]}], "missing property 'sha256'"),
    ("two sources", [{"name": "a", **URI, **PVC}], "at '/models/0': 'oneOf' failed"),
    ("a sha256 with a claim", [{"name": "a", "sha256": "a" * 64, **PVC}], "at '/models/0': 'oneOf' failed"),
    ("no source", [{"name": "a"}], "at '/models/0': 'oneOf' failed"),
    ("a uri that is no archive", [{"name": "a", **URI, "uri": "https://m.example/a.pt2"}], "at '/models/0/uri'"),
    ("a uri with a fragment", [{"name": "a", **URI, "uri": URI["uri"] + "#sha256=x"}], "at '/models/0/uri'"),
    ("a file uri", [{"name": "a", **URI, "uri": "file:///a.tar.gz"}], "at '/models/0/uri'"),
    ("a subPath out of the claim", [{"name": "a", "pvc": {"claimName": "c", "subPath": "x/../../etc"}}], "subPath"),
    ("an absolute subPath", [{"name": "a", "pvc": {"claimName": "c", "subPath": "/etc"}}], "subPath"),
    ("an unknown key", [{"name": "a", **PVC, "replicas": 2}], "additional properties 'replicas'"),
    ("a batch of 0", [{"name": "a", **PVC, "maxBatchSize": 0}], "at '/models/0/maxBatchSize'"),
    # What the schema cannot say: the templates refuse it by name.
    ("a name twice", [{"name": "a", **PVC}, {"name": "a", **PVC}], 'models[1].name "a": another model has this name'),
    ("GPUs without gpu.enabled", [{"name": "a", **PVC, "numGpus": 1}], "numGpus 1 needs gpu.enabled"),
    ("min above max", [{"name": "a", **PVC, "minReplicas": 3, "maxReplicas": 2}], "minReplicas (3) exceeds"),
]


@pytest.mark.parametrize("what, models, words", REFUSED, ids=[r[0] for r in REFUSED])
def test_bad_models_are_refused_by_name(tmp_path, what, models, words):
    result = render_text(values_file(tmp_path, models), check=False)
    assert result.returncode != 0, f"{what}: accepted"
    assert words in result.stderr, result.stderr


def test_a_max_below_the_charts_floor_is_refused(tmp_path):
    models = [{"name": "a", "pvc": {"claimName": "c"}, "maxReplicas": 1}]
    result = render_text(values_file(tmp_path, models, ray={"modelMinReplicas": 2}), check=False)
    assert result.returncode != 0 and "a: maxReplicas (1) is below the chart's minimum of replicas (2)" in result.stderr


def test_downloads_are_not_blocked_by_the_charts_network_policies():
    """The init containers download from the model's host: the chart's policies restrict ingress only."""
    policies = by_kind(render(ci_values("models")), "NetworkPolicy")
    assert policies and all(p["spec"]["policyTypes"] == ["Ingress"] and "egress" not in p["spec"] for p in policies)
