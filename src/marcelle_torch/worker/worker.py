"""The run worker (Solution 3): claims runs in the Marcelle backend's ``runs`` service and
runs the model, streaming progress and intermediate results into the run.

The protocol (protocol.py), all through the backend (the worker exposes no endpoint): a
claim is a conditional patch that one worker wins; every later write is conditional on still
holding the run, so a NotFound means it was canceled or taken back, and the worker stops
between steps (the ``runs patched`` event tells it the same sooner). While a run goes on the
worker renews its lease every ``heartbeat`` seconds; the lease lasts ``lease_timeout``.

The run queue's bookkeeping is the backend's, judged by its own clock
(services/backend/run-queue.js): it puts a run whose lease expired back to pending (a dead
worker's run is then done by another), and fails a run nobody took in time. The worker only
claims, runs, reports and finishes:

- Pending runs are claimed oldest first (by ``createdAt``), a run taken back included; the
  worker looks for them every ``heartbeat`` seconds and on every ``runs`` event.
- On (re)connection the worker names the models it serves (handshake query ``serves``: the
  backend refuses a new run for a model no connected worker serves, and lists them for
  pages), logs in (if credentials are given) and picks up pending runs (connection.py).
- Progress is sent from its own thread, the newest only, rate-limited (progress.py).
- SIGTERM/SIGINT: no new claims; the current run may finish within ``grace`` seconds, else
  it is released back to pending; then the worker exits.

Models: a classification run's ``input`` is one instance as the Serve API takes it (an
image data URL, ``{"b64": ...}`` or a nested list); its result is ``{label, confidences}``.
A generation model's spec gives ``run(model, input, params, report) -> result``
(see ``models.digits_generator.run``). A run of a trainable model folder with ``params.train`` is a
training run: it fine-tunes the model on the run's examples into a new version (training_run.py).
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
from pathlib import Path
from typing import Any

from ..errors import InvalidInput, MarcelleTorchError
from .client import BackendError, BackendUnavailable, is_not_found
from .connection import Connection
from .metrics import WorkerMetrics
from .options import WorkerOptions, run_kind
from .progress import Partial, ProgressSender
from .protocol import RELEASE, RENEW, CurrentRun, Stop, WorkerError, claim, created_at, held_by

__all__ = ["Worker", "WorkerError", "WorkerOptions", "default_name"]

log = logging.getLogger("marcelle_torch.worker")


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
        self.options = options or WorkerOptions()
        self.metrics = metrics or WorkerMetrics()
        self.stopping = threading.Event()
        self.conn = Connection(
            self.backend_url, email, password, self.metrics, self.stopping, self.options.call_timeout
        )
        self.models: dict[str, tuple] = {}
        self.refs: dict[str, str] = {}  # model name -> the reference it was loaded from
        self.published: dict[str, str | None] = {}  # model name -> the store version it runs (None: its own)
        self.events: queue.Queue = queue.Queue()
        self.candidates: dict[str, str] = {}  # pending run id -> createdAt: claimed oldest first
        self.current: CurrentRun | None = None
        self.stop_deadline: float | None = None
        self._next_sweep = 0.0

    # ------------------------------------------------------------------ set-up

    def load_models(self, progress: bool = True) -> None:
        from ..models import get_spec, load_model

        for name in self.model_names:
            spec = get_spec(name)
            module = load_model(spec, train_if_missing=True, progress=progress)
            self.models[spec.name] = (spec.require("worker"), module, spec.run)
            self.refs[spec.name] = name
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
        client = self.conn.client
        client.on("connect", self._on_connect)
        client.on("disconnect", self.conn.on_disconnect)
        client.on("runs created", lambda run: self._on_run_event(run))
        client.on("runs patched", lambda run: self._on_run_event(run))

    def _on_connect(self) -> None:
        # Logged on the reader thread, as it happens: the run loop reads its events only between runs.
        self.conn.on_connect(self.id)
        self.events.put(("connect", None))

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
        self.conn.connect_until_up(self.announcement())
        while not self.stopping.is_set():
            self._drain_events(timeout=0.2)
            if self.stopping.is_set():
                break
            if self.conn.connected and time.monotonic() >= self._next_sweep:
                self._sweep()
            claimed = self._claim_next()
            if claimed is not None:
                self._execute(*claimed)
        self.conn.close()
        if self.conn.fatal:
            raise WorkerError(self.conn.fatal)
        log.info("worker %s stopped", self.id)
        return 0

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
            if payload.get("status") == "pending" and self._takes(payload):
                self.candidates.setdefault(payload["_id"], created_at(payload))
            else:
                self.candidates.pop(payload.get("_id"), None)

    def _on_connected(self) -> None:
        if self.conn.log_in_until_accepted():
            self._next_sweep = 0.0  # pick up pending runs now

    # ------------------------------------------------------------------ finding and claiming

    def _sweep(self) -> None:
        """Refresh the list of pending runs."""
        self._next_sweep = time.monotonic() + self.options.heartbeat
        try:
            pending = self.conn.call(
                "find",
                {
                    "status": "pending",
                    "model": {"$in": list(self.models)},
                    "$sort": {"createdAt": 1},
                    "$limit": 100,
                    "$select": ["_id", "model", "status", "createdAt", "params"],
                },
            )
        except (BackendUnavailable, BackendError) as exc:
            log.warning("cannot look for runs: %s", exc.message)
            return
        self.metrics.pending.set(pending.get("total", 0))
        for run in pending.get("data", []):
            if self._takes(run):
                self.candidates.setdefault(run["_id"], created_at(run))

    def _takes(self, run: dict) -> bool:
        """A run of a model this worker has, of the kind it takes (``--runs``)."""
        return run.get("model") in self.models and self.options.runs in ("all", run_kind(run))

    def _claim_next(self) -> tuple[dict, CurrentRun] | None:
        while self.candidates and not self.stopping.is_set() and self.conn.connected:
            run_id = min(self.candidates, key=lambda id_: self.candidates[id_])
            created = self.candidates.pop(run_id)
            try:
                run = self.conn.call("patch", run_id, *claim(self.id, self.options.lease_timeout))
            except BackendError as exc:
                if is_not_found(exc):
                    continue  # another worker has it, or it was canceled
                log.warning("cannot claim run %s: %s", run_id, exc.message)
                continue
            except BackendUnavailable as exc:
                log.warning("cannot claim run %s: %s", run_id, exc.message)
                self.candidates[run_id] = created
                return None
            self.current = CurrentRun(id=run_id, model=run.get("model"))
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
        current.sender = sender = ProgressSender(
            current.id,
            lambda data: self._patch_own(current, data),
            self.options.max_updates_per_second,
            on_sent=self.metrics.progress_updates.inc,
        )
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
        spec, module, runner = self._published_model(run["model"])

        def report(progress: float, partial: Partial = None) -> None:
            self._check(current)
            self._progress(current, progress, partial)

        params = run.get("params") or {}
        if "publish" in params or "train" in params:
            if spec.task != "classification":
                raise InvalidInput(
                    f"model {spec.name} is a {spec.task} model: only classifiers are trained and published"
                )
            if "publish" in params:
                from .publish_run import run_publish

                return run_publish(spec.name, run, self._store(), report)
            return self._train(run, current, spec, report)
        if spec.task == "classification":
            if "input" not in run or run["input"] is None:
                raise InvalidInput(
                    'run.input is missing: send one instance (an image data URL, {"b64": ...} or a nested list)'
                )
            batch = decode_instances(spec, [run["input"]])
            self._check(current)
            with torch.no_grad():
                return postprocess(spec, module(batch))[0] | {"model_version": spec.version}
        return runner(module, run.get("input"), run.get("params") or {}, report)

    def _train(self, run: dict, current: CurrentRun, spec: Any, report: Callable[[float, Partial], None]) -> dict:
        from .training_run import run_training

        return run_training(
            self._trainable_folder(spec),
            spec,
            run,
            self._store().root,
            report,
            lambda: self._check(current),
            find=self.conn.client.find,
            max_seconds=self.options.max_training_s,
        )

    def _published_model(self, name: str) -> tuple:
        """The model as the store publishes it now (one readlink per run): a newly published
        version is loaded before the run, and the model's own weights come back on a rollback."""
        from ..models import get_spec, load_model
        from ..models.folder import load_folder

        spec, _module, runner = self.models[name]
        published = self._store().published(name) if spec.task == "classification" else None
        if published == self.published.get(name):  # nothing published yet is None: its own weights
            return self.models[name]
        loaded = load_folder(self._store().version_dir(name, published)) if published else get_spec(self.refs[name])
        self.models[name] = (loaded.require("worker"), load_model(loaded), runner)
        self.published[name] = published
        log.info("model %s: now version %s", name, loaded.version)
        return self.models[name]

    def _trainable_folder(self, spec: Any) -> Path:
        """The folder a training of ``spec`` starts from: the published version, the model folder it
        was loaded from, or a trainable built-in's (``digits``)."""
        from ..models.folder import is_folder_ref, resolve_folder

        published = self._store().published_dir(spec.name)
        if published is not None:
            return published
        ref = self.refs[spec.name]
        if is_folder_ref(ref):
            return resolve_folder(ref)
        if spec.trainable is not None:
            return Path(spec.trainable(spec, self._store().base_dir()))
        raise InvalidInput(f"model {spec.name} is not trainable: train a model folder with a `train:` section")

    def _store(self) -> Any:
        from ..models.store import ModelStore

        return ModelStore(self.options.store)

    def _progress(self, current: CurrentRun, progress: float, partial: Partial) -> None:
        """Never waits on the backend: the newest progress is handed to the run's sender."""
        if current.sender is not None:  # set before the model runs (_execute)
            current.sender.offer(progress, partial)

    def _patch_own(self, current: CurrentRun, data: dict) -> dict | None:
        """Write to the run this worker holds; Stop if it no longer does. A lost connection
        only skips the write (the run goes on; the result is retried at the end)."""
        try:
            run = self.conn.call("patch", current.id, {**data, "heartbeatAt": RENEW}, held_by(self.id))
        except BackendError as exc:
            if is_not_found(exc):
                current.request_stop(self._why_gone(current))
                raise Stop(current.reason) from None
            raise
        except BackendUnavailable:
            return None
        return run

    def _why_gone(self, current: CurrentRun) -> str:
        """After a NotFound on our own run: was it canceled, or taken back (lost)?"""
        if current.reason:
            return current.reason
        try:
            run = self.conn.call("get", current.id)
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
                self.conn.call("patch", current.id, {**data, "heartbeatAt": RENEW}, held_by(self.id))
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
            self.conn.call("patch", current.id, RELEASE, held_by(self.id))
            log.info("run %s: released back to pending", current.id)
        except (BackendError, BackendUnavailable) as exc:
            log.warning("run %s: cannot release (%s); its lease will expire", current.id, exc.message)


def default_name() -> str:
    return os.environ.get("HOSTNAME") or socket.gethostname()
