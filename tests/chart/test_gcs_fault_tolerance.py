"""Head-node fault tolerance (`ray.gcsFaultTolerance`): KubeRay's gcsFaultToleranceOptions with
an external Redis whose address and password come from a Secret. Its proof (the head killed
under load, Serve answering from the workers, the head back from Redis) is in the cluster tier
(tests/cluster/test_head_loss.py).

Upstream facts encoded here (ray-project/kuberay v1.7.0):
- ray-operator/controllers/ray/common/pod.go configureGCSFaultTolerance / configureRedisFT: the
  head container gets RAY_external_storage_namespace (the RayCluster's UID unless set),
  RAY_REDIS_ADDRESS = redisAddress and REDIS_PASSWORD = redisPassword (value or valueFrom)
  appended to its env, and rayStartParams redis-password "$REDIS_PASSWORD"; workers get
  RAY_GCS_RPC_SERVER_RECONNECT_TIMEOUT_S=600; the head gets the ray.io/ft-enabled annotation.
- ray-operator/controllers/ray/utils/validation.go ValidateRayClusterSpec: with
  GcsFaultToleranceOptions the head may not set RAY_REDIS_ADDRESS, REDIS_PASSWORD or
  REDIS_USERNAME env vars, rayStartParams redis-password or redis-username, nor the
  ray.io/ft-enabled annotation.
- Kubernetes expands `$(VAR)` in an env var's value from the variables defined before it in the
  same container, which is how the Secret's address reaches RAY_REDIS_ADDRESS.
"""

from __future__ import annotations

import re

import pytest
from k8s_tools import ci_values, one, render, render_text

FT = ("ray.gcsFaultTolerance.enabled=true", "ray.gcsFaultTolerance.existingSecret=ray-redis")


def cluster(objects):
    return one(objects, "RayService")["spec"]["rayClusterConfig"]


def head_container(objects):
    return cluster(objects)["headGroupSpec"]["template"]["spec"]["containers"][0]


def kuberay_head_env(objects) -> list[dict]:
    """The head container's env after configureRedisFT (pod.go v1.7.0)."""
    spec = cluster(objects)
    options = spec.get("gcsFaultToleranceOptions")
    env = list(head_container(objects).get("env", []))
    if options is not None:
        env.append({"name": "RAY_external_storage_namespace", "value": "7c6f1d7e-uid"})
        env.append({"name": "RAY_REDIS_ADDRESS", "value": options["redisAddress"]})
        if "redisPassword" in options:
            env.append({"name": "REDIS_PASSWORD", **options["redisPassword"]})
    return env


def kubelet_env(env: list[dict], secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """Values, secretKeyRef, and $(VAR) expansion from the variables defined before."""
    out: dict[str, str] = {}
    for var in env:
        if "value" in var:
            out[var["name"]] = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: out.get(m.group(1), m.group(0)), var["value"]
            )
        elif "secretKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["secretKeyRef"]
            out[var["name"]] = secrets[ref["name"]][ref["key"]]
    return out


def test_off_by_default():
    objects = render(ci_values("default"))
    assert "gcsFaultToleranceOptions" not in cluster(objects)
    assert "MARCELLE_TORCH_REDIS_ADDRESS" not in {e["name"] for e in head_container(objects).get("env", [])}


def test_the_head_reaches_redis_at_the_address_and_password_of_the_secret():
    objects = render(sets=FT)
    options = cluster(objects)["gcsFaultToleranceOptions"]
    assert options["redisPassword"] == {"valueFrom": {"secretKeyRef": {"name": "ray-redis", "key": "redis-password"}}}
    assert "backend" not in options, "KubeRay's default backend, redis"
    secrets = {"ray-redis": {"redis-address": "redis.databases.svc.cluster.local:6379", "redis-password": "s3cret"}}
    env = kubelet_env(kuberay_head_env(objects), secrets)
    assert env["RAY_REDIS_ADDRESS"] == "redis.databases.svc.cluster.local:6379"
    assert env["REDIS_PASSWORD"] == "s3cret"


def test_nothing_kuberay_refuses_with_fault_tolerance():
    objects = render(sets=FT)
    spec = cluster(objects)
    head = spec["headGroupSpec"]
    names = {e["name"] for e in head_container(objects).get("env", [])}
    assert not names & {"RAY_REDIS_ADDRESS", "REDIS_PASSWORD", "REDIS_USERNAME", "RAY_external_storage_namespace"}
    assert not {"redis-password", "redis-username"} & set(head["rayStartParams"])
    assert "ray.io/ft-enabled" not in (head["template"]["metadata"].get("annotations") or {})
    assert "ray.io/ft-enabled" not in (one(objects, "RayService")["metadata"].get("annotations") or {})


def test_a_redis_without_password():
    objects = render(sets=(*FT, "ray.gcsFaultTolerance.passwordSecretKey="))
    assert "redisPassword" not in cluster(objects)["gcsFaultToleranceOptions"]
    objects = render(sets=(*FT, "ray.gcsFaultTolerance.addressSecretKey=url"))
    env = kubelet_env(kuberay_head_env(objects), {"ray-redis": {"url": "rediss://r:6380", "redis-password": "p"}})
    assert env["RAY_REDIS_ADDRESS"] == "rediss://r:6380"


@pytest.mark.parametrize(
    "sets,message",
    [
        (("ray.gcsFaultTolerance.enabled=true",), "at '/ray/gcsFaultTolerance/existingSecret': minLength"),
        ((*FT, "ray.gcsFaultTolerance.addressSecretKey=a b"), "at '/ray/gcsFaultTolerance/addressSecretKey'"),
    ],
)
def test_bad_values_are_refused(sets, message):
    result = render_text(sets=sets, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr
