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
    store: str | None = None  # the model store (None: $MARCELLE_TORCH_STORE, else the cache's versions/)
    # Which runs this worker takes: "all", "train" (training and publish runs: a trainer, e.g. on a
    # GPU node) or "infer" (the others), so training does not take the run worker's CPUs.
    runs: str = "all"
    max_training_s: float = 1800.0  # a training run that takes longer fails (with the reason)


RUN_KINDS = ("all", "train", "infer")


def run_kind(run: dict) -> str:
    """ "train" for a training or publish run (``params.train`` / ``params.publish``), else "infer"."""
    params = run.get("params")
    return "train" if isinstance(params, dict) and ("train" in params or "publish" in params) else "infer"
