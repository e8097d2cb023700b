"""A worker SIGKILLed while it holds a run, with a second worker beside it: the run is finished
exactly once, by the survivor, within the lease timeout plus one run's time; the killed
worker's metrics disappear from a real Prometheus, and the shipped alert for an absent worker
fires once no worker is left.

Real backend, two real workers (the ``steady`` user model: a run that lasts as long as asked),
Debian's Prometheus scraping both workers' metrics and evaluating the chart's rule.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import yaml
from faults import FINAL, STEADY, STEADY_ENV, RunEvents, claims, completions, record

from marcelle_torch.processes import free_port
from marcelle_torch.stack import monitoring

pytestmark = pytest.mark.backend

ALERTS = Path(__file__).resolve().parents[2] / "charts" / "marcelle-torch" / "rules" / "alerts.yaml"
HEARTBEAT, LEASE = 0.5, 3.0
RUN_S = 4.0
# The machine is shared: whatever it is doing, recovery must stay within this much of
# lease + one run (the guarantee); a run requeued late, or twice, goes far past it.
SLACK_S = 20.0


def absent_worker_rule(for_: str) -> dict:
    """The chart's MarcelleTorchWorkerAbsent rule as shipped, with a shorter ``for`` (the test
    cannot wait the shipped 2 minutes; the expression is what is under test)."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    rule = next(r for g in groups for r in g["rules"] if r.get("alert") == "MarcelleTorchWorkerAbsent")
    return {"groups": [{"name": "under-test", "rules": [{**rule, "for": for_}]}]}


def test_a_killed_workers_run_completes_exactly_once_and_the_absent_worker_alert_fires(
    make_backend, make_worker, wait_until, tmp_path
):
    if not monitoring.prometheus_available():
        pytest.fail("Prometheus is missing (apt-get install prometheus, or `make system-deps`)")
    backend = make_backend()
    events = RunEvents(backend.url)
    ports = {name: free_port() for name in ("alpha", "beta")}
    rules = tmp_path / "absent.yaml"
    rules.write_text(yaml.safe_dump(absent_worker_rule("3s")))
    prom = monitoring.start_prometheus(
        {"worker": [f"127.0.0.1:{p}" for p in ports.values()]},
        tmp_path / "prom",
        rule_files=[rules],
        scrape_interval="1s",
    )
    try:
        workers = {
            name: make_worker(
                backend.url,
                name,
                *STEADY,
                "--heartbeat",
                str(HEARTBEAT),
                "--lease-timeout",
                str(LEASE),
                metrics_port=port,
                env=STEADY_ENV,
            )
            for name, port in ports.items()
        }
        wait_until(lambda: prom.query("sum(marcelle_torch_worker_up) == 2"), 60, "both workers up in Prometheus")

        client = events.client
        runs = [
            client.create("runs", {"model": "steady", "input": [i], "params": {"seconds": RUN_S}}) for i in range(2)
        ]
        ids = [r["_id"] for r in runs]

        def holders():
            docs = [client.get("runs", i) for i in ids]
            if all(d["status"] == "running" and d["progress"] > 0.2 for d in docs):
                return docs

        docs = wait_until(holders, 60, "both workers to be running a run")
        target = docs[0]
        victim = next(n for n in workers if target["worker"].startswith(f"{n}-"))
        survivor = next(n for n in workers if n != victim)

        workers[victim].signal(signal.SIGKILL)
        killed_at = time.monotonic()
        workers[victim].proc.wait(30)

        # The dead worker's series go stale at once (its scrape fails); the survivor's stay.
        victim_at = f"127.0.0.1:{ports[victim]}"
        wait_until(lambda: prom.query(f'up{{instance="{victim_at}"}} == 0'), 30, "the killed worker's scrape to fail")
        assert prom.query(f'marcelle_torch_worker_up{{instance="{victim_at}"}}') == []
        assert [s["metric"]["instance"] for s in prom.query("marcelle_torch_worker_up == 1")] == [
            f"127.0.0.1:{ports[survivor]}"
        ]
        # One worker left: "no worker connected" is rightly silent.
        assert prom.query("absent(marcelle_torch_worker_up == 1)") == []

        def finished(run_id):
            doc = client.get("runs", run_id)
            return doc if doc["status"] in FINAL else None

        done = wait_until(lambda: finished(target["_id"]), LEASE + RUN_S + 120, "the killed worker's run to finish")
        recovery_s = time.monotonic() - killed_at
        other = wait_until(lambda: finished(ids[1]), 60, "the other run to finish")

        assert done["status"] == "succeeded" and done["worker"].startswith(f"{survivor}-"), done
        assert other["status"] == "succeeded", other
        assert recovery_s <= LEASE + RUN_S + SLACK_S, f"recovered in {recovery_s:.1f}s"
        time.sleep(1.0)  # the last events reach the observer
        for run_id in ids:
            assert events.succeeded(run_id) == 1, f"run {run_id}: {events.succeeded(run_id)} succeeded transitions"
            assert events.result_writes(run_id) == 1, f"run {run_id}: {events.result_writes(run_id)} result writes"
        finished_by = completions(workers.values())
        assert finished_by == {ids[0]: 1, ids[1]: 1}, f"computations finished per run: {finished_by}"
        started = claims(workers.values())
        # The killed worker's attempt was cut short; the survivor started it once more.
        assert started[target["_id"]] == 2 and started[ids[1]] == 1, started
        # Taken back by the backend (services/backend/run-queue.js), from the killed worker.
        assert f"run {target['_id']}: worker {target['worker']} stopped renewing" in backend.log_path.read_text()

        # The last worker gone too: the shipped expression fires (after the shortened `for`).
        workers[survivor].signal(signal.SIGKILL)
        survivor_killed = time.monotonic()
        wait_until(
            lambda: prom.query('ALERTS{alertname="MarcelleTorchWorkerAbsent", alertstate="firing"}'),
            60,
            "MarcelleTorchWorkerAbsent to fire",
        )
        alert_s = time.monotonic() - survivor_killed
    finally:
        prom.stop()
        events.close()

    record(
        "worker_killed",
        {
            "fault": "SIGKILL of the worker holding a run (2 workers, lease 3 s, run 4 s)",
            "recovery_s": round(recovery_s, 1),
            "runs_lost": 0,
            "runs_doubled": 0,
            "succeeded_transitions": 1,
            "result_writes": 1,
            "computations_started_again": 1,
            "absent_alert_s_after_last_worker": round(alert_s, 1),
        },
    )
