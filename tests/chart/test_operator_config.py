"""operator-config/ and k8s/: pinned versions agree with each other and with the chart; the
GPU pool examples, the kind config and the demo script match what the chart expects."""

from __future__ import annotations

import os
import subprocess

import yaml
from k8s_tools import CHART, REPO, find_tool

NEEDS_HELM = False
OPS = REPO / "operator-config"


def versions() -> dict[str, str]:
    out = {}
    for line in (OPS / "versions.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def chart_values():
    return yaml.safe_load((CHART / "values.yaml").read_text())


def test_kuberay_pin_is_one_version_everywhere():
    version = versions()["KUBERAY_OPERATOR_CHART_VERSION"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["annotations"]["marcelle-torch/kuberay-operator-version"] == version
    assert yaml.safe_load((OPS / "kuberay-operator-values.yaml").read_text())["image"]["tag"] == f"v{version}"
    assert '--version "$KUBERAY_OPERATOR_CHART_VERSION"' in (OPS / "README.md").read_text()


def test_every_pin_is_exact():
    for key, value in versions().items():
        if key.endswith("_VERSION"):
            assert value and value[0].isdigit() or value.startswith("v"), f"{key}={value}"
            assert "latest" not in value and "*" not in value and "^" not in value, f"{key}={value}"


def test_prometheus_stack_picks_up_the_charts_monitors_and_dashboards():
    stack = yaml.safe_load((OPS / "kube-prometheus-stack-values.yaml").read_text())
    monitoring = chart_values()["monitoring"]
    sidecar = stack["grafana"]["sidecar"]["dashboards"]
    assert sidecar["enabled"] is True
    assert sidecar["label"] == monitoring["dashboardLabel"] == "grafana_dashboard"
    assert sidecar["labelValue"] == "1"
    assert sidecar["folderAnnotation"] == "grafana_folder"
    # The README installs the stack under the release name the chart's monitors are labelled with.
    assert monitoring["labels"]["release"] == "kube-prometheus-stack"
    assert "helm upgrade --install kube-prometheus-stack " in (OPS / "README.md").read_text()
    assert stack["prometheus"]["prometheusSpec"]["podMonitorSelectorNilUsesHelmValues"] is False


def gpu_pool_label_and_taint():
    gpu = chart_values()["gpu"]
    ((label, value),) = gpu["nodeSelector"].items()
    (toleration,) = gpu["tolerations"]
    return label, value, toleration


def test_gpu_pool_examples_match_the_chart():
    label, value, toleration = gpu_pool_label_and_taint()
    docs = [d for d in yaml.safe_load_all((REPO / "k8s" / "gpu-nodepool-examples.yaml").read_text()) if d]
    eks = next(d for d in docs if d["kind"] == "ClusterConfig")["managedNodeGroups"][0]
    assert eks["labels"][label] == value and eks["minSize"] == 0
    assert any(t["key"] == toleration["key"] and t["effect"] == toleration["effect"] for t in eks["taints"])
    karpenter = next(d for d in docs if d["kind"] == "NodePool")["spec"]["template"]
    assert karpenter["metadata"]["labels"][label] == value
    assert any(t["key"] == toleration["key"] for t in karpenter["spec"]["taints"])
    text = (REPO / "k8s" / "gpu-nodepool-examples.yaml").read_text()
    assert f"--node-labels {label}={value}" in text and f"--node-taints {toleration['key']}=present:NoSchedule" in text
    for name in ("nvidia-device-plugin-values.yaml", "gpu-operator-values.yaml"):
        plugin = yaml.safe_load((OPS / name).read_text())
        tolerations = plugin.get("tolerations") or plugin["daemonsets"]["tolerations"]
        assert toleration in tolerations, name


def test_kind_config_uses_the_pinned_node_image():
    config = yaml.safe_load((REPO / "k8s" / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    images = {n["image"] for n in config["nodes"]}
    assert images == {versions()["KIND_NODE_IMAGE"]}
    assert any(n["role"] == "worker" for n in config["nodes"])


def test_demo_script_parses_and_fails_clearly_without_a_cluster(tmp_path):
    script = REPO / "k8s" / "demo.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    env = dict(os.environ, KUBECONFIG=str(tmp_path / "missing-kubeconfig"), PATH=os.environ["PATH"])
    if find_tool("kubectl") is None:
        return
    result = subprocess.run([str(script), "nowhere", "demo"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("demo.sh: error: no Service demo-marcelle-torch-webapp")


# NVIDIA/k8s-device-plugin v0.18.0, deployments/helm/nvidia-device-plugin/values.yaml: the
# default `affinity` (rendered as is by templates/daemonset-device-plugin.yml, next to
# `nodeSelector`) requires one of these node labels. NFD would set the first two, but the chart
# installs NFD only with `nfd.enabled` or `gfd.enabled` (Chart.yaml dependency condition), both
# false by default.
DEVICE_PLUGIN_DEFAULT_AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {
                    "matchExpressions": [
                        {"key": "feature.node.kubernetes.io/pci-10de.present", "operator": "In", "values": ["true"]}
                    ]
                },
                {
                    "matchExpressions": [
                        {
                            "key": "feature.node.kubernetes.io/cpu-model.vendor_id",
                            "operator": "In",
                            "values": ["NVIDIA"],
                        }
                    ]
                },
                {"matchExpressions": [{"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]}]},
            ]
        }
    }
}


def helm_merge(default, override):
    """Helm's values coalescing: maps merge key by key, null deletes, anything else replaces."""
    if isinstance(default, dict) and isinstance(override, dict):
        merged = dict(default)
        for key, value in override.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = helm_merge(default.get(key), value)
        return merged
    return override


def node_matches(labels: dict, node_selector: dict, affinity: dict | None) -> bool:
    if not node_selector.items() <= labels.items():
        return False
    terms = (
        (affinity or {})
        .get("nodeAffinity", {})
        .get("requiredDuringSchedulingIgnoredDuringExecution", {})
        .get("nodeSelectorTerms")
    )
    if not terms:
        return True

    def expression(e):
        assert e["operator"] in ("In", "Exists"), e
        return e["key"] in labels and (e["operator"] == "Exists" or labels[e["key"]] in e["values"])

    return any(all(expression(e) for e in term.get("matchExpressions", [])) for term in terms)


def gpu_pool_node_labels() -> list[dict]:
    """The labels a GPU node gets from each example in k8s/gpu-nodepool-examples.yaml."""
    text = (REPO / "k8s" / "gpu-nodepool-examples.yaml").read_text()
    docs = [d for d in yaml.safe_load_all(text) if d]
    pools = [
        next(d for d in docs if d["kind"] == "ClusterConfig")["managedNodeGroups"][0]["labels"],
        next(d for d in docs if d["kind"] == "NodePool")["spec"]["template"]["metadata"]["labels"],
    ]
    import re

    for flags in re.findall(r"--(?:node-)?labels ([^\s\\]+)", text):
        pools.append(dict(pair.split("=", 1) for pair in flags.split(",")))
    assert len(pools) >= 4, pools
    return pools


def test_device_plugin_runs_on_the_gpu_pool_nodes():
    values = yaml.safe_load((OPS / "nvidia-device-plugin-values.yaml").read_text())
    affinity = helm_merge({"affinity": DEVICE_PLUGIN_DEFAULT_AFFINITY}, values).get("affinity")
    node_selector = values.get("nodeSelector") or {}
    for labels in gpu_pool_node_labels():
        assert node_matches(labels, node_selector, affinity), (
            f"a GPU pool node labelled {labels} gets no device plugin Pod (0.18.0's default affinity)"
        )
    # ... and not on CPU nodes.
    assert not node_matches({"kubernetes.io/os": "linux"}, node_selector, affinity)


def test_managed_offerings_that_ship_a_plugin_are_named():
    text = (OPS / "README.md").read_text()
    for offering in ("GKE", "AKS", "EKS"):
        assert offering in text.split("## 3. GPUs", 1)[1].split("## 4.", 1)[0], offering
