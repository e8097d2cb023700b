"""Supervision of the local stack's children: one that dies is restarted, with backoff.

A child is anything with ``alive()`` and ``stop()`` made by a ``start()`` callable (a
ManagedProcess, a BackendHandle). The supervisor checks every ``interval`` seconds; a dead
child is started again after 1, 2, 4 … 30 s (the delay doubles while restarts keep failing
quickly and resets once a child has stayed up a minute), says so on the console, and counts
it in ``marcelle_torch_stack_restarts_total{component}`` (exported by the stack's health
probe when monitoring is on).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter

MAX_BACKOFF_S = 30.0
STABLE_AFTER_S = 60.0  # a child up this long has recovered: the next failure waits 1 s again


class Child(Protocol):
    def alive(self) -> bool: ...

    def stop(self) -> object: ...


def exit_code(child: Child) -> int | None:
    proc = getattr(child, "proc", None) or getattr(getattr(child, "process", None), "proc", None)
    return proc.returncode if proc is not None else None


class Supervised:
    def __init__(self, name: str, start: Callable[[], Child], first: Child | None = None):
        self.name = name
        self.start = start
        self.child: Child | None = first if first is not None else start()
        self.started_at = time.monotonic()
        self.quick_failures = 0
        self.due: float | None = None  # when the next start is due, while the child is down


class Supervisor:
    def __init__(self, say: Callable[[str], None] = lambda msg: None, interval: float = 0.5):
        self.say = say
        self.interval = interval
        self.registry = CollectorRegistry()
        self.restarts = Counter(
            "marcelle_torch_stack_restarts",
            "Children of the local stack restarted after they died, by component.",
            ["component"],
            registry=self.registry,
        )
        self._children: list[Supervised] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, name: str, start: Callable[[], Child], first: Child | None = None) -> Supervised:
        """Start a child now (errors propagate: a stack that cannot start fails at once), or take
        ``first``, already started, and watch it from then on."""
        entry = Supervised(name, start, first)
        with self._lock:
            self._children.append(entry)
        return entry

    def watch(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="supervisor", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stopping.wait(self.interval):
            with self._lock:
                children = list(self._children)
            for entry in children:
                if self._stopping.is_set():
                    return
                self._check(entry)

    def _check(self, entry: Supervised) -> None:
        now = time.monotonic()
        if entry.child is not None and entry.child.alive():
            return
        if entry.due is None:
            stable = entry.child is not None and now - entry.started_at >= STABLE_AFTER_S
            entry.quick_failures = 0 if stable else entry.quick_failures + 1
            delay = min(2.0 ** max(entry.quick_failures - 1, 0), MAX_BACKOFF_S)
            code = exit_code(entry.child) if entry.child is not None else None
            how = f"exited with code {code}" if code is not None else "is down"
            self.say(f"{entry.name} {how}; restarting it in {delay:g}s")
            if entry.child is not None:
                entry.child.stop()
            entry.child, entry.due = None, now + delay
            return
        if now < entry.due:
            return
        entry.due = None
        entry.started_at = time.monotonic()
        try:
            entry.child = entry.start()
        except Exception as exc:  # it failed to start: try again later, longer
            self.say(f"{entry.name} failed to restart: {getattr(exc, 'message', exc)}")
            entry.child = None
            return
        finally:
            self.restarts.labels(component=entry.name).inc()
        self.say(f"{entry.name} restarted")

    def stop(self) -> None:
        """Stop watching (a stack being stopped must not restart what it stops)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def current(self, name: str) -> Child | None:
        with self._lock:
            return next((e.child for e in self._children if e.name == name), None)
