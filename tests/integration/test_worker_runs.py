"""Runs through the real Marcelle backend, done by real `marcelle-torch worker` processes."""

from __future__ import annotations

import collections
import re
import signal
import threading

import httpx
import pytest

pytestmark = pytest.mark.backend

# Long enough to act on a run while it goes (hundreds of denoising steps), short enough to wait for.
LONG = {"steps": 600}
SHORT = {"steps": 5}


def generation(client, digit=3, params=None):
    return client.create("runs", {"model": "digits-generator", "input": {"digit": digit}, "params": params or SHORT})


def get(client, run):
    return client.get("runs", run["_id"])


def finished(client, run):
    current = get(client, run)
    return current if current["status"] in ("succeeded", "failed", "canceled") else None


def record_events(client):
    """All ``runs patched`` events, by run id, as they arrive."""
    events = collections.defaultdict(list)
    lock = threading.Lock()

    def on_patched(run):
        with lock:
            events[run["_id"]].append(run)

    client.on("runs patched", on_patched)
    return events


def test_generation_run_goes_pending_running_succeeded_with_progress(make_backend, make_worker, connect, wait_until):
    backend = make_backend()
    client = connect(backend.url)
    events = record_events(client)
    run = generation(client, digit=7, params={"steps": 40, "seed": 1})
    assert run["status"] == "pending" and run["progress"] == 0 and run["worker"] is None

    make_worker(backend.url, "solo", "--max-updates-per-second", "50")
    done = wait_until(lambda: finished(client, run), what="the run to finish")
    assert done["status"] == "succeeded", done
    assert done["result"]["label"] == "7"
    assert done["result"]["image"].startswith("data:image/png;base64,")
    assert len(done["result"]["counts"]) == 8 and len(done["result"]["counts"][0]) == 8
    assert done["progress"] == 1 and done["worker"].startswith("solo-") and done["error"] is None

    seen = wait_until(
        lambda: (
            events[run["_id"]] if events[run["_id"]][-1:] and events[run["_id"]][-1]["status"] == "succeeded" else None
        ),
        what="the succeeded event",
    )
    statuses = [e["status"] for e in seen]
    assert statuses[0] == "running" and statuses[-1] == "succeeded"
    assert set(statuses[:-1]) == {"running"}
    progress = [e["progress"] for e in seen]
    assert progress == sorted(progress) and len(set(progress)) >= 3, progress
    assert any(e["partial"] and e["partial"].startswith("data:image/png;base64,") for e in seen)


def test_classification_run_and_bad_input_fail_readably_while_the_worker_keeps_serving(
    make_backend, make_worker, connect, wait_until, make_digit
):
    backend = make_backend()
    client = connect(backend.url)
    make_worker(backend.url, "w")
    instance, label = make_digit(3)

    bad_digit = generation(client, digit=12)
    bad_image = client.create("runs", {"model": "digits", "input": {"b64": "not base64!"}})
    bad_params = generation(client, params={"steps": 0})
    good = client.create("runs", {"model": "digits", "input": instance})

    for run, message in (
        (bad_digit, "input.digit must be an integer from 0 to 9, got 12"),
        (bad_image, "b64 is not valid base64"),
        (bad_params, "params.steps must be an integer from 1 to 1000, got 0"),
    ):
        done = wait_until(lambda run=run: finished(client, run), what="a bad run to fail")
        assert done["status"] == "failed"
        assert message in done["error"]
    done = wait_until(lambda: finished(client, good), what="the good run")
    assert done["status"] == "succeeded"
    assert done["result"]["label"] == label
    assert set(done["result"]["confidences"]) == {str(i) for i in range(10)}


def test_two_workers_do_each_of_20_runs_exactly_once(make_backend, make_worker, connect, wait_until):
    backend = make_backend()
    client = connect(backend.url)
    runs = [generation(client, digit=i % 10) for i in range(20)]
    workers = [make_worker(backend.url, name, wait=False) for name in ("a", "b")]
    for worker in workers:
        worker.wait_ready()

    def all_done():
        found = client.find("runs", {"$limit": 100})["data"]
        return found if all(r["status"] == "succeeded" for r in found) and len(found) == 20 else None

    done = wait_until(all_done, what="20 runs to succeed")
    claims = [run_id for worker in workers for run_id in re.findall(r"run (\S+): claimed", worker.log_text())]
    assert sorted(claims) == sorted(r["_id"] for r in runs), "each run claimed exactly once"
    assert {r["worker"].rsplit("-", 1)[0] for r in done} <= {"a", "b"}
    asked = {r["_id"]: r["input"]["digit"] for r in runs}
    assert all(r["result"]["label"] == str(asked[r["_id"]]) for r in done)


def test_a_run_held_by_a_killed_worker_is_done_by_another(make_backend, make_worker, connect, wait_until):
    backend = make_backend()
    client = connect(backend.url)
    lease = ("--heartbeat", "0.5", "--lease-timeout", "3")
    doomed = make_worker(backend.url, "doomed", *lease)
    run = generation(client, digit=5, params=LONG)
    wait_until(lambda: get(client, run)["progress"] > 0, what="the run to make progress")
    doomed.signal(signal.SIGKILL)
    doomed.proc.wait(30)
    held = get(client, run)
    assert held["status"] == "running" and held["worker"].startswith("doomed-")

    make_worker(backend.url, "rescuer", *lease)
    done = wait_until(lambda: finished(client, run), what="another worker to finish the run")
    assert done["status"] == "succeeded" and done["worker"].startswith("rescuer-")
    assert done["result"]["label"] == "5"
    # Taken back by the backend (services/backend/run-queue.js) from the killed worker.
    assert f"run {run['_id']}: worker {held['worker']} stopped renewing its lease" in backend.log_path.read_text()


def test_the_worker_survives_a_backend_restart_mid_run(make_backend, make_worker, connect, wait_until):
    backend = make_backend()
    worker = make_worker(backend.url, "steady")
    client = connect(backend.url)
    run = generation(client, digit=2, params=LONG)
    wait_until(lambda: get(client, run)["progress"] > 0, what="the run to make progress")

    client.disconnect()
    backend.restart()  # same port, same NeDB files
    client = connect(backend.url)
    done = wait_until(lambda: finished(client, run), what="the run to finish after the restart")
    assert done["status"] == "succeeded" and done["result"]["label"] == "2"
    assert done["worker"].startswith("steady-")

    # Runs created after the restart are picked up too.
    after = generation(client, digit=9)
    assert wait_until(lambda: finished(client, after), what="a run after the restart")["status"] == "succeeded"
    metrics = httpx.get(worker.metrics_url, timeout=30).text
    reconnects = float(
        next(
            line.split()[-1]
            for line in metrics.splitlines()
            if line.startswith("marcelle_torch_worker_reconnects_total")
        )
    )
    assert reconnects >= 1
    assert 'marcelle_torch_worker_runs_total{model="digits-generator",outcome="succeeded"} 2.0' in metrics
    assert "marcelle_torch_worker_up 1.0" in metrics
    # The worker saw the outage and connected again after it (its log, in order).
    lines = worker.log_text().splitlines()
    dropped = [i for i, line in enumerate(lines) if "disconnected from" in line]
    assert dropped, "the worker never saw the backend go away"
    assert any("connected to" in line for line in lines[dropped[-1] + 1 :]), "no connection after the restart"


def test_cancel_stops_a_running_run(make_backend, make_worker, connect, wait_until):
    backend = make_backend()
    client = connect(backend.url)
    worker = make_worker(backend.url, "w")
    run = generation(client, digit=1, params={"steps": 1000})
    wait_until(lambda: get(client, run)["progress"] > 0, what="the run to make progress")
    canceled = client.patch("runs", run["_id"], {"status": "canceled"})
    assert canceled["status"] == "canceled"

    wait_until(lambda: f"run {run['_id']}: stopped (canceled)" in worker.log_text(), what="the worker to stop")
    final = get(client, run)
    assert final["status"] == "canceled" and final["result"] is None and final["progress"] < 1
    # A finished run cannot be canceled again, and the worker goes on with the next run.
    from marcelle_torch.worker.client import BackendError

    with pytest.raises(BackendError, match="NotFound"):
        client.patch("runs", run["_id"], {"status": "canceled"})
    following = generation(client, digit=4)
    assert wait_until(lambda: finished(client, following), what="the next run")["status"] == "succeeded"


def test_sigterm_releases_a_long_run_and_the_worker_exits(make_backend, make_worker, connect, wait_until):
    backend = make_backend()
    client = connect(backend.url)
    worker = make_worker(backend.url, "leaving", "--grace", "0.5")
    run = generation(client, digit=6, params={"steps": 1000})
    wait_until(lambda: get(client, run)["progress"] > 0, what="the run to make progress")
    worker.signal(signal.SIGTERM)
    assert worker.proc.wait(120) == 0
    released = get(client, run)
    assert released["status"] == "pending" and released["worker"] is None, released
    assert "released back to pending" in worker.log_text()


def test_with_auth_the_worker_logs_in_from_its_environment_and_does_a_users_run(
    make_backend, make_worker, connect, wait_until
):
    worker_account = {"MARCELLE_WORKER_EMAIL": "worker@marcelle.test", "MARCELLE_WORKER_PASSWORD": "pw-0123456789"}
    backend = make_backend(
        auth=True,
        secret="another-test-secret-0123456789",
        allow_signup=True,
        worker_email=worker_account["MARCELLE_WORKER_EMAIL"],
        worker_password=worker_account["MARCELLE_WORKER_PASSWORD"],
    )
    alice = connect(backend.url)
    alice.create("users", {"email": "alice@marcelle.test", "password": "alice-password"})
    alice.authenticate("alice@marcelle.test", "alice-password")
    events = record_events(alice)
    run = generation(alice, digit=8)
    worker = make_worker(backend.url, "authed", env=worker_account)
    done = wait_until(lambda: finished(alice, run), what="alice's run")
    assert done["status"] == "succeeded" and done["result"]["label"] == "8" and done["userId"] == run["userId"]
    assert wait_until(
        lambda: [e["status"] for e in events[run["_id"]]][-1:] == ["succeeded"],
        what="alice to get the events of her run",
    )
    assert "logged in as worker@marcelle.test" in worker.log_text()


def test_a_worker_with_wrong_credentials_exits_with_one_clear_line(make_backend, make_worker):
    backend = make_backend(
        auth=True,
        secret="another-test-secret-0123456789",
        worker_email="worker@marcelle.test",
        worker_password="right-password",
    )
    worker = make_worker(
        backend.url,
        "wrong",
        wait=False,
        env={"MARCELLE_WORKER_EMAIL": "worker@marcelle.test", "MARCELLE_WORKER_PASSWORD": "wrong-password"},
    )
    assert worker.proc.wait(300) == 2
    last = worker.log_text().strip().splitlines()[-1]
    assert last.startswith("marcelle-torch worker: error: cannot log in to the backend as worker@marcelle.test")
