"""A run's progress, sent from its own thread so that the model loop never waits on the backend."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .client import BackendError, BackendUnavailable
from .protocol import Stop

log = logging.getLogger("marcelle_torch.worker")

# A partial result (JSON) or a callable that makes it, called only when it is sent.
Partial = Any | Callable[[], Any] | None


class ProgressSender:
    """``offer()`` (the model's thread) only replaces the newest (progress, partial) and returns;
    the sender patches the newest at most ``max_per_second`` times a second through ``patch``
    and drops the ones it had no time for. A partial given as a function (e.g. one that encodes
    a PNG) is called only for the values that are sent. ``patch`` raising Stop (the run was
    canceled or taken back) ends it: the model's next report raises Stop too.
    """

    def __init__(
        self,
        run_id: str,
        patch: Callable[[dict], object],
        max_per_second: float,
        on_sent: Callable[[], object] | None = None,
    ):
        self.run_id = run_id
        self.patch = patch
        self.interval = 1.0 / max_per_second
        self.on_sent = on_sent or (lambda: None)
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
                self._thread = threading.Thread(target=self._loop, daemon=True, name=f"progress-{self.run_id}")
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
        data = {"progress": round(float(progress), 4)}
        try:
            if partial is not None:
                data["partial"] = partial() if callable(partial) else partial
        except Exception as exc:  # a partial that cannot be made: the run goes on without it
            log.warning("run %s: partial result failed: %s: %s", self.run_id, type(exc).__name__, exc)
        if self._closed:
            return
        try:
            self.patch(data)
        except Stop:
            return  # the run's stop is requested: the model's next report raises
        except (BackendError, BackendUnavailable) as exc:
            log.warning("run %s: progress not sent: %s", self.run_id, exc.message)
            return
        self.on_sent()
