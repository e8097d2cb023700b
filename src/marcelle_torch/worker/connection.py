"""The worker's connection to the Marcelle backend: connecting until it answers, logging in
(again after a reconnection), and calls on the runs service."""

from __future__ import annotations

import logging
import threading
from typing import Any

from .client import BackendError, BackendUnavailable, FeathersClient
from .metrics import WorkerMetrics
from .protocol import SERVICE

log = logging.getLogger("marcelle_torch.worker")


class Connection:
    def __init__(
        self,
        backend_url: str,
        email: str | None,
        password: str | None,
        metrics: WorkerMetrics,
        stopping: threading.Event,
        call_timeout: float,
    ):
        self.backend_url = backend_url
        self.email, self.password = email, password
        self.metrics = metrics
        self.stopping = stopping
        self.client = FeathersClient(backend_url, timeout=call_timeout)
        self.fatal: str | None = None
        self._connected_once = False

    @property
    def connected(self) -> bool:
        return self.client.connected

    def connect_until_up(self, serves: str) -> None:
        """Connect, retrying (backing off) until the backend answers or the worker stops.
        ``serves`` names the models (the handshake's ``serves``, services/backend/workers.js)."""
        delay = 0.5
        while not self.stopping.is_set():
            try:
                self.client.connect(query={"serves": serves})
                return
            except BackendUnavailable as exc:
                log.warning("%s; retrying in %.1fs", exc.message, delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, 5.0)

    def on_connect(self, worker_id: str) -> None:
        """The reader thread's connect event."""
        log.info("connected to %s as %s", self.backend_url, worker_id)
        if self._connected_once:
            self.metrics.reconnects.inc()
        self._connected_once = True
        if not self.email:
            self.metrics.up.set(1)

    def on_disconnect(self) -> None:
        log.warning("disconnected from %s; reconnecting", self.backend_url)
        self.metrics.up.set(0)

    def log_in_until_accepted(self) -> bool:
        """After a connection: log in. Throttled (429), the backend failing (5xx) or not
        answering: wait and try again, for as long as it takes; only refused credentials (401)
        are fatal (``fatal`` says why, and the worker stops). True once logged in."""
        delay = 1.0
        while not self.stopping.is_set():
            try:
                self.login()
                return True
            except BackendError as exc:
                if exc.http_code != 429 and (exc.http_code or 0) < 500:
                    log.error("cannot log in to the backend as %s: %s", self.email, exc.message)
                    self.fatal = f"cannot log in to the backend as {self.email}: {exc.message}"
                    self.stopping.set()
                    return False
                log.warning("log in refused for now (%s); retrying in %.0fs", exc.message, delay)
            except BackendUnavailable as exc:
                if not self.client.connected:
                    log.warning("log in failed (%s); will retry on reconnection", exc.message)
                    return False
                log.warning("log in failed (%s); retrying in %.0fs", exc.message, delay)
            self.stopping.wait(delay)
            delay = min(delay * 2, 60.0)
        return False

    def login(self) -> None:
        if self.email:
            self.client.authenticate(self.email, self.password or "")
            self.metrics.up.set(1)
            log.info("logged in as %s", self.email)

    def call(self, method: str, *args: Any) -> Any:
        """A call on the runs service; logs in again if a new connection is not yet logged in
        (after a reconnection during a run, before the run loop has seen it)."""
        try:
            return getattr(self.client, method)(SERVICE, *args)
        except BackendError as exc:
            if exc.name != "NotAuthenticated" or not self.email:
                raise
        self.login()
        return getattr(self.client, method)(SERVICE, *args)

    def close(self) -> None:
        self.client.disconnect()
        self.metrics.up.set(0)
