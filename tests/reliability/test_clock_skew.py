"""Workers whose clocks are minutes apart (libfaketime: one 5 minutes ahead, one 5 minutes
behind, the backend on the machine's clock) neither lose nor double a run: leases are stamped
and judged by the backend's clock alone (services/backend/run-queue.js), so a worker's clock
never makes a live lease look expired, nor a dead one look alive.

Real backend, two real workers (the ``steady`` user model), `faketime` from Debian."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from faults import FINAL, STEADY, STEADY_ENV, RunEvents, claims, completions

pytestmark = pytest.mark.backend

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
SKEWS = {"ahead": 300, "behind": -300}  # seconds
HEARTBEAT, LEASE = 0.5, 3.0
RUNS, RUN_S = 10, 1.0


def skewed_env(seconds: int) -> dict[str, str]:
    # Every clock of the process moves by ``seconds`` (an offset: intervals are unchanged).
    # libfaketime 0.9.10 with FAKETIME_DONT_FAKE_MONOTONIC=1 makes Python's sleep fail (EINVAL).
    return {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": f"{seconds:+d}"}


def test_workers_minutes_apart_neither_lose_nor_double_a_run(make_backend, make_worker, wait_until):
    if not LIBFAKETIME.is_file():
        pytest.fail(f"{LIBFAKETIME} is missing: apt-get install faketime (or `make system-deps`)")
    for seconds in SKEWS.values():  # the skew is real, or the test proves nothing
        env = {**os.environ, **skewed_env(seconds)}
        shown = subprocess.run(
            [sys.executable, "-c", "import time; print(time.time())"],
            env=env,
            text=True,
            capture_output=True,
            check=True,
        ).stdout
        assert abs(float(shown) - time.time() - seconds) < 30, (seconds, shown)

    backend = make_backend()
    events = RunEvents(backend.url)
    try:
        workers = [
            make_worker(
                backend.url,
                name,
                *STEADY,
                "--heartbeat",
                str(HEARTBEAT),
                "--lease-timeout",
                str(LEASE),
                env={**STEADY_ENV, **skewed_env(seconds)},
            )
            for name, seconds in SKEWS.items()
        ]
        client = events.client
        # Runs longer than a lease: a lease judged by a skewed clock would expire mid-run.
        runs = [
            client.create("runs", {"model": "steady", "input": [i], "params": {"seconds": LEASE + RUN_S}})
            for i in range(RUNS)
        ]
        ids = [r["_id"] for r in runs]

        def all_final():
            docs = [client.get("runs", i) for i in ids]
            return docs if all(d["status"] in FINAL for d in docs) else None

        docs = wait_until(all_final, 300, "every run to finish")
        time.sleep(1.0)  # the last events reach the observer
    finally:
        events.close()

    assert [d["status"] for d in docs] == ["succeeded"] * RUNS, [(d["_id"], d["status"], d.get("error")) for d in docs]
    started, finished = claims(workers), completions(workers)
    assert {i: started[i] for i in ids} == {i: 1 for i in ids}, f"claims per run: {started}"
    assert {i: finished[i] for i in ids} == {i: 1 for i in ids}, f"computations finished per run: {finished}"
    assert max(events.succeeded(i) for i in ids) == 1
    assert "back to pending" not in backend.log_path.read_text(), "a live lease was taken back"
    # Each worker did runs; the leases they renewed carry the backend's time, not theirs.
    for worker in workers:
        assert any(run_id in ids for run_id in claims([worker])), f"{worker.worker_name} ran nothing"
    now = datetime.now(UTC)
    for doc in docs:
        stamped = datetime.fromisoformat(doc["heartbeatAt"].replace("Z", "+00:00"))
        assert abs((now - stamped).total_seconds()) < 120, doc["heartbeatAt"]
