"""templates/networkpolicies.yaml: deny by default, open only what must talk."""

from __future__ import annotations

import pytest
from k8s_tools import by_kind, ci_values, one, render


def policies():
    return {
        p["metadata"]["name"].removeprefix("mt-marcelle-torch-"): p
        for p in by_kind(render(ci_values("default")), "NetworkPolicy")
    }


def peers(rule):
    """Peer names: a component, `ray` for KubeRay's Ray Pods (test_ray_labels.py), or a namespace."""

    def name(peer):
        labels = peer.get("podSelector", {}).get("matchLabels", {})
        if labels.get("ray.io/is-ray-node") == "yes":
            return "ray"
        return labels.get("app.kubernetes.io/component") or peer.get("namespaceSelector", {}).get(
            "matchLabels", {}
        ).get("kubernetes.io/metadata.name")

    return [name(p) for p in rule.get("from", [])]


def test_default_deny_covers_every_pod_of_the_release():
    deny = policies()["default-deny"]
    assert deny["spec"]["policyTypes"] == ["Ingress"] and "ingress" not in deny["spec"]
    # Not app.kubernetes.io/name: Ray Pods keep KubeRay's value of it (test_ray_labels.py).
    assert deny["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/part-of": "marcelle-torch",
        "app.kubernetes.io/instance": "mt",
    }
    # Every pod carries the release's selector labels, so the deny applies to all of them.
    from k8s_tools import pod_specs

    objects = render(ci_values("default"))
    for obj in by_kind(objects, "Deployment"):
        labels = obj["spec"]["template"]["metadata"]["labels"]
        assert labels.items() >= deny["spec"]["podSelector"]["matchLabels"].items()
    assert len(list(pod_specs(objects))) >= 5


def test_backend_only_from_webapp_and_worker():
    (rule,) = policies()["backend"]["spec"]["ingress"]
    assert sorted(peers(rule)) == ["webapp", "worker"]
    assert rule["ports"] == [{"port": 3030, "protocol": "TCP"}]


def test_ray_serve_only_from_webapp_operator_and_ray_itself():
    rules = policies()["ray"]["spec"]["ingress"]
    by_peer = {tuple(peers(r)): r for r in rules}
    assert ("ray",) in by_peer and "ports" not in by_peer[("ray",)]
    assert by_peer[("webapp",)]["ports"] == [{"port": 8000, "protocol": "TCP"}]
    assert {p["port"] for p in by_peer[("monitoring",)]["ports"]} == {8080, 44217, 44227}
    assert len(rules) == 3


def test_the_operator_reaches_the_head_only_by_its_pod_labels():
    """KubeRay's operator, wherever it runs (test_network_flows.py evaluates the flows)."""
    head = policies()["ray-head"]["spec"]
    assert head["podSelector"]["matchLabels"]["ray.io/node-type"] == "head"
    (rule,) = head["ingress"]
    (peer,) = rule["from"]
    assert peer == {
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}},
        "namespaceSelector": {},
    }
    assert {p["port"] for p in rule["ports"]} == {8265, 8000}
    pinned = one(render(sets=("networkPolicy.kuberayOperator.namespace=kuberay-system",)), "NetworkPolicy", "-ray-head")
    (peer,) = pinned["spec"]["ingress"][0]["from"]
    assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "kuberay-system"}}


@pytest.mark.parametrize(
    "sets,message",
    [
        (("networkPolicy.kuberayOperator.namespace=Kuberay_System",), "at '/networkPolicy/kuberayOperator/namespace'"),
        (("networkPolicy.kuberayOperator.podLabels=null",), "at '/networkPolicy/kuberayOperator"),
        (
            ("networkPolicy.kuberayOperatorNamespace=kuberay-system",),
            "additional properties 'kuberayOperatorNamespace'",
        ),
    ],
)
def test_operator_values_are_checked(sets, message):
    from k8s_tools import render_text

    result = render_text(sets=sets, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_worker_takes_only_metrics_scrapes():
    (rule,) = policies()["worker"]["spec"]["ingress"]
    assert peers(rule) == ["monitoring"] and rule["ports"] == [{"port": 9100, "protocol": "TCP"}]


def test_webapp_peers_can_be_restricted():
    webapp = one(render(ci_values("ingress")), "NetworkPolicy", "-webapp")
    assert peers(webapp["spec"]["ingress"][0]) == ["ingress-nginx"]


def test_can_be_turned_off():
    assert not by_kind(render(sets=("networkPolicy.enabled=false",)), "NetworkPolicy")


def test_monitoring_opens_the_health_probe():
    objects = render(ci_values("monitoring"), ci_values("ingress"))
    named = {p["metadata"]["name"].removeprefix("mt-marcelle-torch-"): p for p in by_kind(objects, "NetworkPolicy")}
    # Prometheus scrapes the probe next to the worker's own metrics.
    (rule,) = named["worker"]["spec"]["ingress"]
    assert peers(rule) == ["monitoring"]
    assert rule["ports"] == [{"port": 9100, "protocol": "TCP"}, {"port": 9115, "protocol": "TCP"}]
    # The probe (in the worker Pods) reaches the backend, and the web app even when its peers are restricted.
    (backend,) = named["backend"]["spec"]["ingress"]
    assert "worker" in peers(backend) and backend["ports"] == [{"port": 3030, "protocol": "TCP"}]
    (webapp,) = named["webapp"]["spec"]["ingress"]
    assert peers(webapp) == ["ingress-nginx", "worker"]
    assert webapp["ports"] == [{"port": 8080, "protocol": "TCP"}]
    # Only ingress is restricted: nothing blocks the probe's egress.
    assert all(p["spec"]["policyTypes"] == ["Ingress"] for p in named.values())


def test_webapp_stays_restricted_without_monitoring():
    webapp = one(render(ci_values("ingress")), "NetworkPolicy", "-webapp")
    assert peers(webapp["spec"]["ingress"][0]) == ["ingress-nginx"]
    worker = one(render(ci_values("ingress")), "NetworkPolicy", "-worker")
    assert worker["spec"]["ingress"][0]["ports"] == [{"port": 9100, "protocol": "TCP"}]


def container_ports(objects):
    """{(pod labels, port number)} of every container port of the release's Deployments."""
    found = []
    for deployment in by_kind(objects, "Deployment"):
        spec = deployment["spec"]["template"]
        for c in spec["spec"]["containers"]:
            for port in c.get("ports", []):
                found.append((spec["metadata"]["labels"], port["containerPort"]))
    return found


def test_ports_are_numbers_that_the_selected_pods_listen_on():
    """Numeric ports: a named port is resolved per Pod, and some network plugins do not support
    named ports in policies at all; a number is read the same by every implementation."""
    objects = render(ci_values("monitoring"), ci_values("ingress"))
    listening = container_ports(objects)
    for policy in by_kind(objects, "NetworkPolicy"):
        selector = policy["spec"]["podSelector"]["matchLabels"]
        for rule in policy["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                assert isinstance(port["port"], int), f"{policy['metadata']['name']}: port {port['port']!r}"
                if selector.get("app.kubernetes.io/component") in ("webapp", "backend", "worker"):
                    assert any(
                        selector.items() <= labels.items() and number == port["port"] for labels, number in listening
                    ), (policy["metadata"]["name"], port)


def test_ports_follow_values():
    objects = render(sets=("backend.port=4000", "webapp.port=9090", "worker.metricsPort=9200"))
    named = {p["metadata"]["name"].removeprefix("mt-marcelle-torch-"): p for p in by_kind(objects, "NetworkPolicy")}
    assert named["backend"]["spec"]["ingress"][0]["ports"] == [{"port": 4000, "protocol": "TCP"}]
    assert named["webapp"]["spec"]["ingress"][0]["ports"] == [{"port": 9090, "protocol": "TCP"}]
    assert named["worker"]["spec"]["ingress"][0]["ports"] == [{"port": 9200, "protocol": "TCP"}]


@pytest.mark.parametrize("operator_ns", [None, "ray-operators"])
def test_kind_demo_admits_the_namespace_it_installs_the_operator_in(operator_ns):
    """`make kind-demo` (k8s/kind-demo.sh) installs the operator in one namespace and pins the
    chart's networkPolicy.kuberayOperator.namespace to that same one; the NOTES then name it."""
    import os
    import shlex
    import subprocess

    from k8s_tools import REPO

    env = {k: v for k, v in os.environ.items() if k not in ("OPERATOR_NAMESPACE", "NAMESPACE", "RELEASE")}
    env.update(PATH="/usr/bin:/bin", DRY_RUN="1", SKIP_BUILD="1")
    if operator_ns:
        env["OPERATOR_NAMESPACE"] = operator_ns
    result = subprocess.run([str(REPO / "k8s" / "kind-demo.sh")], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    plan = [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]
    installs = [c for c in plan if "upgrade" in c and "--install" in c]
    operator = next(c for c in installs if "kuberay-operator" in c)
    chart = next(c for c in installs if str(REPO / "charts" / "marcelle-torch") in c)
    namespace = operator[operator.index("--namespace") + 1]
    assert namespace == (operator_ns or "kuberay-system")
    sets = [chart[i + 1] for i, arg in enumerate(chart) if arg == "--set"]
    assert f"networkPolicy.kuberayOperator.namespace={namespace}" in sets
    from test_notes import notes

    assert f"in namespace {namespace}" in notes(f"networkPolicy.kuberayOperator.namespace={namespace}")
