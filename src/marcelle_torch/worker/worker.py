"""The run worker (Solution 3): claims runs in the Marcelle backend's ``runs`` service and
runs the model, streaming progress and intermediate results into the run.

A run: ``{model, input, params, status, progress, partial, result, error, worker,
heartbeatAt, createdAt, updatedAt}``; status goes pending -> running -> succeeded |
failed | canceled. The protocol, all through the backend (the worker exposes no endpoint):

- Claim: ``patch(id, {status: running, worker, heartbeatAt}, query {status: pending})``.
  The backend writes only if the run is still pending (atomically) and answers NotFound
  otherwise, so one worker wins (see services/backend/runs-hooks.js).
- While running, every write is conditional on ``{status: running, worker: me}``: a
  NotFound means the run was canceled or taken back, and the worker stops between steps.
  The ``runs patched`` event tells it the same sooner.
- Lease: ``heartbeatAt`` (UTC ISO time) is renewed every ``heartbeat`` seconds while a run
  goes on. Every worker looks, every ``heartbeat`` seconds and in the background (also while
  it runs a model), for running runs whose heartbeat is older than ``lease_timeout`` and puts
  them back to pending (conditionally on that same stale heartbeat), so a run held by a dead
  worker is done by another. A worker only judges leases once it has itself been connected
  for ``lease_timeout`` (counted from the connection itself, also while it runs a model):
  after a backend outage every live worker gets that long to reconnect and renew, so a run
  is taken back only from a worker that is really gone. A worker never takes back its own.
  Worker clocks are assumed in sync (NTP) to well within ``lease_timeout``.
- Pending runs are claimed oldest first (by ``createdAt``), a run taken back from a dead
  worker included. A run left pending longer than ``pending_timeout`` (no worker serves its
  model, or none was free) is failed with a readable reason, so a page never waits forever.
- On (re)connection the worker names the models it serves (handshake query ``serves``: the
  backend refuses a new run for a model no connected worker serves), logs in (if credentials
  are given) and picks up pending runs.
- SIGTERM/SIGINT: no new claims; the current run may finish within ``grace`` seconds, else
  it is released back to pending; then the worker exits.

Models: a classification run's ``input`` is one instance as the Serve API takes it (an
image data URL, ``{"b64": ...}`` or a nested list); its result is ``{label, confidences}``.
A generation model's spec gives ``run(model, input, params, report) -> result``
(see ``models.digits_generator.run``).
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import InvalidInput, MarcelleTorchError
from .client import BackendError, BackendUnavailable, FeathersClient, is_not_found
from .metrics import WorkerMetrics
from .options import WorkerOptions

log = logging.getLogger("marcelle_torch.worker")

SERVICE = "runs"
# A partial result (JSON) or a callable that makes it, called only when it is sent.
Partial = Any | Callable[[], Any] | None


class WorkerError(MarcelleTorchError):
    code = "worker"


class Stop(Exception):
    """Raised between steps to end the current run early (``reason`` says why)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason  # canceled | lost | released


@dataclass
class CurrentRun:
    id: str
    model: str
    stop: threading.Event = field(default_factory=threading.Event)
    reason: str = ""
    heartbeat_at: str = ""
    sender: ProgressSender | None = None

    def request_stop(self, reason: str) -> None:
        if not self.stop.is_set():
            self.reason = reason
            self.stop.set()


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(t: datetime) -> str:
    """UTC with milliseconds and a Z: sorts as text, as the backend compares it."""
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


class Worker:
    def __init__(
        self,
        backend_url: str,
        models: list[str],
        name: str | None = None,
        email: str | None = None,
        password: str | None = None,
        options: WorkerOptions | None = None,
        metrics: WorkerMetrics | None = None,
    ):
        self.backend_url = backend_url.rstrip("/")
        self.model_names = list(models)
        # Unique per process, so a claim or a lease is never mistaken for another worker's.
        base = name or socket.gethostname()
        self.id = f"{base}-{uuid.uuid4().hex[:6]}"
        self.email, self.password = email, password
        self.options = options or WorkerOptions()
        self.metrics = metrics or WorkerMetrics()
        self.client = FeathersClient(self.backend_url, timeout=self.options.call_timeout)
        self.models: dict[str, tuple] = {}
        self.events: queue.Queue = queue.Queue()
        self.candidates: dict[str, str] = {}  # pending run id -> createdAt: claimed oldest first
        self.current: CurrentRun | None = None
        self.stopping = threading.Event()
        self.stop_deadline: float | None = None
        self._connected_once = False
        self._next_sweep = 0.0
        self._judge_leases_from = float("inf")  # monotonic time from which stale leases are taken back
        self.fatal: str | None = None

    # ------------------------------------------------------------------ set-up

    def load_models(self, progress: bool = True) -> None:
        from ..models import get_spec, load_model

        for name in self.model_names:
            spec = get_spec(name)
            module = load_model(spec, train_if_missing=True, progress=progress)
            self.models[spec.name] = (spec.require("worker"), module, spec.run)
            log.info("model %s ready (%s)", spec.name, spec.task)

    def announcement(self) -> str:
        """The handshake's ``serves``: ``name:task[:CxS]`` per model (an image classifier's
        channels and size, so that a page offers the right input and sends it at that size)."""
        from ..models.spec import ImageInput

        items = []
        for name, (spec, _module, _run) in sorted(self.models.items()):
            image = spec.input if spec.task == "classification" and isinstance(spec.input, ImageInput) else None
            items.append(f"{name}:{spec.task}" + (f":{image.channels}x{image.size}" if image else ""))
        return ",".join(items)

    def _install_handlers(self) -> None:
        self.client.on("connect", self._on_connect)
        self.client.on("disconnect", self._on_disconnect)
        self.client.on(f"{SERVICE} created", lambda run: self._on_run_event(run))
        self.client.on(f"{SERVICE} patched", lambda run: self._on_run_event(run))

    def _on_connect(self) -> None:
        # Set here, on the reader thread: the run loop sees the connect event only between
        # runs, and a worker busy with a run must also give the others time to reconnect.
        self._judge_leases_from = time.monotonic() + self.options.lease_timeout
        log.info("connected to %s as %s", self.backend_url, self.id)
        if self._connected_once:
            self.metrics.reconnects.inc()
        self._connected_once = True
        if not self.email:
            self.metrics.up.set(1)
        self.events.put(("connect", None))

    def _on_disconnect(self) -> None:
        # Logged here, on the reader thread (as the connection): the run loop reads its events
        # only between runs.
        log.warning("disconnected from %s; reconnecting", self.backend_url)
        self._judge_leases_from = float("inf")
        self.metrics.up.set(0)

    def _on_run_event(self, run: object) -> None:
        # Reader thread: only look and hand over. A stop request acts at once on the run loop.
        if not isinstance(run, dict):
            return
        current = self.current
        if current is not None and run.get("_id") == current.id:
            if run.get("status") == "canceled":
                current.request_stop("canceled")
            elif run.get("status") != "running" or run.get("worker") != self.id:
                current.request_stop("lost")
        self.events.put(("run", run))

    def request_stop(self, *_args: object) -> None:
        if not self.stopping.is_set():
            log.info("stop requested: finishing the current run (at most %.0fs), then exiting", self.options.grace)
            self.stop_deadline = time.monotonic() + self.options.grace
            self.stopping.set()

    # ------------------------------------------------------------------ main loop

    def serve(self, install_signals: bool = True) -> int:
        """Connect, then claim and run until asked to stop. Returns an exit code."""
        if install_signals and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
        self._install_handlers()
        if not self.models:
            self.load_models()
        self._connect_until_up()
        threading.Thread(target=self._lease_loop, daemon=True, name="leases").start()
        while not self.stopping.is_set():
            self._drain_events(timeout=0.2)
            if self.stopping.is_set():
                break
            if self.client.connected and time.monotonic() >= self._next_sweep:
                self._sweep()
            claimed = self._claim_next()
            if claimed is not None:
                self._execute(*claimed)
        self.client.disconnect()
        self.metrics.up.set(0)
        if self.fatal:
            raise WorkerError(self.fatal)
        log.info("worker %s stopped", self.id)
        return 0

    def _connect_until_up(self) -> None:
        delay = 0.5
        while not self.stopping.is_set():
            try:
                # The backend refuses new runs for models no connected worker serves, and
                # lists them for pages (services/backend/workers.js): say which this one serves.
                self.client.connect(query={"serves": self.announcement()})
                return
            except BackendUnavailable as exc:
                log.warning("%s; retrying in %.1fs", exc.message, delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, 5.0)

    def _drain_events(self, timeout: float) -> None:
        try:
            kind, payload = self.events.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            self._handle_event(kind, payload)
            try:
                kind, payload = self.events.get_nowait()
            except queue.Empty:
                return

    def _handle_event(self, kind: str, payload: Any) -> None:
        if kind == "connect":
            self._on_connected()
        elif kind == "run":
            if payload.get("status") == "pending" and payload.get("model") in self.models:
                self.candidates.setdefault(payload["_id"], created_at(payload))
            else:
                self.candidates.pop(payload.get("_id"), None)

    def _login(self) -> None:
        if self.email:
            self.client.authenticate(self.email, self.password or "")
            self.metrics.up.set(1)
            log.info("logged in as %s", self.email)

    def _call(self, method: str, *args: Any) -> Any:
        """A call on the runs service; logs in again if a new connection is not yet logged in
        (after a reconnection during a run, before the main loop has seen it)."""
        try:
            return getattr(self.client, method)(SERVICE, *args)
        except BackendError as exc:
            if exc.name != "NotAuthenticated" or not self.email:
                raise
        self._login()
        return getattr(self.client, method)(SERVICE, *args)

    def _on_connected(self) -> None:
        # Throttled (429), the backend failing (5xx) or not answering: wait and try again, for as
        # long as it takes; only refused credentials (401) are fatal.
        delay = 1.0
        while not self.stopping.is_set():
            try:
                self._login()
                self._next_sweep = 0.0  # pick up pending runs now
                return
            except BackendError as exc:
                if exc.http_code != 429 and (exc.http_code or 0) < 500:
                    log.error("cannot log in to the backend as %s: %s", self.email, exc.message)
                    self.fatal = f"cannot log in to the backend as {self.email}: {exc.message}"
                    self.stopping.set()
                    return
                log.warning("log in refused for now (%s); retrying in %.0fs", exc.message, delay)
            except BackendUnavailable as exc:
                if not self.client.connected:
                    log.warning("log in failed (%s); will retry on reconnection", exc.message)
                    return
                log.warning("log in failed (%s); retrying in %.0fs", exc.message, delay)
            self.stopping.wait(delay)
            delay = min(delay * 2, 60.0)

    # ------------------------------------------------------------------ finding and claiming

    def _sweep(self) -> None:
        """Refresh the list of pending runs."""
        self._next_sweep = time.monotonic() + self.options.heartbeat
        try:
            pending = self._call(
                "find",
                {
                    "status": "pending",
                    "model": {"$in": list(self.models)},
                    "$sort": {"createdAt": 1},
                    "$limit": 100,
                    "$select": ["_id", "model", "status", "createdAt"],
                },
            )
        except (BackendUnavailable, BackendError) as exc:
            log.warning("cannot look for runs: %s", exc.message)
            return
        self.metrics.pending.set(pending.get("total", 0))
        for run in pending.get("data", []):
            self.candidates.setdefault(run["_id"], created_at(run))

    def _lease_loop(self) -> None:
        """Background: every ``heartbeat`` seconds, take back the runs of dead workers, even
        while this worker's own model runs (the freed run then reaches an idle worker)."""
        while not self.stopping.wait(self.options.heartbeat):
            if not self.client.connected or time.monotonic() < self._judge_leases_from:
                continue
            try:
                self._requeue_stale()
                self._fail_overdue()
            except (BackendUnavailable, BackendError) as exc:
                log.warning("cannot look for stale runs: %s", exc.message)

    def _requeue_stale(self) -> None:
        cutoff = iso(utc_now() - timedelta(seconds=self.options.lease_timeout))
        stale = self._call(
            "find",
            {
                "status": "running",
                "heartbeatAt": {"$lt": cutoff},
                # Never its own run: this worker is alive; its heartbeat is only late.
                "worker": {"$ne": self.id},
                "$limit": 100,
                "$select": ["_id", "worker", "heartbeatAt"],
            },
        )
        for run in stale.get("data", []):
            try:
                self._call(
                    "patch",
                    run["_id"],
                    {
                        "status": "pending",
                        "worker": None,
                        "heartbeatAt": None,
                        "progress": 0,
                        "partial": None,
                    },
                    {"status": "running", "worker": run.get("worker"), "heartbeatAt": run.get("heartbeatAt")},
                )
                log.warning(
                    "run %s: worker %s stopped renewing its lease; back to pending", run["_id"], run.get("worker")
                )
            except BackendError as exc:
                if not is_not_found(exc):  # NotFound: it moved on meanwhile (renewed, finished, taken)
                    raise

    def _fail_overdue(self) -> None:
        """Fail the runs that have waited longer than ``pending_timeout`` for a worker."""
        timeout = self.options.pending_timeout
        if not timeout:
            return
        # updatedAt, not createdAt: a run just taken back from a dead worker starts waiting anew.
        # Compared here: the backend turns only createdAt query values into dates.
        cutoff = iso(utc_now() - timedelta(seconds=timeout))
        waiting = self._call(
            "find",
            {"status": "pending", "$sort": {"updatedAt": 1}, "$limit": 100, "$select": ["_id", "model", "updatedAt"]},
        )
        for run in waiting.get("data", []):
            if (run.get("updatedAt") or cutoff) >= cutoff:
                break
            model = run.get("model")
            why = (
                f"no worker was free to take this run within {timeout:g} s"
                if model in self.models
                else f"no running worker serves model {model!r} (waited {timeout:g} s for one)"
            )
            try:
                self._call("patch", run["_id"], {"status": "failed", "error": why}, {"status": "pending"})
                log.warning("run %s: %s", run["_id"], why)
            except BackendError as exc:
                if not is_not_found(exc):  # NotFound: claimed or canceled meanwhile
                    raise

    def _claim_next(self) -> tuple[dict, CurrentRun] | None:
        while self.candidates and not self.stopping.is_set() and self.client.connected:
            run_id = min(self.candidates, key=lambda id_: self.candidates[id_])
            created = self.candidates.pop(run_id)
            heartbeat_at = iso(utc_now())
            try:
                run = self._call(
                    "patch",
                    run_id,
                    {
                        "status": "running",
                        "worker": self.id,
                        "heartbeatAt": heartbeat_at,
                        "progress": 0,
                        "partial": None,
                        "error": None,
                    },
                    {"status": "pending"},
                )
            except BackendError as exc:
                if is_not_found(exc):
                    continue  # another worker has it, or it was canceled
                log.warning("cannot claim run %s: %s", run_id, exc.message)
                continue
            except BackendUnavailable as exc:
                log.warning("cannot claim run %s: %s", run_id, exc.message)
                self.candidates[run_id] = created
                return None
            self.current = CurrentRun(id=run_id, model=run.get("model"), heartbeat_at=heartbeat_at)
            return run, self.current
        return None

    # ------------------------------------------------------------------ running

    def _execute(self, run: dict, current: CurrentRun) -> None:
        model = run.get("model")
        log.info("run %s: claimed (%s)", current.id, model)
        self.metrics.running.set(1)
        started = time.monotonic()
        beat = threading.Thread(
            target=self._heartbeat_loop, args=(current,), daemon=True, name=f"heartbeat-{current.id}"
        )
        beat.start()
        current.sender = sender = ProgressSender(self, current)
        outcome = "failed"
        try:
            result = self._infer(run, current)
            sender.close()  # what is still unsent is older than the result
            self._check(current)
            outcome = self._finish(current, {"status": "succeeded", "progress": 1, "result": result})
        except Stop as stop:
            outcome = stop.reason
            if stop.reason == "released":
                self._release(current)
            log.info("run %s: stopped (%s)", current.id, stop.reason)
        except MarcelleTorchError as exc:
            outcome = self._finish(current, {"status": "failed", "error": exc.message}, ok="failed")
        except Exception as exc:  # a bug or a model failure: say what, keep serving
            log.error("run %s: %s", current.id, traceback.format_exc())
            outcome = self._finish(
                current, {"status": "failed", "error": f"the model failed: {type(exc).__name__}: {exc}"}, ok="failed"
            )
        finally:
            sender.close()
            current.stop.set()  # ends the heartbeat thread
            beat.join(timeout=self.options.call_timeout)
            self.current = None
            self.metrics.running.set(0)
        self.metrics.runs.labels(model=model, outcome=outcome).inc()
        self.metrics.duration.labels(model=model).observe(time.monotonic() - started)
        log.info("run %s: %s in %.2fs", current.id, outcome, time.monotonic() - started)

    def _check(self, current: CurrentRun) -> None:
        if current.stop.is_set():
            raise Stop(current.reason or "canceled")
        if self.stopping.is_set() and self.stop_deadline is not None and time.monotonic() > self.stop_deadline:
            current.request_stop("released")
            raise Stop("released")

    def _infer(self, run: dict, current: CurrentRun) -> Any:
        import torch

        from ..models import decode_instances, postprocess

        if run.get("model") not in self.models:
            raise InvalidInput(f"this worker does not serve model {run.get('model')!r}")
        spec, module, runner = self.models[run["model"]]
        if spec.task == "classification":
            if "input" not in run or run["input"] is None:
                raise InvalidInput(
                    'run.input is missing: send one instance (an image data URL, {"b64": ...} or a nested list)'
                )
            batch = decode_instances(spec, [run["input"]])
            self._check(current)
            with torch.no_grad():
                return postprocess(spec, module(batch))[0]

        def report(progress: float, partial: Partial = None) -> None:
            self._check(current)
            self._progress(current, progress, partial)

        return runner(module, run.get("input"), run.get("params") or {}, report)

    def _progress(self, current: CurrentRun, progress: float, partial: Partial) -> None:
        """Never waits on the backend: the newest progress is handed to the run's sender."""
        if current.sender is not None:  # set before the model runs (_execute)
            current.sender.offer(progress, partial)

    def _patch_own(self, current: CurrentRun, data: dict) -> dict | None:
        """Write to the run this worker holds; Stop if it no longer does. A lost connection
        only skips the write (the run goes on; the result is retried at the end)."""
        heartbeat_at = iso(utc_now())
        try:
            run = self._call(
                "patch", current.id, {**data, "heartbeatAt": heartbeat_at}, {"status": "running", "worker": self.id}
            )
        except BackendError as exc:
            if is_not_found(exc):
                current.request_stop(self._why_gone(current))
                raise Stop(current.reason) from None
            raise
        except BackendUnavailable:
            return None
        current.heartbeat_at = heartbeat_at
        return run

    def _why_gone(self, current: CurrentRun) -> str:
        """After a NotFound on our own run: was it canceled, or taken back (lost)?"""
        if current.reason:
            return current.reason
        try:
            run = self._call("get", current.id)
        except (BackendError, BackendUnavailable):
            return "lost"
        return "canceled" if run.get("status") == "canceled" else "lost"

    def _heartbeat_loop(self, current: CurrentRun) -> None:
        while not current.stop.wait(self.options.heartbeat):
            try:
                self._patch_own(current, {})
            except Stop:
                return
            except (BackendError, BackendUnavailable) as exc:
                log.warning("run %s: heartbeat failed: %s", current.id, exc.message)

    def _finish(self, current: CurrentRun, data: dict, ok: str = "succeeded") -> str:
        """Write the outcome, retrying while the backend is away (it may be restarting)."""
        deadline = time.monotonic() + self.options.finish_timeout
        while True:
            try:
                self._call(
                    "patch",
                    current.id,
                    {**data, "heartbeatAt": iso(utc_now())},
                    {"status": "running", "worker": self.id},
                )
                if data["status"] == "failed":
                    log.info("run %s: failed: %s", current.id, data.get("error"))
                return ok
            except BackendError as exc:
                if is_not_found(exc):
                    reason = self._why_gone(current)
                    log.info("run %s: %s before its outcome was written", current.id, reason)
                    return reason
                log.error("run %s: cannot write the outcome: %s", current.id, exc.message)
                return "lost"
            except BackendUnavailable as exc:
                # Stopping: wait no longer than the grace (the lease hands the run to another worker).
                stopped = self.stopping.is_set() and time.monotonic() > (self.stop_deadline or 0)
                if stopped or time.monotonic() > deadline:
                    log.error("run %s: giving up writing the outcome: %s", current.id, exc.message)
                    return "lost"
                time.sleep(0.5)

    def _release(self, current: CurrentRun) -> None:
        try:
            self._call(
                "patch",
                current.id,
                {
                    "status": "pending",
                    "worker": None,
                    "heartbeatAt": None,
                    "progress": 0,
                    "partial": None,
                },
                {"status": "running", "worker": self.id},
            )
            log.info("run %s: released back to pending", current.id)
        except (BackendError, BackendUnavailable) as exc:
            log.warning("run %s: cannot release (%s); its lease will expire", current.id, exc.message)


class ProgressSender:
    """Sends a run's progress from its own thread, so the model loop never waits on the backend.

    ``offer()`` (the model's thread) only replaces the newest (progress, partial) and returns;
    the sender patches the newest at most ``max_updates_per_second`` times a second and drops
    the ones it had no time for. A partial given as a function (e.g. one that encodes a PNG)
    is called only for the values that are sent. A NotFound on the run stops it (canceled or
    taken back): the model's next ``report`` raises Stop.
    """

    def __init__(self, worker: Worker, current: CurrentRun):
        self.worker, self.current = worker, current
        self.interval = 1.0 / worker.options.max_updates_per_second
        self._cond = threading.Condition()
        self._newest: tuple[float, object] | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    def offer(self, progress: float, partial: Partial = None) -> None:
        with self._cond:
            if self._closed:
                return
            self._newest = (progress, partial)
            if self._thread is None:  # started on the first report (classification runs have none)
                self._thread = threading.Thread(target=self._loop, daemon=True, name=f"progress-{self.current.id}")
                self._thread.start()
            self._cond.notify()

    def close(self) -> None:
        """Drops what is unsent and ends the thread; an update already on its way completes by
        itself (the run's conditional writes keep it from landing after the outcome)."""
        with self._cond:
            self._closed = True
            self._newest = None
            self._cond.notify()

    def _loop(self) -> None:
        next_at = 0.0
        while True:
            with self._cond:
                while self._newest is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
            wait = next_at - time.monotonic()
            if wait > 0:  # at the rate limit: the newest value may still be replaced meanwhile
                with self._cond:
                    self._cond.wait_for(lambda: self._closed, timeout=wait)
            with self._cond:
                if self._closed or self._newest is None:
                    if self._closed:
                        return
                    continue
                progress, partial = self._newest
                self._newest = None
            next_at = time.monotonic() + self.interval
            self._send(progress, partial)

    def _send(self, progress: float, partial: Partial) -> None:
        worker, current = self.worker, self.current
        data = {"progress": round(float(progress), 4)}
        try:
            if partial is not None:
                data["partial"] = partial() if callable(partial) else partial
        except Exception as exc:  # a partial that cannot be made: the run goes on without it
            log.warning("run %s: partial result failed: %s: %s", current.id, type(exc).__name__, exc)
        if self._closed:
            return
        try:
            worker._patch_own(current, data)
        except Stop:
            return  # request_stop() is set: the model's next report raises
        except (BackendError, BackendUnavailable) as exc:
            log.warning("run %s: progress not sent: %s", current.id, exc.message)
            return
        worker.metrics.progress_updates.inc()


def created_at(run: dict) -> str:
    """A run's creation time (ISO text, sorts in time order); now when the backend gave none."""
    return run.get("createdAt") or iso(utc_now())


def default_name() -> str:
    return os.environ.get("HOSTNAME") or socket.gethostname()
