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

from marcelle_torch.processes import free_port

MONITORING_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
NAMESPACE_MATCHER = re.compile(r'namespace=\\?"marcelle-torch\\?",?')


def unscoped(node):
    """The rendered rules/dashboards with the release-namespace matchers taken out again."""
    if isinstance(node, dict):
        return {k: unscoped(v) for k, v in node.items()}
    if isinstance(node, list):
        return [unscoped(v) for v in node]
    if isinstance(node, str):
        return NAMESPACE_MATCHER.sub("", node).replace("{}", "")
    return node


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
    # The same groups; only each expression is scoped to the release's namespace.
    assert unscoped(rule["spec"]["groups"]) == expected
    # Prometheus' own templating in annotations must come through untouched.
    text = json.dumps(rule["spec"]["groups"])
    if "{{" in json.dumps(expected):
        assert "{{" in text


def test_dashboards_as_sidecar_configmaps():
    files = sorted((CHART / "dashboards").glob("*.json"))
    assert files, "charts/marcelle-torch/dashboards/ has no dashboards"
    maps = [
        o
        for o in by_kind(render(ci_values("monitoring")), "ConfigMap")
        if o["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]
    assert len(maps) == len(files)
    for path in files:
        (cm,) = [m for m in maps if path.name in m["data"]]
        assert unscoped(json.loads(cm["data"][path.name])) == json.loads(path.read_text())
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
    assert probe["command"] == ["python", "-m", "marcelle_torch.probe"]
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
            "/" if port == 80 else f":{port}/"
        )
    assert probe["ports"] == [{"name": "probe", "containerPort": 9115}]
    for kind in ("livenessProbe", "readinessProbe"):
        check = probe[kind]
        assert check["httpGet"] == {"path": "/metrics", "port": "probe"}
        # /metrics waits up to the probe timeout; the kubelet must wait longer.
        assert check["timeoutSeconds"] > 3
    assert probe["resources"]["limits"] and probe["resources"]["requests"]
    assert probe["securityContext"] == worker["securityContext"]


def test_probe_values_are_followed():
    objects = render(
        ci_values("monitoring"), sets=("monitoring.probe.port=9200", "monitoring.probe.resources.limits.memory=99Mi")
    )
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
            assert f'probe_success{{target="{name}",url="{url}"}} 0.0' in response.text
            assert f'probe_http_status_code{{target="{name}",url="{url}"}} 0.0' in response.text
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- Queries scoped to the release's namespace --------------------------------------------
# The Prometheus Operator labels every PodMonitor target with `namespace` (its generated scrape
# config relabels __meta_kubernetes_namespace); the chart's rules and dashboards match on it, so
# that two releases in two namespaces do not answer for each other.
OUR_METRIC = re.compile(r"\b((?:ray|marcelle_torch|probe)_[A-Za-z0-9_]*)(\{[^}]*\})?")


def selectors(expr: str):
    return [(m.group(1), m.group(2) or "") for m in OUR_METRIC.finditer(expr)]


def test_every_rule_and_panel_query_is_scoped_to_the_namespace():
    objects = render(ci_values("monitoring"))
    exprs = [r["expr"] for g in one(objects, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    for cm in by_kind(objects, "ConfigMap"):
        if cm["metadata"]["labels"].get("grafana_dashboard") == "1":
            for text in cm["data"].values():
                dashboard = json.loads(text)
                panels = [q for p in dashboard["panels"] for q in [p, *p.get("panels", [])]]
                exprs += [t["expr"] for p in panels for t in p.get("targets", []) if "expr" in t]
    found = 0
    for expr in exprs:
        for metric, matchers in selectors(expr):
            assert 'namespace="marcelle-torch"' in matchers, f"{metric} in {expr!r} is not scoped"
            found += 1
    assert found >= 30


def promtool_test(
    tmp_path, groups, series: list[str], expected_alerts: list[dict], alert: str
) -> subprocess.CompletedProcess:
    import shutil

    promtool = shutil.which("promtool")
    if promtool is None:
        import pytest

        pytest.fail("promtool not found: sudo make system-deps (apt-get install prometheus)")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    (tmp_path / "test.yaml").write_text(
        yaml.safe_dump(
            {
                "rule_files": ["rules.yaml"],
                "evaluation_interval": "1m",
                "tests": [
                    {
                        "interval": "1m",
                        "input_series": [{"series": s, "values": "1x20"} for s in series],
                        "alert_rule_test": [{"eval_time": "10m", "alertname": alert, "exp_alerts": expected_alerts}],
                    }
                ],
            }
        )
    )
    return subprocess.run(
        [promtool, "test", "rules", str(tmp_path / "test.yaml")], capture_output=True, text=True, timeout=120
    )


def test_another_releases_worker_does_not_silence_this_releases_absent_alert(tmp_path):
    """Real Prometheus rule evaluation (promtool): release A's worker is gone, release B's
    (another namespace) is up. A's MarcelleTorchWorkerAbsent must still fire."""
    groups = one(render(ci_values("monitoring")), "PrometheusRule")["spec"]["groups"]
    other = ['marcelle_torch_worker_up{namespace="team-b", pod="mt-marcelle-torch-worker-1"}']
    fires = [
        {
            "exp_labels": {"severity": "critical", "component": "worker"},
            "exp_annotations": next(
                r["annotations"] for g in groups for r in g["rules"] if r.get("alert") == "MarcelleTorchWorkerAbsent"
            ),
        }
    ]
    result = promtool_test(tmp_path, groups, other, fires, "MarcelleTorchWorkerAbsent")
    assert result.returncode == 0, result.stdout + result.stderr
    # With its own worker up, it stays quiet.
    own = ['marcelle_torch_worker_up{namespace="marcelle-torch", pod="mt-marcelle-torch-worker-1"}']
    result = promtool_test(tmp_path, groups, own, [], "MarcelleTorchWorkerAbsent")
    assert result.returncode == 0, result.stdout + result.stderr
