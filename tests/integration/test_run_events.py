"""The `runs patched` events of the real Marcelle backend (services/backend/runs-hooks.js
patchedPublisher): each event is the whole run, its input included, so the worker's own
patches (claim, progress, outcome) are not sent back to the connection that made them; the
page following the run, and other workers watching for claims and cancels, get every one. The
worker's writes to a run it holds are answered without the input (it never reads them back);
its claim is answered whole."""

from __future__ import annotations

import threading

import pytest

pytestmark = pytest.mark.backend

SECRET = "a-test-secret-of-some-length-0123456789"
WORKER = ("worker@marcelle.test", "worker-password-1")
MODEL = "digits-generator"
PROGRESS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
INPUT = {"examples": ["x" * 1000] * 8}


class Events:
    """The `runs patched` events a client receives (its Socket.IO reader thread appends)."""

    def __init__(self, client):
        self.runs: list[dict] = []
        self._lock = threading.Lock()
        client.on("runs patched", self._add)

    def _add(self, run):
        with self._lock:
            self.runs.append(run)

    def of(self, run_id: str) -> list[tuple]:
        with self._lock:
            return [(r["status"], r["progress"]) for r in self.runs if r["_id"] == run_id]

    def inputs(self, run_id: str) -> list:
        with self._lock:
            return [r.get("input") for r in self.runs if r["_id"] == run_id]


def a_run_with_worker_patches(page, worker, wait_until):
    """The page makes a run (with an input, as a training run has); the worker claims it,
    reports progress and finishes it, as marcelle_torch.worker does. Returns the run's id and
    the (status, progress) of each patch, in order."""
    run = page.create("runs", {"model": MODEL, "input": INPUT, "params": {}})
    held = {"status": "running", "worker": "w1"}
    claimed = worker.patch("runs", run["_id"], {**held, "heartbeatAt": "now", "progress": 0}, {"status": "pending"})
    assert claimed["input"] == INPUT, "a claim is answered with the run's input"
    for progress in PROGRESS:
        patched = worker.patch("runs", run["_id"], {"progress": progress, "heartbeatAt": "now"}, held)
        assert patched["progress"] == progress and patched["status"] == "running"
        assert "input" not in patched, "a held write is answered without the input"
    done = worker.patch("runs", run["_id"], {"status": "succeeded", "progress": 1, "result": {"ok": True}}, held)
    assert done["result"] == {"ok": True} and "input" not in done
    return run["_id"], [("running", 0), *(("running", p) for p in PROGRESS), ("succeeded", 1)]


def check_the_worker_gets_only_the_others_patches(page, worker, other_worker, wait_until):
    page_events, worker_events, other_events = Events(page), Events(worker), Events(other_worker)
    run_id, patches = a_run_with_worker_patches(page, worker, wait_until)
    # The page, and the other worker connection, get every patch, in order.
    wait_until(lambda: page_events.of(run_id) == patches, timeout=30, what="the page's events")
    wait_until(lambda: other_events.of(run_id) == patches, timeout=30, what="the other worker's events")
    # Each event is the whole run, its input included.
    for events in (page_events, other_events):
        assert events.inputs(run_id) == [INPUT] * len(patches)

    # The page cancels a second run: everyone gets that patch, the page included. Events reach
    # a connection in the order they were sent, so once the worker has the cancel it would
    # have had its own patches of the first run too.
    second = page.create("runs", {"model": MODEL, "input": {"digit": 1}, "params": {}})
    page.patch("runs", second["_id"], {"status": "canceled"})
    for events in (worker_events, page_events, other_events):
        wait_until(lambda e=events: e.of(second["_id"]) == [("canceled", 0)], timeout=30, what="the cancel event")
    assert worker_events.of(run_id) == []


def test_auth_off_a_workers_own_patches_are_not_sent_back_to_it(make_backend, connect, wait_until):
    backend = make_backend()
    worker = connect(backend.url, serves=MODEL)
    other_worker = connect(backend.url, serves=MODEL)
    page = connect(backend.url)
    check_the_worker_gets_only_the_others_patches(page, worker, other_worker, wait_until)


def test_auth_on_a_workers_own_patches_are_not_sent_back_to_it(make_backend, connect, wait_until):
    backend = make_backend(
        auth=True, secret=SECRET, worker_email=WORKER[0], worker_password=WORKER[1], allow_signup=True
    )
    worker = connect(backend.url, *WORKER, serves=MODEL)
    other_worker = connect(backend.url, *WORKER, serves=MODEL)
    signup = connect(backend.url)
    signup.create("users", {"email": "alice@marcelle.test", "password": "a-user-password"})
    page = connect(backend.url, "alice@marcelle.test", "a-user-password")
    check_the_worker_gets_only_the_others_patches(page, worker, other_worker, wait_until)
