"""The worker's settings and their defaults, in one place (the CLI's flags read them from here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class WorkerOptions:
    heartbeat: float = 5.0  # seconds between lease renewals (and stale-run sweeps)
    lease_timeout: float = 30.0  # a running run whose heartbeat is older goes back to pending
    grace: float = 20.0  # on SIGTERM, how long the current run may take before it is released
    max_updates_per_second: float = 20.0  # progress patches per run, at most
    call_timeout: float = 30.0
    finish_timeout: float = 120.0  # how long a finished result is retried while the backend is away
    pending_timeout: float = 600.0  # a run pending longer (since its last change) fails; 0: never
