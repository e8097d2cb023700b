"""What the chart must do on a real cluster (kind), beyond the scenarios every target runs:
healthy pods (every container, the Ray autoscaler sidecar included, Ready and never restarted),
Services with endpoints, the Ray dashboard through the NOTES' own port-forward command, a
scale-up that adds a Ray worker pod which serves, and a `helm upgrade` to a new Ray image tag
that loses no prediction. Skips (one line) where Docker or kind is missing.

The tests run in file order and the last two change the release: keep them last."""

from __future__ import annotations

import base64
import json
import shlex
import threading
import time

import pytest
import scenarios
from kube import E2E_TAG, NAMESPACE, RELEASE, fullname

pytestmark = [pytest.mark.ray, pytest.mark.backend]

# A crash-looping container restarts within a minute; a flapping readiness probe (the head's,
# while its autoscaler fails) shows within its period. Watch that long before trusting "healthy".
STABLE_S = 120
SCALE_UP_S = 900
UPGRADE_S = 1800


def test_every_container_ready_and_never_restarted(kind_cluster):
    problems = kind_cluster.kube.watch_pods_healthy(kind_cluster.namespaces, STABLE_S)
    assert not problems, "unhealthy pods:\n" + "\n".join(map(str, problems))
    head = kind_cluster.kube.pods(NAMESPACE, "ray.io/node-type=head")
    assert len(head) == 1, [p.metadata.name for p in head]
    names = {c.name for c in head[0].spec.containers}
    assert "autoscaler" in names, f"the head pod has no autoscaler sidecar: {names}"


@pytest.mark.parametrize("suffix", ["head-svc", "serve-svc"])
def test_rayservice_services_have_endpoints(kind_cluster, suffix):
    # KubeRay names these after the RayService (<name>-head-svc, <name>-serve-svc) and selects
    # Ray pods by its own labels; a chart label that overrides them leaves them empty.
    service = f"{fullname()}-{suffix}"
    deadline = time.monotonic() + 120
    while not kind_cluster.kube.ready_endpoints(NAMESPACE, service):
        assert time.monotonic() < deadline, f"Service {service} has no ready endpoints"
        time.sleep(5)


def ray_token_header(kind_cluster) -> dict[str, str]:
    """The dashboard asks for Ray's token (the chart's ray.auth): read as the NOTES say, from
    KubeRay's Secret named after the serving Ray cluster (ray-operator/controllers/ray/
    raycluster_controller.go createAuthSecret, key utils/constant.go RAY_AUTH_TOKEN_SECRET_KEY)."""
    kube = kind_cluster.kube
    cluster = kube.rayservice(NAMESPACE, fullname())["status"]["activeServiceStatus"]["rayClusterName"]
    secret = kube.core.read_namespaced_secret(cluster, NAMESPACE)
    return {"Authorization": f"Bearer {base64.b64decode(secret.data['auth_token']).decode()}"}


def test_dashboard_answers_through_the_notes_port_forward(kind_cluster):
    notes = kind_cluster.run(kind_cluster.helm, "get", "notes", RELEASE, "--namespace", NAMESPACE, capture=True)
    lines = [line.strip() for line in notes.splitlines() if "port-forward" in line and "-head-svc" in line]
    assert lines, f"NOTES show no port-forward to the head Service:\n{notes}"
    cmd = shlex.split(lines[0])
    assert cmd[0] == "kubectl", lines[0]
    # As printed, but any free local port (8265 may be taken on the machine running the test).
    cmd = [kind_cluster.kubectl, *[":8265" if a == "8265:8265" else a for a in cmd[1:]], "--address", "127.0.0.1"]
    dashboard = kind_cluster.port_forward_cmd(cmd)
    status, _, body = scenarios.http(
        "GET", f"{dashboard}/api/version", timeout=60, headers=ray_token_header(kind_cluster)
    )
    assert status == 200, f"dashboard /api/version: HTTP {status}: {body[:200]!r}"
    version = json.loads(body).get("ray_version")
    assert version == "2.60.0", f"the dashboard reports Ray {version}"


def _serve_replicas(dashboard: str, headers: dict[str, str]) -> list[dict]:
    status, _, body = scenarios.http("GET", f"{dashboard}/api/serve/applications/", timeout=60, headers=headers)
    assert status == 200, f"Serve applications: HTTP {status}"
    apps = json.loads(body).get("applications", {})
    return [
        r
        for app in apps.values()
        for d, dep in app.get("deployments", {}).items()
        if d.startswith("model-")
        for r in dep.get("replicas", [])
    ]


def test_scale_up_adds_a_worker_pod_that_serves(kind_cluster, make_digit):
    """Three model replicas need three CPUs; a kind CPU worker offers two (tests/e2e/kind-values.yaml),
    so the autoscaler must add a worker pod, a replica must run there, and its Serve proxy answers."""
    kube = kind_cluster.kube
    selector = "ray.io/node-type=worker"
    before = {p.metadata.name for p in kube.wait_pods(NAMESPACE, selector, 1, 300, "Ray workers")}
    kind_cluster.helm_upgrade("--reuse-values", "--set", "ray.modelMinReplicas=3")
    try:
        pods = kube.wait_pods(NAMESPACE, selector, len(before) + 1, SCALE_UP_S, "Ray workers after the scale-up")
        new = [p for p in pods if p.metadata.name not in before]
        assert new, f"no new worker pod: {[p.metadata.name for p in pods]}"
        dashboard = kind_cluster.port_forward(f"svc/{fullname()}-head-svc", 8265)
        headers = ray_token_header(kind_cluster)
        new_ips = {p.status.pod_ip for p in new}
        deadline = time.monotonic() + SCALE_UP_S
        while True:
            replicas = _serve_replicas(dashboard, headers)
            running = [r for r in replicas if r.get("state") == "RUNNING"]
            if len(running) >= 3 and any(r.get("node_ip") in new_ips for r in running):
                break
            assert time.monotonic() < deadline, f"no running model replica on the new pod {new_ips}: {replicas}"
            time.sleep(5)
        proxy = kind_cluster.port_forward(f"pod/{new[0].metadata.name}", 8000)
        instance, label = make_digit(1)
        status, _, body = scenarios.http("POST", f"{proxy}/v1/models/digits:predict", {"instances": [instance]})
        assert status == 200, f"the new worker's Serve proxy: HTTP {status}: {body[:200]!r}"
        assert json.loads(body)["predictions"][0]["label"] == label
    finally:
        kind_cluster.helm_upgrade("--reuse-values", "--set", "ray.modelMinReplicas=null")


def test_helm_upgrade_to_a_new_ray_image_loses_no_request(kind_cluster, make_digit):
    """A new Ray image tag makes KubeRay roll out a new Ray cluster (the chart's upgradeStrategy);
    predictions keep flowing through the web app the whole time, none may fail."""
    kube = kind_cluster.kube
    name = fullname()
    old_cluster = kube.rayservice(NAMESPACE, name)["status"]["activeServiceStatus"]["rayClusterName"]
    new_tag = f"{E2E_TAG}-next"
    kind_cluster.run("docker", "tag", f"marcelle-torch/ray:{E2E_TAG}", f"marcelle-torch/ray:{new_tag}")
    kind_cluster.load_image(f"marcelle-torch/ray:{new_tag}")

    upgrading = threading.Event()
    upgrading.set()
    result: dict = {}
    load = threading.Thread(
        target=lambda: result.update(scenarios.predictions_while(kind_cluster.target, make_digit, upgrading.is_set)),
        daemon=True,
    )
    load.start()
    try:
        kind_cluster.helm_upgrade("--reuse-values", "--set", f"ray.image.tag={new_tag}")

        def switched(obj):
            status = obj.get("status") or {}
            active = (status.get("activeServiceStatus") or {}).get("rayClusterName")
            pending = (status.get("pendingServiceStatus") or {}).get("rayClusterName")
            ready = (kube.condition(obj, "Ready") or {}).get("status") == "True"
            return ready and active not in (None, old_cluster) and not pending

        kube.wait_rayservice(NAMESPACE, name, UPGRADE_S, until=switched, what="switched to a new Ray cluster")
        # Keep sending until the old cluster is deleted (KubeRay waits clusterDeletionDelaySeconds).
        deadline = time.monotonic() + 600
        while old_cluster in kube.rayclusters(NAMESPACE):
            assert time.monotonic() < deadline, f"old Ray cluster {old_cluster} still there after 10 min"
            time.sleep(5)
        time.sleep(15)
    finally:
        upgrading.clear()
        load.join(120)
    print(f"predictions during the upgrade: {result.get('sent')} sent, {result.get('failed')} failed", flush=True)
    assert result.get("sent", 0) > 10, f"too few predictions sent to judge the upgrade: {result}"
    assert result["failed"] == 0, (
        f"{result['failed']}/{result['sent']} predictions failed during the upgrade:\n" + "\n".join(result["failures"])
    )
    image = kube.pods(NAMESPACE, "ray.io/node-type=head")[0].spec.containers[0].image
    assert image.endswith(f":{new_tag}"), f"the head pod runs {image}"
