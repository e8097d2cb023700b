"""The worker's settings and their defaults, in one place (the CLI's flags read them from here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class WorkerOptions:
    heartbeat: float = 5.0  # seconds between lease renewals (and looks for pending runs)
    # How long this worker's lease on a run lasts without a renewal; the backend puts the run
    # back to pending when it expires (services/backend/run-queue.js).
    lease_timeout: float = 30.0
    grace: float = 20.0  # on SIGTERM, how long the current run may take before it is released
    max_updates_per_second: float = 20.0  # progress patches per run, at most
    call_timeout: float = 30.0
    finish_timeout: float = 120.0  # how long a finished result is retried while the backend is away
    store: str | None = None  # where training runs write model versions (None: the cache's versions/)
