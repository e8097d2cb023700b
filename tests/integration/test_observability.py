"""Observability against real data: the shipped dashboards and alert rules, queried on a real
Prometheus that scrapes the real local stack (Ray Serve, Marcelle backend, run worker, web app).

The static checks (well-formed JSON/YAML, `promtool check rules`, the health probe) run without
the stack; the rest starts it once for the module with `marcelle-torch up`'s own launcher.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from marcelle_torch.probe import HealthProbe
from marcelle_torch.processes import free_port
from marcelle_torch.stack import monitoring

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "marcelle-torch"
DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
RULE_FILES = sorted((CHART / "rules").glob("*.yaml"))
DIST = ROOT / "services" / "frontend" / "dist"

# Panels whose data comes from NVIDIA's dcgm-exporter: empty on a CPU machine, but their
# queries must still parse.
NO_DATA_EXPECTED = {"GPU utilisation", "GPU memory used"}
TIMEOUT = 600.0


# --------------------------------------------------------------------------- helpers


def load_dashboard(path: Path) -> dict:
    return json.loads(path.read_text())


def alert_rules() -> list[dict]:
    rules = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules += [rule for rule in group["rules"] if "alert" in rule]
    return rules


def wait_for(what: str, check, timeout: float = TIMEOUT, every: float = 2.0):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


# --------------------------------------------------------------------------- static checks


def test_dashboards_are_well_formed():
    assert DASHBOARDS, f"no dashboards in {CHART / 'dashboards'}"
    uids = set()
    for path in DASHBOARDS:
        dashboard = load_dashboard(path)
        assert dashboard.get("uid") and dashboard["uid"] not in uids, f"{path.name}: missing or duplicate uid"
        uids.add(dashboard["uid"])
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables.get("datasource", {}).get("type") == "datasource", f"{path.name}: no $datasource variable"
        assert variables["datasource"]["query"] == "prometheus"
        ids = [p["id"] for p in monitoring.iter_panels(dashboard["panels"])]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in monitoring.iter_panels(dashboard["panels"]):
            if panel["type"] == "row":
                continue
            assert panel.get("targets"), f"{path.name}: panel {panel['title']!r} has no query"
            for owner in (panel, *panel["targets"]):
                assert owner["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, (
                    f"{path.name}: panel {panel['title']!r} does not use the $datasource variable"
                )
        assert monitoring.dashboard_queries(dashboard)  # every variable it uses is defined


def test_alert_rules_pass_promtool():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing (apt-get install prometheus, or `make system-deps`)")
    assert RULE_FILES, f"no rule files in {CHART / 'rules'}"
    result = subprocess.run([promtool, "check", "rules", *map(str, RULE_FILES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), f"duplicate alert names: {names}"
    for rule in rules:
        assert rule.get("for"), f"{rule['alert']}: no `for`"
        assert rule.get("labels", {}).get("severity") in {"warning", "critical"}, f"{rule['alert']}: severity"
        assert rule.get("annotations", {}).get("summary"), f"{rule['alert']}: no summary"
        assert rule["annotations"].get("description"), f"{rule['alert']}: no description"
        # Job names differ between the local Prometheus and the Prometheus Operator.
        assert "job=" not in rule["expr"].replace(" ", ""), f"{rule['alert']}: matches on job"


def test_generated_config_passes_promtool(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing (apt-get install prometheus, or `make system-deps`)")
    config = monitoring.render_config(
        {"ray": ["127.0.0.1:1"], "worker": ["127.0.0.1:2", "127.0.0.1:3"]}, monitoring.default_rule_files()
    )
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert config["rule_files"], "the chart's rule files were not found"


def test_health_probe_reports_live_and_dead_targets():
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(503 if self.path == "/broken" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    live = f"http://127.0.0.1:{server.server_address[1]}"
    dead_port = free_port()
    probe = HealthProbe(
        {"live": f"{live}/", "broken": f"{live}/broken", "dead": f"http://127.0.0.1:{dead_port}/"}, timeout=2.0
    )
    try:
        text = httpx.get(f"http://{probe.address}/metrics", timeout=10).text
    finally:
        probe.stop()
        server.shutdown()
        server.server_close()
    values = dict(re.findall(r'^probe_success\{target="(\w+)",[^}]*\} (\d)\.0$', text, re.M))
    assert values == {"live": "1", "broken": "0", "dead": "0"}, text
    assert re.search(r'^probe_http_status_code\{target="live",[^}]*\} 404\.0$', text, re.M), text


def test_down_alerts_fire_when_nothing_answers(tmp_path):
    """A real Prometheus with the shipped rules and nothing healthy to scrape: the stack-down
    alerts go pending, and the handle stops Prometheus and its probe."""
    if not monitoring.prometheus_available():
        pytest.fail("Prometheus is missing (apt-get install prometheus, or `make system-deps`)")
    dead = f"http://127.0.0.1:{free_port()}/"
    prom = monitoring.start_prometheus(
        {"ray": [f"127.0.0.1:{free_port()}"]}, tmp_path / "prom", health={"backend": dead, "webapp": dead}
    )
    try:
        expected = {
            ("MarcelleTorchComponentDown", "backend"),
            ("MarcelleTorchComponentDown", "webapp"),
            ("MarcelleTorchWorkerAbsent", None),
            ("MarcelleTorchServeNoHealthyReplica", None),
        }
        wait_for(
            "the down alerts",
            lambda: expected <= {(a["metric"]["alertname"], a["metric"].get("target")) for a in prom.query("ALERTS")},
            timeout=120,
        )
        # The rules can go pending before the ray target's first scrape (absent() needs none).
        scraped = wait_for("the ray target's first scrape", lambda: prom.query('up{job="ray"}'), timeout=60)
        assert scraped[0]["value"][1] == "0"
        with pytest.raises(monitoring.PrometheusError, match="parse error"):
            prom.query("sum(")
    finally:
        prom.stop()
    assert not prom.process.alive()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{prom.probe.address}/metrics", timeout=2)


# --------------------------------------------------------------------------- against the real stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from marcelle_torch.stack.up import StackOptions, start_stack

    if not monitoring.prometheus_available():
        pytest.fail("Prometheus is missing (apt-get install prometheus, or `make system-deps`)")
    if not (DIST / "index.html").is_file():
        pytest.fail(f"the web app is not built ({DIST}); run `make webapp`")
    options = StackOptions(
        workdir=tmp_path_factory.mktemp("stack"),
        webapp_port=0,
        serve_port=0,
        backend_port=0,
        prometheus_port=0,
        monitoring=True,
    )
    running = start_stack(options, say=print)
    try:
        assert "prometheus" in running.urls, "start_stack did not start Prometheus"
        yield running
    finally:
        running.stop(say=print)


def _digit_instance(digit: int) -> list:
    """A 128x128 drawing of an optdigits sample, dark ink on white, as a nested list."""
    import numpy as np
    from sklearn.datasets import load_digits

    data = load_digits()
    image = data.images[list(data.target).index(digit)] / 16.0
    big = np.kron(image, np.ones((16, 16)))
    return [(1.0 - big).round(3).tolist()]


@pytest.fixture(scope="module")
def traffic(stack):
    """Real traffic through the three paths, then wait until Prometheus has scraped it."""
    urls = stack.urls
    with httpx.Client(timeout=120) as client:
        # 1. Ray Serve: good predictions, a bad instance (400), an unknown model (404).
        ok = 0
        for digit in range(10):
            response = client.post(
                f"{urls['serve']}/v1/models/digits:predict", json={"instances": [_digit_instance(digit)]}
            )
            assert response.status_code == 200, response.text
            ok += 1
        for _ in range(3):
            bad = client.post(f"{urls['serve']}/v1/models/digits:predict", json={"instances": [[[0.0]]]})
            assert bad.status_code == 400, bad.text
        assert (
            client.post(f"{urls['serve']}/v1/models/no-such-model:predict", json={"instances": []}).status_code == 404
        )
        assert client.get(f"{urls['serve']}/v1/models/digits").status_code == 200

        # 2. ONNX in the browser: the bundle is a static file of the web app.
        bundle = client.get(f"{urls['webapp']}/onnx/digits/model.onnx")
        assert bundle.status_code == 200 and len(bundle.content) > 1000

        # 3. A run through the Marcelle backend, claimed and finished by the worker, and one
        #    the worker must reject.
        runs = f"{urls['backend']}/runs"
        good = client.post(
            runs,
            json={
                "model": "digits-generator",
                "input": {"digit": 3},
                "params": {"steps": 10, "seed": 0},
            },
        ).json()
        wrong = client.post(runs, json={"model": "digits-generator", "input": {"digit": 42}, "params": {}}).json()
        for run, expected in ((good, "succeeded"), (wrong, "failed")):
            final = wait_for(
                f"run {run['_id']} to finish",
                lambda run=run: (
                    doc
                    if (doc := client.get(f"{runs}/{run['_id']}").json())["status"]
                    in {"succeeded", "failed", "canceled"}
                    else None
                ),
            )
            assert final["status"] == expected, final

    prom = urls["prometheus"]

    def scraped(expr):
        return lambda: monitoring.query(prom, expr)

    # Wait until the last of each kind of traffic is visible, then for two more scrapes so
    # that rate() has two samples of every new series.
    wait_for(
        "Serve predictions in Prometheus",
        scraped(f'sum(ray_marcelle_torch_predictions_total{{model="digits",outcome="ok"}}) >= {ok}'),
    )
    wait_for("Serve 4xx in Prometheus", scraped("sum(ray_serve_num_http_error_requests_total) >= 4"))
    wait_for("finished runs in Prometheus", scraped("sum(marcelle_torch_worker_runs_total) >= 2"))
    wait_for("health probes in Prometheus", scraped("count(probe_success == 1) >= 2"))
    time.sleep(6)
    return prom


@pytest.mark.ray
@pytest.mark.backend
def test_every_dashboard_query_runs_on_real_data(traffic):
    failures = []
    checked = 0
    for path in DASHBOARDS:
        for title, _, expr in monitoring.dashboard_queries(load_dashboard(path)):
            checked += 1
            try:
                result = monitoring.query(traffic, expr)
            except monitoring.PrometheusError as exc:
                failures.append(f"{path.name} / {title!r}: {exc}\n    {expr}")
                continue
            if title not in NO_DATA_EXPECTED and not result:
                failures.append(f"{path.name} / {title!r}: no data\n    {expr}")
    assert checked > 0
    assert not failures, f"{len(failures)} of {checked} panel queries failed:\n" + "\n".join(failures)


@pytest.mark.ray
@pytest.mark.backend
def test_alert_rules_load_and_evaluate(traffic):
    failures = []
    for rule in alert_rules():
        try:
            monitoring.query(traffic, rule["expr"])
        except monitoring.PrometheusError as exc:
            failures.append(f"{rule['alert']}: {exc}")
    assert not failures, "\n".join(failures)
    # Prometheus loaded the same files and evaluates every rule without error.
    groups = httpx.get(f"{traffic}/api/v1/rules", timeout=30).json()["data"]["groups"]
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(loaded) >= {rule["alert"] for rule in alert_rules()}
    wait_for(
        "every rule to be evaluated",
        lambda: all(
            rule.get("health") == "ok"
            for group in httpx.get(f"{traffic}/api/v1/rules", timeout=30).json()["data"]["groups"]
            for rule in group["rules"]
        ),
        timeout=60,
    )


@pytest.mark.ray
@pytest.mark.backend
def test_healthy_stack_fires_no_critical_alert(traffic):
    """With everything up, the stack-down alerts must not even be pending."""
    alerts = monitoring.query(traffic, 'ALERTS{severity="critical"}')
    assert not alerts, [a["metric"] for a in alerts]
