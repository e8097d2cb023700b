"""templates/rayservice.yaml: pinned Ray, in-tree autoscaling, head + CPU group, GPU group on demand."""

from __future__ import annotations

import tomllib

import pytest
from k8s_tools import REPO, ci_values, one, ray_worker_groups, render


def ray_cluster(objects):
    return one(objects, "RayService")["spec"]["rayClusterConfig"]


def test_ray_version_is_the_projects_pin():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    dep = next(d for d in pyproject["project"]["optional-dependencies"]["serve"] if d.startswith("ray["))
    assert dep == "ray[serve]>=2.60,<2.61", dep  # the library's range: the tested minor line
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line)
    assert pins["ray"] == "2.60.0"  # what the images, CI and make install
    assert ray_cluster(render(ci_values("default")))["rayVersion"] == "2.60.0"


def test_autoscaling_in_tree_with_head_and_cpu_group():
    cluster = ray_cluster(render(ci_values("default")))
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0", "Serve replicas belong on workers"
    ports = {p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert ports == {
        "gcs-server": 6379,
        "dashboard": 8265,
        "client": 10001,
        "serve": 8000,
        "metrics": 8080,
        "as-metrics": 44217,
        "dash-metrics": 44227,
    }
    groups = ray_worker_groups(render(ci_values("default")))
    assert list(groups) == ["cpu"]
    cpu = groups["cpu"]
    assert 0 <= cpu["minReplicas"] <= cpu["replicas"] <= cpu["maxReplicas"]


def test_gpu_group_off_by_default_and_on_the_gpu_pool_when_enabled():
    groups = ray_worker_groups(render(ci_values("gpu")))
    assert set(groups) == {"cpu", "gpu"}
    gpu = groups["gpu"]
    assert gpu["minReplicas"] == 0
    spec = gpu["template"]["spec"]
    limits = spec["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] == {"marcelle-torch.dev/node-pool": "gpu"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["containers"][0]["image"].endswith(":0.1.0-gpu")
    # The CPU group hosts no model replica any more: it stays at 0 (test_rayservice_kuberay.py).
    cpu = dict(ray_worker_groups(render(ci_values("default")))["cpu"], replicas=0, minReplicas=0)
    assert cpu == groups["cpu"]


def test_images_default_to_app_version_and_can_be_pinned():
    cluster = ray_cluster(render(sets=("ray.image.tag=0.1.0-rc1", "ray.image.repository=registry.example/mt/ray")))
    assert cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/mt/ray:0.1.0-rc1"
    cluster = ray_cluster(render(ci_values("default")))
    assert cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] == "marcelle-torch/ray:0.1.0"


@pytest.mark.parametrize("group", ["cpu", "gpu"])
def test_min_above_max_is_refused(group):
    from k8s_tools import render_text

    sets = [f"{'ray.cpuWorkers' if group == 'cpu' else 'gpu'}.minReplicas=9"]
    if group == "gpu":
        sets.append("gpu.enabled=true")
    result = render_text(sets=tuple(sets), check=False)
    assert result.returncode != 0
    assert f"{group} worker group: minReplicas (9) exceeds maxReplicas" in result.stderr
