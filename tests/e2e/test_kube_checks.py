"""The kind test's health rules (kube.py), checked here on pod objects built with the
`kubernetes` client's own models: a restarted or unready sidecar (the Ray autoscaler in the
head pod) is a problem, a healthy pod is not."""

from __future__ import annotations

from kube import Kube, fullname  # noqa: E402
from kubernetes.client import (  # noqa: E402
    V1Container,
    V1ContainerState,
    V1ContainerStateRunning,
    V1ContainerStateTerminated,
    V1ContainerStatus,
    V1ObjectMeta,
    V1Pod,
    V1PodSpec,
    V1PodStatus,
)


def head_pod(autoscaler_ready=True, autoscaler_restarts=0, phase="Running"):
    running = V1ContainerState(running=V1ContainerStateRunning())
    crashed = V1ContainerState(terminated=V1ContainerStateTerminated(exit_code=1, reason="Error"))
    return V1Pod(
        metadata=V1ObjectMeta(name="mt-head-x"),
        spec=V1PodSpec(containers=[V1Container(name="ray-head"), V1Container(name="autoscaler")]),
        status=V1PodStatus(
            phase=phase,
            container_statuses=[
                V1ContainerStatus(name="ray-head", ready=True, restart_count=0, image="i", image_id="i", state=running),
                V1ContainerStatus(
                    name="autoscaler",
                    ready=autoscaler_ready,
                    restart_count=autoscaler_restarts,
                    image="i",
                    image_id="i",
                    state=running,
                    last_state=crashed,
                ),
            ],
        ),
    )


def test_a_healthy_pod_has_no_problem():
    assert Kube.pod_problems(head_pod()) == []


def test_a_restarting_autoscaler_sidecar_is_a_problem():
    problems = Kube.pod_problems(head_pod(autoscaler_restarts=3))
    assert problems == ["container autoscaler restarted 3x (last: Error exit 1)"]


def test_an_unready_container_or_pending_pod_is_a_problem():
    assert any("autoscaler not ready" in p for p in Kube.pod_problems(head_pod(autoscaler_ready=False)))
    assert "phase Pending" in Kube.pod_problems(head_pod(phase="Pending"))


def test_fullname_follows_the_chart():
    assert fullname("mt") == "mt-marcelle-torch"
    assert fullname("marcelle-torch") == "marcelle-torch"
