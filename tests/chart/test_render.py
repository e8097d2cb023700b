"""Every ci/ value set lints (strict), renders, and every object is valid for Kubernetes 1.35
(offline JSON schemas of kubernetes-validate) or, for KubeRay kinds, against KubeRay's CRDs."""

from __future__ import annotations

import copy
import functools

import jsonschema
import pytest
import yaml
from k8s_tools import CHART, CI_VALUES, CRD_DIR, helm, render

K8S_VERSION = "1.35.0"
# Kinds whose schemas come from CRDs; Prometheus Operator CRDs are not here (checked in test_monitoring).
CRD_FILES = {"RayService": "ray.io_rayservices.yaml", "RayCluster": "ray.io_rayclusters.yaml"}
OPERATOR_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
# Gateway API kinds are CRDs too (checked field by field in test_ingress_httproute.py).
GATEWAY_KINDS = {"HTTPRoute"}

ids = [p.name.removesuffix("-values.yaml") for p in CI_VALUES]


def test_every_expected_value_set_exists():
    assert set(ids) >= {"default", "gpu", "mongodb", "auth", "ingress", "httproute", "monitoring"}


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_lint_strict(values):
    result = helm("lint", "--strict", str(CHART), "-f", str(values), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_objects_valid_for_kubernetes(values):
    import kubernetes_validate  # the [test] extra

    objects = render(values)
    assert objects, "nothing rendered"
    checked = 0
    for obj in objects:
        if obj["kind"] in CRD_FILES or obj["kind"] in OPERATOR_KINDS or obj["kind"] in GATEWAY_KINDS:
            continue
        try:
            kubernetes_validate.validate(copy.deepcopy(obj), K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {where}: {exc.message}")
        checked += 1
    assert checked >= 8


@functools.cache
def crd_schema(kind: str) -> dict:
    path = CRD_DIR / CRD_FILES[kind]
    if not path.is_file():
        pytest.fail(
            f"KubeRay CRDs not found at {CRD_DIR}: they are the shared reference data beside the "
            "checkout (../shared/kuberay/crds); point KUBERAY_CRDS at a copy"
        )
    crd = yaml.safe_load(path.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return strict(version["schema"]["openAPIV3Schema"])


def strict(schema):
    """The API server drops unknown fields silently; refuse them here so a typo cannot pass."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_rayservice_valid_for_kuberay_crd(values):
    (ray,) = [o for o in render(values) if o["kind"] == "RayService"]
    assert ray["apiVersion"] == "ray.io/v1"
    body = {k: v for k, v in ray.items()}
    # metadata is validated by Kubernetes itself (the CRD only says `type: object`).
    errors = sorted(jsonschema.Draft7Validator(crd_schema("RayService")).iter_errors(body), key=str)
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors[:10])


def test_crd_check_catches_a_misspelt_field():
    (ray,) = [o for o in render(CI_VALUES[0]) if o["kind"] == "RayService"]
    bad = copy.deepcopy(ray)
    bad["spec"]["rayClusterConfig"]["enableInTreeAutoscale"] = True
    assert list(jsonschema.Draft7Validator(crd_schema("RayService")).iter_errors(bad))


def test_kubernetes_check_catches_a_misspelt_field():
    import kubernetes_validate  # the [test] extra

    deployment = copy.deepcopy(next(o for o in render(CI_VALUES[0]) if o["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
