"""Every shipped alert, evaluated by Prometheus' own rule engine (`promtool test rules`), both
ways: a situation where it must fire (with its labels and rendered annotations) and situations
where it must stay quiet. Each case runs against the rules as the chart renders them (each
query scoped to the release's namespace) and as the local stack loads them (rules/alerts.yaml).

Upstream facts the cases rely on (Ray 2.60.0, the venv's ray package):
- serve/_private/deployment_state.py: `serve_deployment_status` is exported for every
  deployment (6 = HEALTHY), and `serve_deployment_replica_healthy` is the deployment's count of
  healthy replicas (without high-cardinality tags): 0 when a deployment is scaled to zero on
  purpose (`min_replicas: 0`, the GPU default), which is why that alone must not page anyone.
- serve/_private/router.py: `serve_deployment_queued_queries{deployment, application}` counts
  requests waiting to be assigned to a replica (the proxy's router holds a request there while
  the deployment has none).
- serve/_private/request_ingress_metrics.py: `serve_num_http_requests{route, method,
  application, status_code}` (a counter: `_total` in Prometheus); serve/_private/http_util.py
  get_http_response_status: a request that timed out waiting is answered 408.
Ray prefixes every metric with `ray_`.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field

import pytest
import yaml
from k8s_tools import CHART, ci_values, one, render

NEEDS_HELM = True
NS = "marcelle-torch"


@dataclass
class Case:
    alert: str
    name: str
    # series (without the namespace label, added here) -> promtool's expanding notation
    series: dict[str, str]
    eval_time: str
    # the alerts expected firing (their own labels, without severity/component); [] = quiet
    fires: list[dict] = field(default_factory=list)
    # the expected annotations of the (single) firing alert, when it fires
    annotations: dict | None = None


def with_ns(series: str) -> str:
    name, _, rest = series.partition("{")
    return f'{name}{{namespace="{NS}"' + (f",{rest}" if rest and rest != "}" else "}")


ROUTER = {
    'ray_serve_deployment_status{application="marcelle-torch",deployment="Router"}': "6x40",
    'ray_serve_deployment_replica_healthy{application="marcelle-torch",deployment="Router"}': "1x40",
}
MODEL_STATUS = 'ray_serve_deployment_status{application="model-digits",deployment="model-digits"}'
MODEL_HEALTHY = 'ray_serve_deployment_replica_healthy{application="model-digits",deployment="model-digits"}'
MODEL_QUEUED = (
    'ray_serve_deployment_queued_queries{application="model-digits",deployment="model-digits",'
    'handle="h1",actor_id="proxy1"}'
)


def http(code: str, values: str, app: str = "model-digits") -> dict[str, str]:
    route = "/v1/models/digits:predict"
    return {
        f'ray_serve_num_http_requests_total{{application="{app}",route="{route}",method="POST",'
        f'status_code="{code}"}}': values
    }


NO_REPLICA_SUMMARY = "No healthy Ray Serve replica for model-digits"
NO_REPLICA = {"application": "model-digits", "deployment": "model-digits"}

CASES = [
    # --- Serve: 5xx ratio ---------------------------------------------------------------------
    Case(
        "MarcelleTorchServeErrorRatioHigh",
        "10% of 1 req/s fail with 500",
        {**http("200", "0+54x20"), **http("500", "0+6x20")},
        "15m",
        fires=[{"application": "model-digits"}],
        annotations={
            "summary": "Ray Serve application model-digits answers 10% of requests with 5xx",
        },
    ),
    Case(
        "MarcelleTorchServeErrorRatioHigh",
        "1% of requests fail",
        {**http("200", "0+594x20"), **http("500", "0+6x20")},
        "15m",
    ),
    Case(
        "MarcelleTorchServeErrorRatioHigh",
        "one failure while idle",
        {**http("200", "0+1x20"), **http("500", "0 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1")},
        "15m",
    ),
    # --- Serve: p99 latency ---------------------------------------------------------------------
    Case(
        "MarcelleTorchServeLatencyHigh",
        "every request takes 1-5 s",
        {
            'ray_serve_http_request_latency_ms_bucket{application="model-digits",le="100"}': "0+0x30",
            'ray_serve_http_request_latency_ms_bucket{application="model-digits",le="1000"}': "0+0x30",
            'ray_serve_http_request_latency_ms_bucket{application="model-digits",le="5000"}': "0+60x30",
            'ray_serve_http_request_latency_ms_bucket{application="model-digits",le="+Inf"}': "0+60x30",
            'ray_serve_http_request_latency_ms_count{application="model-digits"}': "0+60x30",
        },
        "20m",
        fires=[{"application": "model-digits"}],
    ),
    Case(
        "MarcelleTorchServeLatencyHigh",
        "every request under 100 ms",
        {
            'ray_serve_http_request_latency_ms_bucket{application="model-digits",le="100"}': "0+60x30",
            'ray_serve_http_request_latency_ms_bucket{application="model-digits",le="1000"}': "0+60x30",
            'ray_serve_http_request_latency_ms_bucket{application="model-digits",le="+Inf"}': "0+60x30",
            'ray_serve_http_request_latency_ms_count{application="model-digits"}': "0+60x30",
        },
        "20m",
    ),
    # --- Serve: no replica while requests wait or fail ---------------------------------------------
    Case(
        "MarcelleTorchServeNoHealthyReplica",
        "a model scaled to zero on purpose, idle",
        {**ROUTER, MODEL_STATUS: "6x40", MODEL_HEALTHY: "0x40", MODEL_QUEUED: "0x40"},
        "30m",
    ),
    Case(
        "MarcelleTorchServeNoHealthyReplica",
        "a model scaled to zero, never queried (no queue series at all)",
        {**ROUTER, MODEL_STATUS: "6x40", MODEL_HEALTHY: "0x40"},
        "30m",
    ),
    Case(
        "MarcelleTorchServeNoHealthyReplica",
        "requests wait for a model with no replica",
        {**ROUTER, MODEL_STATUS: "4x40", MODEL_HEALTHY: "0x40", MODEL_QUEUED: "3x40"},
        "10m",
        fires=[NO_REPLICA],
        annotations={"summary": NO_REPLICA_SUMMARY},
    ),
    Case(
        "MarcelleTorchServeNoHealthyReplica",
        "requests fail (timeouts) for a model with no replica, nothing queued at the scrape",
        {**ROUTER, MODEL_STATUS: "2x40", MODEL_HEALTHY: "0x40", MODEL_QUEUED: "0x40", **http("408", "0+5x40")},
        "10m",
        fires=[NO_REPLICA],
        annotations={"summary": NO_REPLICA_SUMMARY},
    ),
    Case(
        "MarcelleTorchServeNoHealthyReplica",
        "a cold start: requests wait one minute, then a replica serves",
        {
            **ROUTER,
            MODEL_STATUS: "6x5 4 4 6x33",
            MODEL_HEALTHY: "0x6 1x33",
            MODEL_QUEUED: "0x5 2 2 0x33",
        },
        "10m",
    ),
    Case(
        "MarcelleTorchServeNoHealthyReplica",
        "requests queue at healthy replicas (load, not an outage)",
        {**ROUTER, MODEL_STATUS: "6x40", MODEL_HEALTHY: "2x40", MODEL_QUEUED: "40x40", **http("503", "0+5x40")},
        "10m",
    ),
    Case(
        "MarcelleTorchServeNoHealthyReplica",
        "no Serve metric at all (Ray down or not scraped)",
        {'up{job="other"}': "1x40"},
        "10m",
        fires=[{}],
        annotations={"summary": "No healthy Ray Serve replica"},
    ),
    # --- Runs ------------------------------------------------------------------------------------
    Case(
        "MarcelleTorchRunsStalled",
        "runs pending, none finished for 20 minutes",
        {
            'marcelle_torch_worker_pending_runs{pod="w1"}': "3x40",
            'marcelle_torch_worker_runs_total{pod="w1",status="succeeded"}': "7x40",
        },
        "25m",
        fires=[{}],
        annotations={"summary": "3 runs pending and none finished in 10 minutes"},
    ),
    Case(
        "MarcelleTorchRunsStalled",
        "runs pending and finishing",
        {
            'marcelle_torch_worker_pending_runs{pod="w1"}': "3x40",
            'marcelle_torch_worker_runs_total{pod="w1",status="succeeded"}': "0+2x40",
        },
        "25m",
    ),
    Case(
        "MarcelleTorchWorkerAbsent",
        "the worker is up but cut off from the backend",
        {'marcelle_torch_worker_up{pod="w1"}': "0x20"},
        "10m",
        fires=[{}],
        annotations={"summary": "No run worker is connected to the Marcelle backend"},
    ),
    Case(
        "MarcelleTorchWorkerAbsent",
        "one worker connected",
        {'marcelle_torch_worker_up{pod="w1"}': "1x20", 'marcelle_torch_worker_up{pod="w2"}': "0x20"},
        "10m",
    ),
    # --- Health probe ----------------------------------------------------------------------------
    Case(
        "MarcelleTorchComponentDown",
        "the backend does not answer",
        {
            'probe_success{target="backend",url="http://b/"}': "0x20",
            'probe_success{target="webapp",url="http://w/"}': "1x20",
        },
        "10m",
        fires=[{"target": "backend", "component": "backend"}],
        annotations={"summary": "marcelle-torch backend does not answer its health probe"},
    ),
    Case(
        "MarcelleTorchComponentDown",
        "both answer",
        {
            'probe_success{target="backend",url="http://b/"}': "1x20",
            'probe_success{target="webapp",url="http://w/"}': "1x20",
        },
        "10m",
    ),
]


def shipped_rules() -> dict[str, dict]:
    return {
        r["alert"]: r
        for g in yaml.safe_load((CHART / "rules" / "alerts.yaml").read_text())["groups"]
        for r in g["rules"]
    }


def rule_sources() -> dict[str, list]:
    rendered = one(render(ci_values("monitoring")), "PrometheusRule")["spec"]["groups"]
    return {"chart": rendered, "local": yaml.safe_load((CHART / "rules" / "alerts.yaml").read_text())["groups"]}


def promtool_run(tmp_path, groups: list, case: Case) -> subprocess.CompletedProcess:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: sudo make system-deps (apt-get install prometheus)")
    rule = shipped_rules()[case.alert]
    expected = []
    for labels in case.fires:
        # promtool compares every annotation: the rules keep only those the case names.
        expected.append({"exp_labels": {**rule["labels"], **labels}, "exp_annotations": case.annotations or {}})
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    test = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": with_ns(s), "values": v} for s, v in case.series.items()],
                "alert_rule_test": [{"eval_time": case.eval_time, "alertname": case.alert, "exp_alerts": expected}],
            }
        ],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(test, sort_keys=False))
    return subprocess.run(
        [promtool, "test", "rules", str(tmp_path / "test.yaml")], capture_output=True, text=True, timeout=120
    )


def keeping_annotations(groups: list, names) -> list:
    """The rules as shipped, each with only the annotations named."""
    return [
        {
            **group,
            "rules": [
                {**rule, "annotations": {k: v for k, v in rule.get("annotations", {}).items() if k in names}}
                for rule in group["rules"]
            ],
        }
        for group in groups
    ]


@pytest.mark.parametrize("source", ["chart", "local"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c.alert.removeprefix('MarcelleTorch')}: {c.name}" for c in CASES])
def test_alert(case, source, tmp_path):
    groups = keeping_annotations(rule_sources()[source], case.annotations or {})
    result = promtool_run(tmp_path, groups, case)
    assert result.returncode == 0, f"{case.alert} ({source} rules), {case.name}:\n{result.stdout}{result.stderr}"


def test_every_shipped_alert_is_tested_both_ways():
    for alert in shipped_rules():
        cases = [c for c in CASES if c.alert == alert]
        assert any(c.fires for c in cases), f"{alert}: no case where it fires"
        assert any(not c.fires for c in cases), f"{alert}: no case where it stays quiet"
