"""The Marcelle backend SIGKILLed while runs are in flight, then started again on the same data:
no run is lost (every run created before the crash ends succeeded), none is run twice (each is
claimed and finished once, by the workers' own logs), and the workers reconnect by themselves
and take the runs created after the restart.

Real backend (NeDB files), two real workers (the ``steady`` user model). The page's side of
a reconnection is the browser suite's matter (tests/browser), not covered here.
"""

from __future__ import annotations

import time

import pytest
from faults import FINAL, STEADY, STEADY_ENV, RunEvents, claims, completions, record

pytestmark = pytest.mark.backend

# The outage (kill, 2 s away, a node start) stays well within the lease, so no run may be
# taken back: a second claim means work thrown away.
LEASE = ("--heartbeat", "1", "--lease-timeout", "12")
RUN_S = 3.0
RUNS = 6


def test_a_backend_killed_mid_run_loses_no_run_and_runs_none_twice(make_backend, make_worker, connect, wait_until):
    backend = make_backend()
    workers = [make_worker(backend.url, name, *STEADY, *LEASE, env=STEADY_ENV) for name in ("one", "two")]
    client = connect(backend.url)
    events = RunEvents(backend.url)
    try:
        before = [
            client.create("runs", {"model": "steady", "input": [i], "params": {"seconds": RUN_S}}) for i in range(RUNS)
        ]
        wait_until(
            lambda: (
                sum(client.get("runs", r["_id"])["status"] == "running" for r in before) == 2
                and client.get("runs", before[0]["_id"])["progress"] > 0.3
            ),
            60,
            "both workers busy",
        )
        last = client.create("runs", {"model": "steady", "input": [99], "params": {"seconds": RUN_S}})
        before.append(last)  # acknowledged just before the crash: it must survive it

        client.disconnect()
        backend.kill()
        killed_at = time.monotonic()
        backend.restart(down_for=2)
        back_at = time.monotonic()
        client = connect(backend.url)

        def reconnected():
            return all(w.log_text().count("connected to ") >= 2 for w in workers)

        wait_until(reconnected, 60, "both workers to reconnect")
        reconnect_s = time.monotonic() - back_at
        after = [
            client.create("runs", {"model": "steady", "input": [100 + i], "params": {"seconds": 0.5}}) for i in range(2)
        ]

        def all_final():
            docs = [client.get("runs", r["_id"]) for r in before + after]
            return docs if all(d["status"] in FINAL for d in docs) else None

        docs = wait_until(all_final, 180, "every run to finish")
        drained_s = time.monotonic() - killed_at
        time.sleep(1.0)
    finally:
        events.close()

    assert [d["status"] for d in docs] == ["succeeded"] * len(docs), [
        (d["_id"], d["status"], d.get("error")) for d in docs
    ]
    ids = [d["_id"] for d in docs]
    assert client.find("runs", {"$limit": 0})["total"] == len(ids), "a run was lost or made up"
    started, finished = claims(workers), completions(workers)
    assert {i: started[i] for i in ids} == {i: 1 for i in ids}, f"claims per run: {started}"
    assert {i: finished[i] for i in ids} == {i: 1 for i in ids}, f"computations finished per run: {finished}"
    # The page's view: never two successes for one run (events during the outage are not seen).
    assert max(events.succeeded(i) for i in ids) == 1
    # No lease was taken back (the backend judges them: services/backend/run-queue.js).
    assert "back to pending" not in backend.log_path.read_text()
    record(
        "backend_restart",
        {
            "fault": "SIGKILL of the backend with 2 runs in flight, restarted 2 s later on the same NeDB data",
            "runs": len(ids),
            "runs_lost": 0,
            "runs_doubled": 0,
            "computed_twice": 0,
            "workers_reconnected_s": round(reconnect_s, 1),
            "all_runs_done_s_after_kill": round(drained_s, 1),
        },
    )
