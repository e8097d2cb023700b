"""The NetworkPolicies as a flow table: every flow the system needs (who, to whom, port, why) is
allowed, and a list of flows nobody needs is denied, when the rendered policies are evaluated
with Kubernetes' semantics (netpol.py), for the default values, each ci/ value set, and the
KubeRay operator in several namespaces.

Upstream facts the table relies on:
- ray-project/kuberay v1.7.0, ray-operator/controllers/ray/rayservice_controller.go: the
  RayService controller calls the Ray dashboard through the head Service's `dashboard` port
  (FetchHeadServiceURL with DashboardPortName, 8265: utils/constant.go DefaultDashboardPort) and,
  in updateHeadPodServeLabel, the head Pod's Serve proxy health on its `serve` port
  (httpProxyClientFunc(headPod.Status.PodIP, ..., servingPort), DefaultServingPort 8000); it calls
  no worker Pod. With `--use-kubernetes-proxy` (utils/util.go GetRayDashboardClientFunc,
  GetRayHttpProxyClientFunc) both calls go through the API server's services/pods proxy, so they
  come from the API server, not from the operator's Pod.
- helm-chart/kuberay-operator (v1.7.0) templates/deployment.yaml and _helpers.tpl: the operator's
  Pods are labelled app.kubernetes.io/name=kuberay-operator (the chart name, unless
  nameOverride), app.kubernetes.io/instance=<its release> and app.kubernetes.io/component.
- common/pod.go labelPod: the labels KubeRay gives Ray Pods (test_ray_labels.py).
- Ray 2.60.0 (python/ray/_private/ray_constants.py and services.py): Ray Pods talk to each
  other on the GCS port (6379), raylet, object manager and agent ports picked at random, the
  worker port range (10002-19999 by default) and the dashboard agent (52365).
- The Ray autoscaler in the head Pod (Ray's autoscaler/_private/kuberay/node_provider.py) calls
  the Kubernetes API server.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import yaml
from k8s_tools import CHART, CI_VALUES, by_kind, ci_values, render
from netpol import Host, Network, Pod
from test_ray_labels import label_pod

NS = "marcelle-torch"
RELEASE = "mt"
CLUSTER = "mt-marcelle-torch-x7k2p"
OPERATOR_NAMESPACES = ["kuberay-system", "default", NS]

# --- values ----------------------------------------------------------------------------------


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def values_of(files=(), sets=()) -> dict:
    """The values helm would use (values.yaml, then the files, then simple `--set a.b=c`)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for f in files:
        values = merge(values, yaml.safe_load(open(f).read()) or {})
    for s in sets:
        path, _, raw = s.partition("=")
        node = values
        *parents, last = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = yaml.safe_load(raw)
    return values


# --- the Pods and hosts ---------------------------------------------------------------------------


def ports_of(containers) -> dict:
    return {p["name"]: (p["containerPort"], p.get("protocol", "TCP")) for c in containers for p in c.get("ports", [])}


def release_pods(objects) -> dict[str, Pod]:
    pods = {}
    for d in by_kind(objects, "Deployment"):
        template = d["spec"]["template"]
        name = template["metadata"]["labels"]["app.kubernetes.io/component"]
        pods[name] = Pod(name, NS, template["metadata"]["labels"], ports_of(template["spec"]["containers"]))
    ray = next(o for o in objects if o["kind"] == "RayService")["spec"]["rayClusterConfig"]
    head = ray["headGroupSpec"]["template"]
    pods["head"] = Pod(
        "ray-head",
        NS,
        label_pod("head", CLUSTER, "headgroup", head["metadata"]["labels"]),
        ports_of(head["spec"]["containers"]),
        ip="10.244.1.2",
    )
    # KubeRay's Redis cleanup Job (raycluster_controller.go buildRedisCleanupJob): the head Pod's
    # template, its node type label changed, run when a fault-tolerant RayCluster is deleted.
    pods["redis-cleanup"] = Pod(
        "redis-cleanup",
        NS,
        {**pods["head"].labels, "ray.io/node-type": "redis-cleanup"},
        pods["head"].ports,
        ip="10.244.1.9",
    )
    for group in ray.get("workerGroupSpecs", []):
        t = group["template"]
        pods[f"ray-{group['groupName']}"] = Pod(
            f"ray-worker-{group['groupName']}",
            NS,
            label_pod("worker", CLUSTER, group["groupName"], t["metadata"]["labels"]),
            ports_of(t["spec"]["containers"]),
            ip="10.244.2.3",
        )
    return pods


def operator_pod(namespace: str) -> Pod:
    return Pod(
        "kuberay-operator",
        namespace,
        {
            "app.kubernetes.io/name": "kuberay-operator",
            "app.kubernetes.io/instance": "kuberay-operator",
            "app.kubernetes.io/component": "kuberay-operator",
        },
        ip="10.244.3.4",
    )


def outside_pods(values: dict, operator_ns: str) -> dict:
    return {
        "operator": operator_pod(operator_ns),
        "prometheus": Pod(
            "prometheus-0",
            values["networkPolicy"]["monitoringNamespace"],
            {"app.kubernetes.io/name": "prometheus", "prometheus": "kube-prometheus-stack-prometheus"},
            ip="10.244.4.5",
        ),
        "ingress-controller": Pod(
            "ingress-nginx-controller",
            "ingress-nginx",
            {"app.kubernetes.io/name": "ingress-nginx", "app.kubernetes.io/component": "controller"},
            ip="10.244.5.6",
        ),
        # Pods that have no business with the release: one beside it, one of another tenant.
        "neighbour": Pod("debug-shell", NS, {"run": "debug-shell"}, ip="10.244.6.7"),
        "tenant": Pod("app", "tenant-b", {"app.kubernetes.io/name": "app"}, ip="10.244.7.8"),
        "api-server": Host("kube-apiserver", "172.18.0.2"),
        "internet": Host("a browser outside the cluster", "203.0.113.7"),
        "model-host": Host("models.example.com", "198.51.100.20"),
        "redis": Host("redis.example.com", "198.51.100.30"),
    }


NAMESPACES = {NS: {}, "kuberay-system": {}, "default": {}, "monitoring": {}, "ingress-nginx": {}, "tenant-b": {}}

# --- the flow table --------------------------------------------------------------------------------


@dataclass
class Flow:
    src: str
    dst: str
    # a number, or the name of the destination container's port
    port: int | str
    why: str
    when: Callable[[dict], bool] = lambda v: True


def monitoring(v):
    return v["monitoring"]["enabled"]


def monitoring_and_training(v):
    return v["monitoring"]["enabled"] and v["training"]["enabled"]


def webapp_open(v):
    return not v["networkPolicy"]["webappFrom"]


def models(v):
    return bool(v["models"])


def gcs_ft(v):
    return v["ray"]["gcsFaultTolerance"]["enabled"]


def training(v):
    return v["training"]["enabled"]


RAY_PODS = ("head", "ray-cpu")
# Ports Ray picks at random (raylet, object manager, agents) and the worker port range.
RAY_RANDOM_PORTS = (33713, 45001, 10002, 19999)

NEEDED = [
    Flow("internet", "webapp", "http", "the one entry point (port-forward, Service, Ingress, Gateway)", webapp_open),
    Flow("tenant", "webapp", "http", "webappFrom empty: the web app takes every peer", webapp_open),
    Flow(
        "ingress-controller",
        "webapp",
        "http",
        "the Ingress controller named by networkPolicy.webappFrom",
        lambda v: not webapp_open(v),
    ),
    Flow("webapp", "backend", "http", "nginx proxies /backend/ (REST and the Socket.IO websocket)"),
    Flow("webapp", "head", "serve", "nginx proxies /serve/ to <release>-serve-svc, whose endpoints include the head"),
    Flow("webapp", "ray-cpu", "serve", "... and every Ray worker with a healthy Serve proxy"),
    Flow("worker", "backend", "http", "the run worker's Socket.IO connection"),
    Flow("trainer", "backend", "http", "the training worker's Socket.IO connection", training),
    Flow("operator", "head", "dashboard", "RayService controller: Serve config and status on the dashboard"),
    Flow("operator", "head", "serve", "RayService controller: the head's Serve proxy health (its serve label)"),
    Flow("prometheus", "head", "metrics", "PodMonitor: Ray metrics", monitoring),
    Flow("prometheus", "head", "as-metrics", "PodMonitor: autoscaler metrics", monitoring),
    Flow("prometheus", "head", "dash-metrics", "PodMonitor: dashboard metrics", monitoring),
    Flow("prometheus", "ray-cpu", "metrics", "PodMonitor: Ray metrics of the workers", monitoring),
    Flow("prometheus", "worker", "metrics", "PodMonitor: the run worker's metrics", monitoring),
    Flow("prometheus", "worker", "probe", "PodMonitor: the health probe sidecar", monitoring),
    Flow("prometheus", "trainer", "metrics", "PodMonitor: the training worker's metrics", monitoring_and_training),
    Flow("worker", "webapp", "http", "the health probe sidecar (in the worker Pods) GETs the web app", monitoring),
    Flow("worker", "backend", "http", "the health probe sidecar GETs the backend", monitoring),
    Flow("ray-cpu", "head", 6379, "a Ray worker joins and talks to the GCS"),
    Flow("head", "ray-cpu", 52365, "the dashboard reaches each node's agent"),
    *[
        Flow("ray-cpu", "head", p, "raylet, object manager, agents, workers (random ports, 10002-19999)")
        for p in RAY_RANDOM_PORTS
    ],
    *[Flow("head", "ray-cpu", p, "the same, from the head") for p in RAY_RANDOM_PORTS],
    Flow("head", "api-server", 443, "the autoscaler sidecar reads Pods and patches the RayCluster"),
    *[
        Flow(p, "model-host", 443, "init containers download `models`", models)
        for p in ("head", "ray-cpu", "worker", "webapp")
    ],
    Flow("trainer", "model-host", 443, "its init containers download the trainable `models`", training),
    Flow("head", "redis", 6379, "the GCS keeps the cluster's state in Redis (ray.gcsFaultTolerance)", gcs_ft),
    Flow("redis-cleanup", "redis", 6379, "KubeRay's cleanup Job deletes a deleted cluster's keys", gcs_ft),
]

UNNEEDED = [
    Flow("neighbour", "head", "dashboard", "the dashboard's job API runs code: nobody but the operator"),
    Flow("neighbour", "head", "gcs-server", "the GCS: Ray Pods only"),
    Flow("neighbour", "head", "client", "Ray Client: not used"),
    Flow("neighbour", "ray-cpu", "serve", "Serve behind the web app's back"),
    Flow("neighbour", "backend", "http", "the backend is the web app's and the worker's"),
    Flow("tenant", "head", "dashboard", "another tenant"),
    Flow("tenant", "backend", "http", "another tenant"),
    Flow("tenant", "head", "serve", "another tenant"),
    Flow("internet", "head", "dashboard", "outside the cluster"),
    Flow("webapp", "head", "dashboard", "the web app proxies Serve, not the dashboard"),
    Flow("webapp", "head", "gcs-server", "the web app is no Ray node"),
    Flow("worker", "head", "serve", "the run worker runs its models itself"),
    Flow("worker", "head", "dashboard", "the run worker needs no Ray"),
    Flow("backend", "head", "dashboard", "the backend needs no Ray"),
    Flow("backend", "worker", "metrics", "the backend scrapes nothing"),
    Flow("operator", "backend", "http", "the operator manages Ray only"),
    Flow("operator", "head", "gcs-server", "the operator talks HTTP to the dashboard and Serve only"),
    Flow("operator", "head", "client", "the operator uses no Ray Client"),
    Flow("operator", "ray-cpu", "serve", "the operator checks the head's Serve proxy only"),
    Flow("operator", "ray-cpu", 52365, "the kubelet probes the agents, not the operator"),
    Flow("prometheus", "backend", "http", "no metrics there: the probe sidecar covers it"),
    Flow("prometheus", "head", "dashboard", "Prometheus scrapes metrics ports only"),
    Flow("ingress-controller", "backend", "http", "the Ingress goes through the web app"),
    Flow("ingress-controller", "head", "serve", "the Ingress goes through the web app"),
    Flow("tenant", "webapp", "http", "webappFrom names who may", lambda v: not webapp_open(v)),
    Flow("api-server", "head", "dashboard", "the API server proxies only with --use-kubernetes-proxy"),
    Flow("operator", "redis-cleanup", "dashboard", "the cleanup Job is no head: it serves nothing"),
    Flow("neighbour", "trainer", "metrics", "the trainer connects out; Prometheus alone reaches it", training),
    Flow("tenant", "trainer", "metrics", "another tenant", training),
    Flow("webapp", "trainer", "metrics", "the web app talks to the backend and Serve only", training),
    Flow("backend", "trainer", "metrics", "the backend answers the trainer, never calls it", training),
    Flow("worker", "trainer", "metrics", "workers share runs through the backend only", training),
    Flow("head", "trainer", "metrics", "Ray has no business with the trainer", training),
    Flow("trainer", "head", "serve", "the trainer runs its models itself", training),
    Flow("trainer", "head", "dashboard", "the trainer needs no Ray", training),
    Flow("trainer", "head", "gcs-server", "the trainer is no Ray node", training),
    Flow("internet", "trainer", "metrics", "outside the cluster", training),
]


def port_number(pods, flow) -> int:
    if isinstance(flow.port, int):
        return flow.port
    dst = pods[flow.dst]
    assert isinstance(dst, Pod) and flow.port in dst.ports, f"{flow.dst} has no port named {flow.port!r}"
    return dst.ports[flow.port][0]


def network_and_pods(files=(), sets=(), operator_ns="kuberay-system"):
    values = values_of(files, sets)
    objects = render(*files, sets=tuple(sets))
    policies = [{**p, "metadata": {**p["metadata"], "namespace": NS}} for p in by_kind(objects, "NetworkPolicy")]
    pods = {**release_pods(objects), **outside_pods(values, operator_ns)}
    return values, Network(policies, NAMESPACES), pods


def check(values, network, pods) -> list[str]:
    wrong = []
    for flow in NEEDED:
        if flow.when(values):
            ok, why = network.allows(pods[flow.src], pods[flow.dst], port_number(pods, flow))
            if not ok:
                wrong.append(f"needed {flow.src} -> {flow.dst}:{flow.port} ({flow.why}) is denied: {why}")
    for flow in UNNEEDED:
        if flow.when(values):
            ok, why = network.allows(pods[flow.src], pods[flow.dst], port_number(pods, flow))
            if ok:
                wrong.append(f"unneeded {flow.src} -> {flow.dst}:{flow.port} ({flow.why}) is allowed: {why}")
    return wrong


ids = [p.name.removesuffix("-values.yaml") for p in CI_VALUES]


@pytest.mark.parametrize("operator_ns", OPERATOR_NAMESPACES)
@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_flow_table(values, operator_ns):
    wrong = check(*network_and_pods((values,), operator_ns=operator_ns))
    assert not wrong, "\n".join(wrong)


def test_kuberays_own_install_namespace_reaches_the_head():
    """KubeRay's install instructions put the operator in the current namespace (`helm install
    kuberay-operator kuberay/kuberay-operator`, no -n): its calls must reach the head."""
    _, network, pods = network_and_pods(operator_ns="default")
    for port in ("dashboard", "serve"):
        ok, why = network.allows(pods["operator"], pods["head"], pods["head"].ports[port][0])
        assert ok, f"operator in namespace default -> head {port}: {why}"


def test_a_pinned_operator_namespace_admits_that_namespace_only(tmp_path):
    """networkPolicy.kuberayOperator.namespace, when set, is the only namespace whose operator
    Pods reach the head; a Pod that copies the operator's labels elsewhere does not."""
    values = tmp_path / "pinned.yaml"
    values.write_text(yaml.safe_dump({"networkPolicy": {"kuberayOperator": {"namespace": "kuberay-system"}}}))
    _, network, pods = network_and_pods((values,), operator_ns="kuberay-system")
    impostor = operator_pod("tenant-b")
    for port in ("dashboard", "serve"):
        number = pods["head"].ports[port][0]
        assert network.allows(pods["operator"], pods["head"], number)[0], port
        assert not network.allows(impostor, pods["head"], number)[0], port
        assert not network.allows(operator_pod("default"), pods["head"], number)[0], port


def test_kubernetes_proxy_peers_are_admitted_like_the_operator(tmp_path):
    """With the operator's --use-kubernetes-proxy its calls come from the API server: the
    addresses given in extraFrom reach the head's dashboard and Serve ports, nothing else."""
    values = tmp_path / "proxy.yaml"
    cidr = {"ipBlock": {"cidr": "172.18.0.2/32"}}
    values.write_text(yaml.safe_dump({"networkPolicy": {"kuberayOperator": {"extraFrom": [cidr]}}}))
    v, network, pods = network_and_pods((values,))
    for port in ("dashboard", "serve"):
        ok, why = network.allows(pods["api-server"], pods["head"], pods["head"].ports[port][0])
        assert ok, why
    assert not network.allows(pods["api-server"], pods["head"], pods["head"].ports["gcs-server"][0])[0]
    assert not network.allows(pods["api-server"], pods["backend"], pods["backend"].ports["http"][0])[0]
    # The rest of the table holds, but for the flow the proxy needs.
    wrong = [w for w in check(v, network, pods) if "api-server -> head:dashboard" not in w]
    assert not wrong, "\n".join(wrong)


def test_the_trainer_with_monitoring():
    """The training set with monitoring: Prometheus scrapes the trainer, nobody else reaches it."""
    wrong = check(*network_and_pods((ci_values("training"), ci_values("monitoring"))))
    assert not wrong, "\n".join(wrong)


def test_every_flow_names_ports_the_pods_have():
    _, _, pods = network_and_pods((ci_values("monitoring"), ci_values("models"), ci_values("training")))
    for flow in NEEDED + UNNEEDED:
        port_number(pods, flow)
