"""Bounded disks, a protected head and spread workers: `sizeLimit` on every emptyDir,
ephemeral-storage requests and limits on the Ray Pods, a PodDisruptionBudget and an optional
priority class for the head, topology spread for the worker groups, and `rayVersion` from the
one value the images share.

Upstream facts encoded here (ray-project/kuberay v1.7.0, ray-operator/controllers/ray/common/pod.go):
- BuildPod adds `/dev/shm` through addEmptyDir(..., SharedMemoryVolumeName "shared-mem",
  StorageMediumMemory): makeEmptyDirVolume gives a Memory emptyDir the container's memory
  request or limit as sizeLimit (findMemoryReqOrLimit), so KubeRay's own volume is bounded.
- With in-tree autoscaling BuildPod calls addEmptyDir for RayLogVolumeName "ray-logs" at
  RayLogVolumeMountPath "/tmp/ray" in the Ray and autoscaler containers: a container that
  already mounts /tmp/ray gets nothing, and a Pod that already has a volume named "ray-logs"
  gets no second one (checkIfVolumeMounted, checkIfVolumeExists), so the chart's bounded
  volume is the one both containers use; a volume of another name there would leave KubeRay
  adding an unbounded one for the autoscaler.
- Ray 2.60.0 (python/ray/_private/node.py): without an object_spilling_config, objects spill
  into the node's temp dir, the session directory under /tmp/ray.
"""

from __future__ import annotations

import re
import shutil
import tomllib

import pytest
import yaml
from k8s_tools import CHART, CI_VALUES, REPO, by_kind, ci_values, helm, one, pod_specs, render, render_text
from packaging.requirements import Requirement
from test_ray_labels import label_pod

ids = [p.name.removesuffix("-values.yaml") for p in CI_VALUES]
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "": 1}


def quantity(text) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text)).groups()
    return float(number) * UNITS[unit]


def ray_cluster(objects):
    return one(objects, "RayService")["spec"]["rayClusterConfig"]


def ray_pod_specs(objects):
    cluster = ray_cluster(objects)
    yield "head", cluster["headGroupSpec"]["template"]["spec"]
    for group in cluster.get("workerGroupSpecs", []):
        yield group["groupName"], group["template"]["spec"]


@pytest.mark.parametrize("values", [*CI_VALUES], ids=ids)
def test_every_emptydir_has_a_size_limit(values):
    for owner, spec in pod_specs(render(values)):
        for volume in spec.get("volumes", []):
            if "emptyDir" in volume:
                assert volume["emptyDir"].get("sizeLimit"), f"{owner}: emptyDir {volume['name']} has no sizeLimit"
                quantity(volume["emptyDir"]["sizeLimit"])


@pytest.mark.parametrize("values", [ci_values("default"), ci_values("models")], ids=["default", "models"])
def test_kuberay_adds_no_unbounded_volume_at_tmp_ray(values):
    """The head's and the workers' /tmp/ray is the chart's `ray-logs` (KubeRay's name), so
    addEmptyDir reuses it for the autoscaler instead of adding an unbounded emptyDir."""
    for owner, spec in ray_pod_specs(render(values)):
        (ray,) = [c for c in spec["containers"] if c["name"].startswith("ray-")]
        mounts = {m["mountPath"]: m["name"] for m in ray["volumeMounts"]}
        assert mounts.get("/tmp/ray") == "ray-logs", owner
        (volume,) = [v for v in spec["volumes"] if v["name"] == "ray-logs"]
        limit = quantity(volume["emptyDir"]["sizeLimit"])
        # Spilled objects and logs stay under the container's own disk limit.
        assert limit < quantity(ray["resources"]["limits"]["ephemeral-storage"]), owner
        # /dev/shm is KubeRay's (sized by memory): the chart adds none of its own.
        assert "/dev/shm" not in mounts


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_ray_pods_request_and_limit_ephemeral_storage(values):
    objects = render(values)
    for owner, spec in ray_pod_specs(objects):
        for c in spec["containers"] + spec.get("initContainers", []):
            resources = c.get("resources", {})
            for kind in ("requests", "limits"):
                assert "ephemeral-storage" in resources.get(kind, {}), (
                    f"{owner}/{c['name']}: no ephemeral-storage {kind}"
                )
            assert quantity(resources["requests"]["ephemeral-storage"]) <= quantity(
                resources["limits"]["ephemeral-storage"]
            )
    autoscaler = ray_cluster(objects)["autoscalerOptions"]["resources"]
    assert "ephemeral-storage" in autoscaler["requests"] and "ephemeral-storage" in autoscaler["limits"]


def test_size_limits_follow_values():
    objects = render(
        ci_values("models"), sets=("ray.logsSizeLimit=3Gi", "modelInit.sizeLimit=9Gi", "tmpSizeLimit=100Mi")
    )
    for owner, spec in pod_specs(objects):
        sizes = {v["name"]: v["emptyDir"]["sizeLimit"] for v in spec.get("volumes", []) if "emptyDir" in v}
        if "ray-logs" in sizes:
            assert sizes["ray-logs"] == "3Gi", owner
        for name in ("models", "models-tmp", "onnx-models"):
            if name in sizes:
                assert sizes[name] == "9Gi", owner
        for name in ("tmp", "nginx-conf"):
            if name in sizes:
                assert sizes[name] == "100Mi", owner
    assert render_text(sets=("ray.logsSizeLimit=lots",), check=False).returncode != 0


# --- the head: PodDisruptionBudget and priority ------------------------------------------------------


def test_head_pdb_holds_the_head_of_this_release_only():
    objects = render(ci_values("gpu"))
    pdb = one(objects, "PodDisruptionBudget", "-ray-head")
    assert pdb["spec"]["minAvailable"] == 1 and "maxUnavailable" not in pdb["spec"]
    cluster = ray_cluster(objects)
    selector = pdb["spec"]["selector"]["matchLabels"]
    head = label_pod(
        "head", "mt-marcelle-torch-abcde", "headgroup", cluster["headGroupSpec"]["template"]["metadata"]["labels"]
    )
    assert selector.items() <= head.items()
    for group in cluster["workerGroupSpecs"]:
        labels = label_pod(
            "worker", "mt-marcelle-torch-abcde", group["groupName"], group["template"]["metadata"]["labels"]
        )
        assert not selector.items() <= labels.items(), group["groupName"]
    other = [d for d in yaml.safe_load_all(render_text(release="other").stdout) if d]
    other_head = label_pod(
        "head",
        "other-marcelle-torch-x",
        "headgroup",
        ray_cluster(other)["headGroupSpec"]["template"]["metadata"]["labels"],
    )
    assert not selector.items() <= other_head.items()
    assert not [
        p
        for p in by_kind(render(sets=("podDisruptionBudget.rayHead=false",)), "PodDisruptionBudget")
        if p["metadata"]["name"].endswith("-ray-head")
    ]


def test_head_priority_class_is_an_option():
    head = ray_cluster(render(ci_values("default")))["headGroupSpec"]["template"]["spec"]
    assert "priorityClassName" not in head
    head = ray_cluster(render(sets=("ray.head.priorityClassName=ray-head-critical",)))["headGroupSpec"]["template"][
        "spec"
    ]
    assert head["priorityClassName"] == "ray-head-critical"
    assert render_text(sets=("ray.head.priorityClassName=Not_A_Name",), check=False).returncode != 0


# --- workers: topology spread -----------------------------------------------------------------------


def test_worker_groups_spread_over_nodes_counting_their_own_pods():
    objects = render(ci_values("gpu"))
    cluster = ray_cluster(objects)
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    pods = {
        name: label_pod("worker", "mt-marcelle-torch-abcde", name, g["template"]["metadata"]["labels"])
        for name, g in groups.items()
    }
    head_labels = label_pod(
        "head", "mt-marcelle-torch-abcde", "headgroup", cluster["headGroupSpec"]["template"]["metadata"]["labels"]
    )
    for name, group in groups.items():
        (constraint,) = group["template"]["spec"]["topologySpreadConstraints"]
        assert constraint["topologyKey"] == "kubernetes.io/hostname"
        assert constraint["whenUnsatisfiable"] == "ScheduleAnyway", "a preference: never a reason to stay Pending"
        # Only the Pods of the same Ray cluster count (an upgrade's new cluster spreads on its own).
        assert constraint["matchLabelKeys"] == ["ray.io/cluster"]
        selector = constraint["labelSelector"]["matchLabels"]
        assert "ray.io/cluster" not in selector, "matchLabelKeys may not repeat a labelSelector key"
        assert selector.items() <= pods[name].items()
        assert not any(selector.items() <= labels.items() for other, labels in pods.items() if other != name)
        assert not selector.items() <= head_labels.items()
    assert "topologySpreadConstraints" not in cluster["headGroupSpec"]["template"]["spec"]


def test_topology_spread_can_be_replaced_or_turned_off(tmp_path):
    values = tmp_path / "spread.yaml"
    mine = {
        "maxSkew": 2,
        "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"team": "ml"}},
    }
    values.write_text(yaml.safe_dump({"ray": {"cpuWorkers": {"topologySpreadConstraints": [mine]}}}))
    group = ray_cluster(render(values))["workerGroupSpecs"][0]
    assert group["template"]["spec"]["topologySpreadConstraints"] == [mine]
    off = tmp_path / "no-spread.yaml"  # another file: renders are cached by path
    off.write_text(yaml.safe_dump({"ray": {"cpuWorkers": {"topologySpreadConstraints": []}}}))
    assert "topologySpreadConstraints" not in ray_cluster(render(off))["workerGroupSpecs"][0]["template"]["spec"]


# --- rayVersion ---------------------------------------------------------------------------------------


def chart_ray_version() -> str:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())["annotations"]["marcelle-torch/ray-version"]


def test_ray_version_is_one_value_that_the_images_share():
    version = chart_ray_version()
    assert ray_cluster(render(ci_values("default")))["rayVersion"] == version
    dockerfile = (REPO / "services" / "ray" / "Dockerfile").read_text()
    bases = re.findall(r"^FROM rayproject/ray:([0-9.]+)-", dockerfile, re.M)
    assert bases and set(bases) == {version}, f"services/ray/Dockerfile bases {bases} (CPU, GPU, both arches)"
    assert f"ray.__version__ == '{version}'" in dockerfile
    # The exact version the images, CI and make install (constraints.txt), inside the package's range.
    assert re.search(rf"^ray=={re.escape(version)}$", (REPO / "constraints.txt").read_text(), re.M)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    spec = next(d for d in pyproject["project"]["optional-dependencies"]["serve"] if d.startswith("ray["))
    assert Requirement(spec).specifier.contains(version), f"pyproject's {spec} leaves out Ray {version}"
    # The GPU image is the same Dockerfile: the GPU group gets no other version.
    assert "rayVersion" not in yaml.safe_dump(ray_cluster(render(ci_values("gpu")))["workerGroupSpecs"])


def test_ray_version_follows_the_annotation_alone(tmp_path):
    copy = tmp_path / "chart"
    shutil.copytree(CHART, copy)
    chart = (copy / "Chart.yaml").read_text()
    version = chart_ray_version()
    (copy / "Chart.yaml").write_text(chart.replace(f'ray-version: "{version}"', 'ray-version: "2.61.1"'))
    out = helm("template", "mt", str(copy), "--namespace", "marcelle-torch").stdout
    (rs,) = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "RayService"]
    assert rs["spec"]["rayClusterConfig"]["rayVersion"] == "2.61.1"
    (copy / "Chart.yaml").write_text(chart.replace(f'ray-version: "{version}"', 'ray-version: "latest"'))
    result = helm("template", "mt", str(copy), check=False)
    assert result.returncode != 0 and "marcelle-torch/ray-version must be a Ray version" in result.stderr
