"""The RayService runs the project's own serve config: the same file, checked by Ray's schema,
with only the declared overrides applied (GPUs per model replica, the model replicas' floor, and
their ceiling sized by the nodes)."""

from __future__ import annotations

import copy

import yaml
from k8s_tools import CHART, REPO, ci_values, one, render

PACKAGE_FILE = REPO / "src" / "marcelle_torch" / "serving" / "serve_config.yaml"
CHART_FILE = CHART / "files" / "serve_config.yaml"


def serve_config_of(objects) -> str:
    return one(objects, "RayService")["spec"]["serveConfigV2"]


def test_chart_copy_is_the_package_file():
    assert PACKAGE_FILE.is_file(), f"{PACKAGE_FILE} is missing"
    assert CHART_FILE.read_bytes() == PACKAGE_FILE.read_bytes(), (
        "charts/marcelle-torch/files/serve_config.yaml differs from the package's serve config: run `make chart-sync`"
    )


def model_max_replicas(values: dict) -> int:
    """The chart's rule (values.yaml ray.modelMaxReplicas): one 1-CPU replica per CPU the nodes give."""
    if values.get("gpu", {}).get("enabled"):
        gpu = values["gpu"]
        return max(1, int(gpu["maxReplicas"] * gpu["gpusPerPod"] // gpu["numGpusPerReplica"]))
    workers = values["ray"]["cpuWorkers"]
    cpu = str(workers["resources"]["limits"]["cpu"])
    cores = int(cpu[:-1]) // 1000 if cpu.endswith("m") else int(float(cpu))
    return max(1, cores) * workers["maxReplicas"]


def chart_values(*overrides: dict) -> dict:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for extra in overrides:
        for key, sub in extra.items():
            values[key] = values.get(key, {}) | sub if isinstance(sub, dict) else sub
    return values


def test_cpu_render_is_the_file_with_model_replicas_sized_by_the_nodes():
    rendered = yaml.safe_load(serve_config_of(render(ci_values("default"))))
    expected = yaml.safe_load(PACKAGE_FILE.read_text())
    default_values = chart_values(yaml.safe_load(ci_values("default").read_text()) or {})
    for app in expected["applications"]:
        for dep in app["deployments"]:
            if dep["name"].startswith("model-"):
                dep["autoscaling_config"]["max_replicas"] = model_max_replicas(default_values)
    assert rendered == expected
    assert model_max_replicas(default_values) == 8  # 2-CPU workers, at most 4 of them


def test_model_max_replicas_value_overrides_the_rule(tmp_path):
    values = tmp_path / "max.yaml"
    values.write_text("ray: {modelMaxReplicas: 3}\n")
    config = yaml.safe_load(serve_config_of(render(values)))
    (model,) = [d for a in config["applications"] for d in a["deployments"] if d["name"].startswith("model-")]
    assert model["autoscaling_config"]["max_replicas"] == 3


def test_gpu_render_changes_only_num_gpus_and_min_replicas_on_model_deployments():
    from marcelle_torch.serving.config import apply_overrides

    values = yaml.safe_load(ci_values("gpu").read_text())
    num_gpus = values["gpu"]["numGpusPerReplica"]
    original = yaml.safe_load(PACKAGE_FILE.read_text())
    rendered = yaml.safe_load(serve_config_of(render(ci_values("gpu"))))
    # The same override the CLI applies (`marcelle-torch serve --num-gpus`), and the model
    # deployments' floor from gpu.modelMinReplicas (0: the GPU group can scale to 0).
    expected = apply_overrides(original, num_gpus=num_gpus)
    min_replicas = yaml.safe_load((CHART / "values.yaml").read_text())["gpu"]["modelMinReplicas"]
    max_replicas = model_max_replicas(chart_values(values))
    for dep in (d for a in expected["applications"] for d in a["deployments"]):
        if dep["name"].startswith("model-"):
            dep["autoscaling_config"]["min_replicas"] = min_replicas
            dep["autoscaling_config"]["max_replicas"] = max_replicas
    assert rendered == expected
    assert rendered != original
    changed = []
    for app_r, app_o in zip(rendered["applications"], original["applications"], strict=True):
        for dep_r, dep_o in zip(app_r["deployments"], app_o["deployments"], strict=True):
            if dep_r != dep_o:
                stripped = copy.deepcopy(dep_r)
                assert stripped["ray_actor_options"].pop("num_gpus") == num_gpus
                assert stripped["autoscaling_config"].pop("min_replicas") == min_replicas
                assert stripped["autoscaling_config"].pop("max_replicas") == max_replicas
                dep_o = copy.deepcopy(dep_o)
                dep_o.get("ray_actor_options", {}).pop("num_gpus", None)
                dep_o.get("autoscaling_config", {}).pop("min_replicas", None)
                dep_o.get("autoscaling_config", {}).pop("max_replicas", None)
                assert stripped == dep_o
                changed.append(dep_r["name"])
    assert changed and all(name.startswith("model-") for name in changed)


def test_every_rendered_serve_config_passes_rays_schema():
    from ray.serve.schema import ServeDeploySchema

    for name in ("default", "gpu", "cpu-scale-to-zero"):
        if name == "cpu-scale-to-zero":
            config = yaml.safe_load(serve_config_of(render(ci_values("default"), sets=("ray.modelMinReplicas=0",))))
        else:
            config = yaml.safe_load(serve_config_of(render(ci_values(name))))
        ServeDeploySchema.model_validate(config)
        # KubeRay routes its Serve Service to port 8000 on every node.
        assert config["http_options"]["port"] == 8000
        assert config["http_options"]["host"] == "0.0.0.0"


def test_num_gpus_override_follows_values(tmp_path):
    values = tmp_path / "half-gpu.yaml"
    values.write_text("gpu: {enabled: true, numGpusPerReplica: 0.5}\n")
    config = yaml.safe_load(serve_config_of(render(values)))
    model = next(d for a in config["applications"] for d in a["deployments"] if d["name"].startswith("model-"))
    assert model["ray_actor_options"]["num_gpus"] == 0.5
