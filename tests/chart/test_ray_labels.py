"""Ray Pod labels: the chart must leave KubeRay's own labels alone, and select Ray Pods
(NetworkPolicies, PodMonitors) by labels KubeRay really puts on them.

Upstream facts encoded here (ray-project/kuberay v1.7.0):
- ray-operator/controllers/ray/common/pod.go, `labelPod`: a Ray Pod's labels are KubeRay's
  defaults overridden by the template's labels, except ray.io/node-type, ray.io/group and
  ray.io/cluster; `DefaultHeadPodTemplate` passes group `headgroup`
  (utils/constant.go RayNodeHeadGroupLabelValue).
- ray-operator/controllers/ray/common/service.go, `BuildHeadServiceForRayService` calls
  `BuildServiceForHeadPod(ctx, rayCluster, nil, nil)`, whose selector is `HeadServiceLabels`
  with KubeRay's default values (kuberay#2648): a template label that overrides one of them
  leaves `<rayservice>-head-svc` without endpoints.
- utils/constant.go: the label keys and the values `kuberay` / `kuberay-operator`;
  utils/util.go `GenerateIdentifier` (`<cluster>-<node type>`) and `CheckLabel` (63 chars).
- The RayCluster a RayService creates is named `<rayservice>-<random suffix>`
  (rayservice_controller.go), so ray.io/cluster cannot be known when the chart renders.
"""

from __future__ import annotations

import pytest
from k8s_tools import CI_VALUES, by_kind, ci_values, one, render

ids = [p.name.removesuffix("-values.yaml") for p in CI_VALUES]


def check_label(value: str) -> str:
    """utils.CheckLabel (v1.7.0): clipped from the front to 63 characters."""
    return value[len(value) - 63 :] if len(value) > 63 else value


def kuberay_default_labels(node_type: str, cluster: str, group: str) -> dict[str, str]:
    """pod.go labelPod's defaults (v1.7.0)."""
    return {
        "ray.io/is-ray-node": "yes",
        "ray.io/cluster": cluster,
        "ray.io/node-type": node_type,
        "ray.io/group": group,
        "ray.io/identifier": check_label(f"{cluster}-{node_type}"),
        "app.kubernetes.io/name": "kuberay",
        "app.kubernetes.io/created-by": "kuberay-operator",
    }


def label_pod(node_type: str, cluster: str, group: str, template_labels: dict[str, str]) -> dict[str, str]:
    """pod.go labelPod (v1.7.0): template labels override all but three keys."""
    labels = kuberay_default_labels(node_type, cluster, group)
    for key, value in template_labels.items():
        if key in ("ray.io/node-type", "ray.io/group", "ray.io/cluster"):
            continue
        labels[key] = value
    return labels


def head_service_selector(cluster: str) -> dict[str, str]:
    """service.go HeadServiceLabels (v1.7.0): the selector of BuildServiceForHeadPod(..., nil, nil)."""
    return {
        "ray.io/cluster": cluster,
        "ray.io/node-type": "head",
        "ray.io/identifier": check_label(f"{cluster}-head"),
        "app.kubernetes.io/name": "kuberay",
        "app.kubernetes.io/created-by": "kuberay-operator",
    }


def ray_pods(objects, cluster_suffix="x7k2p"):
    """The labels KubeRay gives the head and one Pod of each worker group."""
    ray = one(objects, "RayService")
    cluster = f"{ray['metadata']['name']}-{cluster_suffix}"
    spec = ray["spec"]["rayClusterConfig"]
    pods = {"head": label_pod("head", cluster, "headgroup", spec["headGroupSpec"]["template"]["metadata"]["labels"])}
    for group in spec.get("workerGroupSpecs", []):
        pods[group["groupName"]] = label_pod(
            "worker", cluster, group["groupName"], group["template"]["metadata"]["labels"]
        )
    return cluster, pods


def selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, selector
    return selector.get("matchLabels", {}).items() <= labels.items()


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_head_service_of_the_rayservice_selects_the_head_pod(values):
    cluster, pods = ray_pods(render(values))
    assert head_service_selector(cluster).items() <= pods["head"].items(), (
        "a Ray Pod template overrides a label of KubeRay's head Service selector: <release>-head-svc gets no endpoints"
    )


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_ray_templates_leave_kuberays_labels_alone(values):
    ray = one(render(values), "RayService")["spec"]["rayClusterConfig"]
    templates = [ray["headGroupSpec"]["template"]] + [g["template"] for g in ray.get("workerGroupSpecs", [])]
    defaults = set(kuberay_default_labels("head", "c", "g"))
    for template in templates:
        assert not defaults & set(template["metadata"]["labels"]), template["metadata"]["labels"]


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_network_policies_select_the_ray_pods(values):
    objects = render(values)
    _, pods = ray_pods(objects)
    policies = {p["metadata"]["name"].removeprefix("mt-marcelle-torch-"): p for p in by_kind(objects, "NetworkPolicy")}
    for name, labels in pods.items():
        assert selects(policies["default-deny"]["spec"]["podSelector"], labels), f"default deny misses the {name} Pod"
        assert selects(policies["ray"]["spec"]["podSelector"], labels), f"the Ray policy misses the {name} Pod"
        # Ray Pods reach each other (GCS, raylets, object transfer) through the peer rule.
        peer_rules = [r for r in policies["ray"]["spec"]["ingress"] if "ports" not in r]
        assert any(selects(p["podSelector"], labels) for r in peer_rules for p in r["from"] if "podSelector" in p), name
    # Nothing else of the release is a Ray peer.
    for deployment in by_kind(objects, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert not selects(policies["ray"]["spec"]["podSelector"], labels), deployment["metadata"]["name"]
        assert selects(policies["default-deny"]["spec"]["podSelector"], labels), deployment["metadata"]["name"]


def test_a_second_release_is_not_selected():
    import yaml
    from k8s_tools import render_text

    objects = render(ci_values("monitoring"))
    # Same namespace, another release: its Ray Pods carry another instance label.
    text = render_text(ci_values("monitoring"), release="other").stdout
    other = [d for d in yaml.safe_load_all(text) if d]
    _, other_pods = ray_pods(other)
    ray_policy = one(objects, "NetworkPolicy", "-ray")
    for labels in other_pods.values():
        assert not selects(ray_policy["spec"]["podSelector"], labels)
    for monitor in (one(objects, "PodMonitor", "-ray-head"), one(objects, "PodMonitor", "-ray-workers")):
        assert not any(selects(monitor["spec"]["selector"], labels) for labels in other_pods.values())


def test_pod_monitors_select_head_and_workers_by_kuberays_node_type():
    objects = render(ci_values("monitoring"), ci_values("gpu"))
    _, pods = ray_pods(objects)
    head = one(objects, "PodMonitor", "-ray-head")["spec"]["selector"]
    workers = one(objects, "PodMonitor", "-ray-workers")["spec"]["selector"]
    assert head["matchLabels"]["ray.io/node-type"] == "head"
    assert workers["matchLabels"]["ray.io/node-type"] == "worker"
    assert selects(head, pods["head"]) and not selects(workers, pods["head"])
    for group in ("cpu", "gpu"):
        assert selects(workers, pods[group]) and not selects(head, pods[group])
