"""Monitoring templates: KubeRay-style PodMonitors, the worker's PodMonitor, the PrometheusRule
(the same groups as rules/*.yaml), Grafana dashboard ConfigMaps (dashboards/*.json) and the
backend/web app health probe sidecar of the worker Pods."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import httpx
import yaml

from k8s_tools import CHART, by_kind, ci_values, one, render
from marcelle_torch.stack.processes import free_port

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


def containers(objects, name_suffix="-worker"):
    return {c["name"]: c for c in one(objects, "Deployment", name_suffix)["spec"]["template"]["spec"]["containers"]}


def probe_targets(args):
    """{name: url} from the probe's NAME=URL arguments."""
    return dict(a.split("=", 1) for a in args if not a.startswith("--") and "=" in a)


def expected_probe_targets():
    """The `target` names the dashboards and alert rules query probe_success for."""
    names = set()
    for path in [*(CHART / "dashboards").glob("*.json"), *(CHART / "rules").glob("*.yaml")]:
        for match in re.finditer(r'probe_success\{target=~?\\?"([^"\\]+)', path.read_text()):
            names.update(match.group(1).split("|"))
    return names


def test_no_probe_without_monitoring():
    assert set(containers(render(ci_values("default")))) == {"worker"}


def test_probe_sidecar_probes_backend_and_webapp_services():
    objects = render(ci_values("monitoring"))
    pod = containers(objects)
    probe, worker = pod["probe"], pod["worker"]
    assert probe["image"] == worker["image"]
    assert probe["command"] == ["python", "-m", "marcelle_torch.stack.monitoring", "probe"]
    args = probe["args"]
    assert args[args.index("--port") + 1] == "9115"
    assert args[args.index("--timeout") + 1] == "3"
    targets = probe_targets(args)
    assert targets == {
        "backend": "http://mt-marcelle-torch-backend.marcelle-torch.svc.cluster.local:3030/",
        "webapp": "http://mt-marcelle-torch-webapp.marcelle-torch.svc.cluster.local/",
    }
    # Exactly the targets the overview dashboard and the alert rules look for.
    assert set(targets) == expected_probe_targets() == {"backend", "webapp"}
    # The URLs name the chart's own Services on their ports.
    for component, url in targets.items():
        service = one(objects, "Service", f"-{component}")
        port = service["spec"]["ports"][0]["port"]
        assert url == f"http://{service['metadata']['name']}.marcelle-torch.svc.cluster.local" + (
            "/" if port == 80 else f":{port}/")
    assert probe["ports"] == [{"name": "probe", "containerPort": 9115}]
    for kind in ("livenessProbe", "readinessProbe"):
        check = probe[kind]
        assert check["httpGet"] == {"path": "/metrics", "port": "probe"}
        # /metrics waits up to the probe timeout; the kubelet must wait longer.
        assert check["timeoutSeconds"] > 3
    assert probe["resources"]["limits"] and probe["resources"]["requests"]
    assert probe["securityContext"] == worker["securityContext"]


def test_probe_values_are_followed():
    objects = render(ci_values("monitoring"), sets=("monitoring.probe.port=9200", "monitoring.probe.resources.limits.memory=99Mi"))
    probe = containers(objects)["probe"]
    assert probe["args"][probe["args"].index("--port") + 1] == "9200"
    assert probe["ports"] == [{"name": "probe", "containerPort": 9200}]
    assert probe["resources"]["limits"]["memory"] == "99Mi"


def test_probe_port_must_differ_from_worker_metrics():
    from k8s_tools import render_text

    result = render_text(ci_values("monitoring"), sets=("monitoring.probe.port=9100",), check=False)
    assert result.returncode != 0 and "monitoring.probe.port must differ" in result.stderr


def test_probe_is_scraped_by_the_worker_pod_monitor():
    objects = render(ci_values("monitoring"))
    monitor = one(objects, "PodMonitor", "-worker")
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics", "probe"]
    ports = {p["name"] for c in containers(objects).values() for p in c["ports"]}
    assert {"metrics", "probe"} <= ports


def test_rendered_probe_command_runs_and_exports_its_targets():
    """The container's command line, run for real (only the port changed): it parses and
    exports probe_success for both targets (0 here: the cluster names do not resolve)."""
    probe = containers(render(ci_values("monitoring")))["probe"]
    args = list(probe["args"])
    port = free_port()
    args[args.index("--port") + 1] = str(port)
    command = [sys.executable, *probe["command"][1:], *args, "--host", "127.0.0.1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"probe exited: {process.stdout.read()}"
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "probe did not start listening"
                time.sleep(0.5)
        assert response.status_code == 200
        for name, url in probe_targets(args).items():
            assert f'probe_success{{target="{name}",url="{url}"}} 0' in response.text
            assert f'probe_http_status_code{{target="{name}",url="{url}"}} 0' in response.text
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
