"""The runs protocol as the worker speaks it (services/backend: runs-hooks.js, run-queue.js).

A run: ``{model, input, params, status, progress, partial, result, error, worker,
heartbeatAt, leaseSeconds, createdAt, updatedAt}``; status goes pending -> running ->
succeeded | failed | canceled. Every write is a conditional patch: the backend applies it only
where the run still matches the condition, atomically, and answers NotFound otherwise.

- Claim: ``{status: running, worker: me, heartbeatAt, leaseSeconds}`` where ``{status:
  pending}``: one worker wins.
- While running, every write is conditional on ``{status: running, worker: me}``: a NotFound
  means the run was canceled or taken back. Writing ``heartbeatAt`` renews the lease; the
  backend stamps it with its own clock, so workers' clocks do not matter.
- Release (on shutdown): back to pending, conditional on holding it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ..errors import MarcelleTorchError

if TYPE_CHECKING:
    from .progress import ProgressSender

SERVICE = "runs"
# Any non-null value renews the lease: the backend replaces it with its own time.
RENEW = "now"


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
    sender: ProgressSender | None = None

    def request_stop(self, reason: str) -> None:
        if not self.stop.is_set():
            self.reason = reason
            self.stop.set()


def claim(worker_id: str, lease_seconds: float) -> tuple[dict, dict]:
    """(data, condition) of a claim."""
    data = {
        "status": "running",
        "worker": worker_id,
        "heartbeatAt": RENEW,
        "leaseSeconds": lease_seconds,
        "progress": 0,
        "partial": None,
        "error": None,
    }
    return data, {"status": "pending"}


def held_by(worker_id: str) -> dict:
    """The condition of every write to a run this worker holds."""
    return {"status": "running", "worker": worker_id}


# Back to pending, for another worker (on shutdown).
RELEASE = {
    "status": "pending",
    "worker": None,
    "heartbeatAt": None,
    "leaseSeconds": None,
    "progress": 0,
    "partial": None,
}


def created_at(run: dict) -> str:
    """A run's creation time (ISO text, sorts in time order); now when the backend gave none."""
    if run.get("createdAt"):
        return run["createdAt"]
    t = datetime.now(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"
