"""Faults around the run worker: backend outages longer than the lease, a worker killed while
others wait, a worker asked to stop while its backend is gone. Real backend, real workers;
runs of a small user model (``support/steady_model.py``) that lasts as long as asked. The
backend keeps the queue (services/backend/run-queue.js): it takes back expired leases and fails
runs nobody took, judged by its own clock."""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

import pytest

from marcelle_torch.worker.client import BackendError, is_not_found

pytestmark = pytest.mark.backend

SUPPORT = Path(__file__).with_name("support")
ENV = {"PYTHONPATH": str(SUPPORT)}
STEADY = ("--models", "steady_model:spec")


def steady_run(client, seconds: float):
    return client.create("runs", {"model": "steady", "input": [0], "params": {"seconds": seconds}})


def get(client, run):
    return client.get("runs", run["_id"])


def finished(client, run):
    current = get(client, run)
    return current if current["status"] in ("succeeded", "failed", "canceled") else None


LONG_AGO = "2000-01-01T00:00:00.000Z"


def held_by(client, run, worker: str, heartbeat_at: str, where: dict | None = None):
    """Make ``run`` look held by ``worker`` with that last heartbeat (auth is off: any caller
    may write what a worker writes); ``where``: only if the run matches it."""
    return client.patch("runs", run["_id"], {"status": "running", "worker": worker, "heartbeatAt": heartbeat_at}, where)


def dead_workers_run(client):
    """A run whose worker died long ago. Made from a new run, which a worker may claim first."""
    for _ in range(10):
        try:
            return held_by(client, steady_run(client, 0.1), "ghost-000000", LONG_AGO, {"status": "pending"})
        except BackendError as exc:
            if not is_not_found(exc):
                raise
    raise AssertionError("the workers claimed every run before it could be made a dead worker's")


def claimed(worker) -> list[str]:
    """The runs ``worker`` claimed, in order, by its log."""
    return re.findall(r"run (\S+): claimed", worker.log_text())


def taken_back(backend, run) -> list[str]:
    """The backend's lines saying it took ``run`` back from its worker."""
    return [line for line in backend.log_path.read_text().splitlines() if f"run {run['_id']}: worker " in line]


def test_a_backend_outage_longer_than_the_lease_throws_no_work_away(make_backend, make_worker, connect, wait_until):
    # The lease must outlast a reconnection (the client retries at most every ~5 s).
    lease_timeout = 8
    lease = ("--heartbeat", "1", "--lease-timeout", str(lease_timeout))
    backend = make_backend()
    holder = make_worker(backend.url, "holder", *STEADY, *lease, env=ENV)
    client = connect(backend.url)
    run = steady_run(client, 30)
    wait_until(lambda: get(client, run)["progress"] > 0, what="the holder to start the run")
    sweeper = make_worker(backend.url, "sweeper", *STEADY, *lease, env=ENV)

    client.disconnect()
    backend.restart(down_for=12)  # longer than the lease, while the holder's run goes on
    client = connect(backend.url)
    # Taken back, but only once every live worker has had lease_timeout to reconnect, the
    # one busy with a run included.
    ghost = dead_workers_run(client)
    done = wait_until(lambda: finished(client, run), what="the run to finish after the outage")
    redone = wait_until(lambda: finished(client, ghost), what="the dead worker's run to be redone")
    assert redone["status"] == "succeeded", redone

    assert taken_back(backend, run) == [], "the holder's run was taken back"
    assert done["status"] == "succeeded" and done["worker"].startswith("holder-"), done
    assert claimed(holder).count(run["_id"]) == 1, "the holder claimed its run twice"
    assert run["_id"] not in claimed(sweeper), "the run was computed twice"
    assert (claimed(holder) + claimed(sweeper)).count(ghost["_id"]) == 1
    # Judged once the backend had been up a whole lease: time for every live worker to reconnect.
    (line,) = taken_back(backend, ghost)
    up = float(re.search(r"backend up ([0-9.]+)s", line).group(1))
    assert up >= lease_timeout, line


def test_the_backend_takes_back_an_expired_lease_only_and_by_its_own_clock(make_backend, connect):
    """A worker's lease (its claim's leaseSeconds) renewed in time is never taken back, whatever
    time the worker writes; one not renewed goes back to pending once it expires."""
    backend = make_backend()
    client = connect(backend.url)
    renewed, abandoned = steady_run(client, 1), steady_run(client, 1)
    for run, worker in ((renewed, "alive-000000"), (abandoned, "gone-000000")):
        # A claim as a worker makes it (auth is off), with a heartbeat from a clock years behind.
        claim = {"status": "running", "worker": worker, "heartbeatAt": LONG_AGO, "leaseSeconds": 2}
        client.patch("runs", run["_id"], claim, {"status": "pending"})
    assert get(client, renewed)["heartbeatAt"] > "2026", "the backend stamps the lease with its own time"
    stop = threading.Event()

    def renew():
        while not stop.wait(0.5):
            client.patch("runs", renewed["_id"], {"heartbeatAt": LONG_AGO}, {"status": "running"})

    renewing = threading.Thread(target=renew, daemon=True)
    renewing.start()
    try:
        deadline = time.monotonic() + 60
        while get(client, abandoned)["status"] == "running":
            assert time.monotonic() < deadline, "the expired lease was never taken back"
            time.sleep(0.2)
        time.sleep(3)  # more than a lease more: the renewed one must still be held
        assert get(client, renewed)["status"] == "running" and get(client, renewed)["worker"] == "alive-000000"
    finally:
        stop.set()
        renewing.join()
    assert get(client, abandoned)["status"] == "pending" and get(client, abandoned)["worker"] is None
    assert taken_back(backend, renewed) == [] and len(taken_back(backend, abandoned)) == 1


def test_a_killed_workers_run_is_taken_back_at_once_and_done_before_newer_runs(
    make_backend, make_worker, connect, wait_until
):
    lease = ("--heartbeat", "0.5", "--lease-timeout", "3")
    backend = make_backend()
    client = connect(backend.url)
    doomed = make_worker(backend.url, "doomed", *STEADY, *lease, env=ENV)
    oldest = steady_run(client, 60)
    wait_until(lambda: get(client, oldest)["progress"] > 0, what="the doomed worker to start the oldest run")
    long_one = steady_run(client, 10)  # keeps the rescuer busy while the oldest run's lease expires
    newest = steady_run(client, 0.2)
    doomed.signal(signal.SIGKILL)
    doomed.proc.wait(30)

    rescuer = make_worker(backend.url, "rescuer", *STEADY, *lease, env=ENV)
    for run in (oldest, long_one, newest):
        assert wait_until(lambda run=run: finished(client, run), what="every run to finish")["status"] == "succeeded"
    # Taken back by the backend once the lease expired (whether before the rescuer came up or
    # while it ran another run), then claimed in creation order: before the newer run.
    got = claimed(rescuer)
    assert sorted(got) == sorted(r["_id"] for r in (oldest, long_one, newest)), got
    assert got.index(oldest["_id"]) < got.index(newest["_id"]), got
    assert len(taken_back(backend, oldest)) == 1


def test_a_worker_whose_backend_is_gone_exits_on_sigterm(make_backend, make_worker, connect, wait_until):
    backend = make_backend()
    worker = make_worker(backend.url, "orphan", *STEADY, "--grace", "1", env=ENV)
    client = connect(backend.url)
    run = steady_run(client, 60)
    wait_until(lambda: get(client, run)["progress"] > 0, what="the run to start")
    client.disconnect()
    backend.kill()
    # The worker says so while its run goes on (it used to wait for the run loop: up to a run).
    wait_until(lambda: "disconnected from" in worker.log_text(), 30, "the worker to log its disconnection")
    log = worker.log_text()
    assert "succeeded in" not in log and "released back" not in log, "the run is over already"
    worker.signal(signal.SIGTERM)
    # Generous (a shared machine); before, the process outlived SIGTERM indefinitely.
    assert worker.proc.wait(60) == 0, worker.log_text()[-2000:]


def test_a_run_no_worker_serves_fails_with_a_reason_instead_of_waiting_forever(
    make_backend, make_worker, connect, wait_until
):
    backend = make_backend(pending_timeout_s=3)
    client = connect(backend.url)
    # Created while no worker is connected, the run is accepted and waits for one.
    orphan = client.create("runs", {"model": "nobody-serves-this", "input": [0]})
    make_worker(backend.url, "w", *STEADY, env=ENV)
    # Once a worker is connected, a new run of a model none serves is refused at once.
    with pytest.raises(
        BackendError, match='no worker serves the model "nobody-serves-this": the connected workers serve steady'
    ):
        client.create("runs", {"model": "nobody-serves-this", "input": [0]})
    failed = wait_until(lambda: finished(client, orphan), what="the unserved run to fail")
    assert failed["status"] == "failed"
    assert failed["error"] == "no running worker serves model 'nobody-serves-this' (waited 3 s for one)"
    # The worker goes on serving its own model.
    served = steady_run(client, 0.2)
    assert wait_until(lambda: finished(client, served), what="a served run")["status"] == "succeeded"
