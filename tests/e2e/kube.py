"""The kind end-to-end test's view of the cluster, through the official `kubernetes` Python
client (never by parsing kubectl's output): pods and their containers' conditions, a
RayService's status (watched), a Service's ready endpoints (EndpointSlices), and, when a test
fails, the failing pods' events and container logs.

Field names follow the pinned KubeRay's CRDs (ray.io/v1 RayService, KubeRay v1.7.0:
status.conditions[type=Ready], status.activeServiceStatus.rayClusterName,
status.pendingServiceStatus.rayClusterName)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

RAY_GROUP, RAY_VERSION = "ray.io", "v1"

# The release the kind test installs, and the tag its images are built with.
E2E_TAG = "e2e"
RELEASE, NAMESPACE = "mt", "marcelle-torch-e2e"


def fullname(release: str = RELEASE) -> str:
    """The chart's object prefix (mt.fullname): <release>-marcelle-torch unless it holds the name."""
    name = release if "marcelle-torch" in release else f"{release}-marcelle-torch"
    return name[:40].rstrip("-")


@dataclass
class Problem:
    namespace: str
    pod: str
    what: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.pod}: {self.what}"


class Kube:
    def __init__(self, kubeconfig: Path):
        from kubernetes import client, config

        self.api = config.new_client_from_config(config_file=str(kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.discovery = client.DiscoveryV1Api(self.api)

    # ------------------------------------------------------------------------------ pods

    def pods(self, namespace: str, selector: str = "") -> list:
        return self.core.list_namespaced_pod(namespace, label_selector=selector).items

    @staticmethod
    def pod_problems(pod) -> list[str]:
        """What keeps this pod from being healthy: phase, any container (sidecars such as the Ray
        autoscaler included) not ready, any restart, any init container that did not succeed."""
        status = pod.status
        if status.phase == "Succeeded":
            return []
        problems = [] if status.phase == "Running" else [f"phase {status.phase}"]
        for c in status.init_container_statuses or []:
            term = c.state.terminated if c.state else None
            if not term or term.exit_code != 0:
                problems.append(f"init container {c.name} did not succeed ({_state(c)})")
        statuses = status.container_statuses or []
        declared = {c.name for c in pod.spec.containers}
        missing = declared - {c.name for c in statuses}
        problems += [f"container {name} has no status" for name in sorted(missing)]
        for c in statuses:
            if not c.ready:
                problems.append(f"container {c.name} not ready ({_state(c)})")
            if c.restart_count:
                problems.append(f"container {c.name} restarted {c.restart_count}x (last: {_last_state(c)})")
        return problems

    def problems(self, namespaces: list[str]) -> list[Problem]:
        return [
            Problem(ns, p.metadata.name, what)
            for ns in namespaces
            for p in self.pods(ns)
            for what in self.pod_problems(p)
        ]

    def watch_pods_healthy(self, namespaces: list[str], seconds: float) -> list[Problem]:
        """Problems seen now and at any pod event during ``seconds`` (a container that crash-loops
        restarts within a minute, a flapping readiness probe turns a pod NotReady)."""
        from kubernetes import watch

        seen: dict[tuple[str, str, str], Problem] = {}
        for problem in self.problems(namespaces):
            seen[(problem.namespace, problem.pod, problem.what)] = problem
        deadline = time.monotonic() + seconds
        for ns in namespaces:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                remaining = 1
            w = watch.Watch()
            for event in w.stream(self.core.list_namespaced_pod, ns, timeout_seconds=max(1, int(remaining))):
                pod = event["object"]
                if event["type"] == "DELETED":
                    continue
                for what in self.pod_problems(pod):
                    seen.setdefault((ns, pod.metadata.name, what), Problem(ns, pod.metadata.name, what))
                if time.monotonic() > deadline:
                    w.stop()
        # A pod that was still starting at the first look and is fine now is not a problem;
        # a restart or a readiness flap stays one.
        now = {(p.namespace, p.pod, p.what) for p in self.problems(namespaces)}
        return [p for key, p in seen.items() if key in now or "restarted" in p.what or "not ready" in p.what]

    def wait_pods(self, namespace: str, selector: str, count: int, timeout: float, what: str) -> list:
        """At least ``count`` pods matching ``selector``, every container ready."""
        deadline = time.monotonic() + timeout
        while True:
            pods = [p for p in self.pods(namespace, selector) if p.metadata.deletion_timestamp is None]
            ready = [p for p in pods if not self.pod_problems(p)]
            if len(ready) >= count:
                return ready
            if time.monotonic() > deadline:
                states = {p.metadata.name: self.pod_problems(p) for p in pods}
                raise AssertionError(f"{what}: {len(ready)}/{count} ready after {timeout:.0f}s: {states}")
            time.sleep(3)

    # ------------------------------------------------------------------------ RayService

    def rayservice(self, namespace: str, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(RAY_GROUP, RAY_VERSION, namespace, "rayservices", name)

    @staticmethod
    def condition(obj: dict, kind: str) -> dict | None:
        return next((c for c in (obj.get("status") or {}).get("conditions", []) if c.get("type") == kind), None)

    def wait_rayservice(self, namespace: str, name: str, timeout: float, until=None, what: str = "Ready") -> dict:
        """Watch the RayService until ``until(obj)`` (default: condition Ready is True)."""
        from kubernetes import watch

        until = until or (lambda obj: (self.condition(obj, "Ready") or {}).get("status") == "True")
        obj = self.rayservice(namespace, name)
        deadline = time.monotonic() + timeout
        while not until(obj):
            remaining = int(deadline - time.monotonic())
            if remaining <= 0:
                status = obj.get("status") or {}
                raise AssertionError(
                    f"RayService {namespace}/{name} not {what} after {timeout:.0f}s: "
                    f"conditions {status.get('conditions')}, "
                    f"active {status.get('activeServiceStatus', {}).get('rayClusterName')}, "
                    f"pending {status.get('pendingServiceStatus', {}).get('rayClusterName')}"
                )
            w = watch.Watch()
            for event in w.stream(
                self.custom.list_namespaced_custom_object,
                RAY_GROUP,
                RAY_VERSION,
                namespace,
                "rayservices",
                field_selector=f"metadata.name={name}",
                timeout_seconds=min(remaining, 60),
            ):
                obj = event["object"]
                if until(obj):
                    w.stop()
                    break
        return obj

    def rayclusters(self, namespace: str) -> list[str]:
        items = self.custom.list_namespaced_custom_object(RAY_GROUP, RAY_VERSION, namespace, "rayclusters")["items"]
        return [i["metadata"]["name"] for i in items]

    # ------------------------------------------------------------------------- Services

    def ready_endpoints(self, namespace: str, service: str) -> list[str]:
        slices = self.discovery.list_namespaced_endpoint_slice(
            namespace, label_selector=f"kubernetes.io/service-name={service}"
        ).items
        return [
            address
            for s in slices
            for e in (s.endpoints or [])
            if e.conditions is None or e.conditions.ready is not False
            for address in e.addresses
        ]

    # ---------------------------------------------------------------------- diagnostics

    def diagnose(self, namespaces: list[str], log_lines: int = 60) -> str:
        """Events and container logs of every pod with a problem (and the RayServices' status)."""
        out = []
        for ns in namespaces:
            try:
                for rs in self.custom.list_namespaced_custom_object(RAY_GROUP, RAY_VERSION, ns, "rayservices")["items"]:
                    status = rs.get("status") or {}
                    out.append(f"RayService {ns}/{rs['metadata']['name']}: conditions {status.get('conditions')}")
            except Exception as exc:  # noqa: BLE001 (the CRD may not be installed yet)
                out.append(f"RayServices in {ns}: {exc}")
            for pod in self.pods(ns):
                problems = self.pod_problems(pod)
                if not problems:
                    continue
                name = pod.metadata.name
                out.append(f"\n=== pod {ns}/{name}: {'; '.join(problems)}")
                events = self.core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items
                for e in sorted(events, key=lambda e: str(e.last_timestamp or e.event_time or "")):
                    out.append(f"  event {e.type} {e.reason} x{e.count or 1}: {e.message}")
                for c in pod.status.container_statuses or []:
                    for previous in [False, True] if c.restart_count else [False]:
                        try:
                            log = self.core.read_namespaced_pod_log(
                                name, ns, container=c.name, previous=previous, tail_lines=log_lines
                            )
                        except Exception as exc:  # noqa: BLE001 (no log yet)
                            log = f"({exc.__class__.__name__}: no log)"
                        label = "previous log" if previous else "log"
                        out.append(f"  --- {c.name} {label} (last {log_lines} lines):\n{log}")
        return "\n".join(out)


def _state(c) -> str:
    s = c.state
    if s is None:
        return "unknown"
    if s.waiting:
        return f"waiting: {s.waiting.reason}"
    if s.terminated:
        return f"terminated: {s.terminated.reason} exit {s.terminated.exit_code}"
    return "running"


def _last_state(c) -> str:
    s = c.last_state
    if s and s.terminated:
        return f"{s.terminated.reason} exit {s.terminated.exit_code}"
    return "unknown"
