"""Policies every rendered value set must keep: probes, resources, locked-down securityContexts,
GPU settings only where GPUs are asked for, no secrets in values, NetworkPolicies and PDBs."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from k8s_tools import CHART, CI_VALUES, by_kind, ci_values, pod_specs, render

ids = [p.name.removesuffix("-values.yaml") for p in CI_VALUES]
# Ray writes its session dir, runtime envs and caches all over the home and /tmp.
WRITABLE_ROOT_ALLOWED = {"ray-head", "ray-worker"}


def containers(objects):
    for owner, spec in pod_specs(objects):
        for container in spec.get("initContainers", []) + spec["containers"]:
            yield owner, spec, container


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_every_container_has_probes_and_resources(values):
    for owner, spec, c in containers(render(values)):
        where = f"{owner} container {c['name']}"
        # Kubernetes refuses probes on init containers: they run to completion before the Pod serves.
        if c not in spec.get("initContainers", []):
            assert "livenessProbe" in c and "readinessProbe" in c, f"{where}: missing probes"
        limits = c.get("resources", {}).get("limits", {})
        requests = c.get("resources", {}).get("requests", {})
        assert {"cpu", "memory"} <= limits.keys(), f"{where}: needs cpu and memory limits"
        assert {"cpu", "memory"} <= requests.keys(), f"{where}: needs cpu and memory requests"


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_security_contexts_are_locked_down(values):
    for owner, spec, c in containers(render(values)):
        where = f"{owner} container {c['name']}"
        pod_sc, sc = spec.get("securityContext", {}), c.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True and sc.get("runAsNonRoot") is True, where
        assert pod_sc.get("runAsUser", 0) != 0, where
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert sc.get("allowPrivilegeEscalation") is False, where
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
        assert not sc.get("capabilities", {}).get("add"), where
        assert not sc.get("privileged"), where
        if c["name"] not in WRITABLE_ROOT_ALLOWED:
            assert sc.get("readOnlyRootFilesystem") is True, f"{where}: root filesystem must be read-only"
        # No Pod mounts a token in every container; the head's autoscaler gets one (test_ray_rbac.py).
        assert spec.get("automountServiceAccountToken") is False, owner
    ray = by_kind(render(values), "RayService")[0]
    autoscaler = ray["spec"]["rayClusterConfig"]["autoscalerOptions"]
    assert autoscaler["securityContext"]["allowPrivilegeEscalation"] is False
    assert autoscaler["resources"]["limits"]


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_gpu_only_in_the_gpu_set(values):
    text = json.dumps(render(values))
    gpu_set = values.name == "gpu-values.yaml"
    assert ("nvidia.com/gpu" in text) == gpu_set
    tolerated = [t for _, spec in pod_specs(render(values)) for t in spec.get("tolerations", [])]
    assert any(t.get("key") == "nvidia.com/gpu" for t in tolerated) == gpu_set


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_images_are_pinned(values):
    for owner, _, c in containers(render(values)):
        repo, _, tag = c["image"].rpartition(":")
        assert repo and tag and tag != "latest", f"{owner}: image {c['image']} is not pinned"


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_secret_looking_env_comes_from_secrets(values):
    for owner, _, c in containers(render(values)):
        for env in c.get("env", []):
            if re.search(r"SECRET|PASSWORD|TOKEN|MONGODB_URL", env["name"]):
                assert "valueFrom" in env and "value" not in env, f"{owner}: {env['name']} is set in clear"


def test_values_hold_no_secret():
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node, path=""):
        if isinstance(node, dict):
            for key, child in node.items():
                yield from walk(child, f"{path}.{key}" if path else key)
        else:
            yield path, node

    for path, value in walk(values):
        if re.search(r"secret|password|token|jwt", path.split(".")[-1], re.I) and "Secret" not in path.split(".")[-1]:
            assert not value, f"values.yaml: {path} must not have a default"
    for path in list((CHART / "ci").glob("*.yaml")) + [CHART / "values.yaml"]:
        assert "ZjXdk3pXZLVpvcEMGGuh6LYdi9o=" not in path.read_text()


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_network_policies_and_pdbs_present(values):
    objects = render(values)
    names = {o["metadata"]["name"].removeprefix("mt-marcelle-torch-") for o in by_kind(objects, "NetworkPolicy")}
    assert {"default-deny", "webapp", "backend", "worker", "ray"} <= names
    pdbs = {
        p["metadata"]["name"].removeprefix("mt-marcelle-torch-"): p for p in by_kind(objects, "PodDisruptionBudget")
    }
    assert set(pdbs) == {"webapp", "backend", "worker", "ray-head"}
    # The head is KubeRay's Pod, not a Deployment's: minAvailable (test_ray_hardening.py).
    assert all(p["spec"]["maxUnavailable"] == 1 for name, p in pdbs.items() if name != "ray-head")


def test_every_template_object_is_labelled():
    for obj in render(ci_values("monitoring")) + render(ci_values("ingress")):
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "mt", obj["metadata"]["name"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
