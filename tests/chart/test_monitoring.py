"""Monitoring templates: KubeRay-style PodMonitors, the worker's PodMonitor, the PrometheusRule
(the same groups as rules/*.yaml) and Grafana dashboard ConfigMaps (dashboards/*.json)."""

from __future__ import annotations

import json

import yaml

from k8s_tools import CHART, by_kind, ci_values, one, render

MONITORING_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}


def test_off_by_default():
    objects = render(ci_values("default"))
    assert not [o for o in objects if o["kind"] in MONITORING_KINDS]
    assert not [o for o in by_kind(objects, "ConfigMap") if "grafana_dashboard" in o["metadata"]["labels"]]


def test_ray_pod_monitors_follow_kuberay_conventions():
    objects = render(ci_values("monitoring"))
    head = one(objects, "PodMonitor", "-ray-head")
    workers = one(objects, "PodMonitor", "-ray-workers")
    assert head["spec"]["selector"]["matchLabels"]["ray.io/node-type"] == "head"
    assert workers["spec"]["selector"]["matchLabels"]["ray.io/node-type"] == "worker"
    assert [e["port"] for e in head["spec"]["podMetricsEndpoints"]] == ["metrics", "as-metrics", "dash-metrics"]
    assert [e["port"] for e in workers["spec"]["podMetricsEndpoints"]] == ["metrics"]
    for monitor in (head, workers):
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["marcelle-torch"]}
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            (relabel,) = endpoint["relabelings"]
            assert relabel["sourceLabels"] == ["__meta_kubernetes_pod_label_ray_io_cluster"]
            assert relabel["targetLabel"] == "ray_io_cluster"
    # The ports the monitors name exist on the Ray containers.
    cluster = one(objects, "RayService")["spec"]["rayClusterConfig"]
    head_ports = {p["name"] for p in cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {"metrics", "as-metrics", "dash-metrics"} <= head_ports
    for group in cluster["workerGroupSpecs"]:
        assert "metrics" in {p["name"] for p in group["template"]["spec"]["containers"][0]["ports"]}


def test_worker_metrics_are_scraped():
    objects = render(ci_values("monitoring"))
    monitor = one(objects, "PodMonitor", "-worker")
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    worker = one(objects, "Deployment", "-worker")
    assert monitor["spec"]["selector"]["matchLabels"] == worker["spec"]["selector"]["matchLabels"]


def test_prometheus_rule_embeds_every_rules_file():
    files = sorted((CHART / "rules").glob("*.yaml"))
    assert files, "charts/marcelle-torch/rules/ has no rule files"
    expected = [g for f in files for g in yaml.safe_load(f.read_text())["groups"]]
    rule = one(render(ci_values("monitoring")), "PrometheusRule")
    assert rule["spec"]["groups"] == expected
    # Prometheus' own templating in annotations must come through untouched.
    text = json.dumps(rule["spec"]["groups"])
    if "{{" in json.dumps(expected):
        assert "{{" in text


def test_dashboards_as_sidecar_configmaps():
    files = sorted((CHART / "dashboards").glob("*.json"))
    assert files, "charts/marcelle-torch/dashboards/ has no dashboards"
    maps = [o for o in by_kind(render(ci_values("monitoring")), "ConfigMap")
            if o["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert len(maps) == len(files)
    for path in files:
        (cm,) = [m for m in maps if path.name in m["data"]]
        assert json.loads(cm["data"][path.name]) == json.loads(path.read_text())
        assert cm["metadata"]["annotations"]["grafana_folder"] == "marcelle-torch"
