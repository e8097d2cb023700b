"""Helpers of the fault, flood, soak and fuzz scenarios (real backend, workers and Serve).

- ``RunEvents(url)``: an observer connected to the backend like a page, recording every
  ``runs created``/``runs patched`` event, so a test counts the ``succeeded`` transitions and
  the result writes of each run (each accepted write sends exactly one event);
- ``claims(workers)`` / ``completions(workers)``: per run id, how often the workers' logs say
  they claimed it / wrote its outcome as succeeded (a computation finished);
- ``replica_pids(session, deployment)``: the PIDs of a Serve deployment's replica actors (``ps``)
  in one Serve's session;
- ``record(name, figures)``: a scenario's measured figures into bench/out/reliability/,
  where bench/soak.py gathers them into the docs' Reliability table.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = ROOT / "tests" / "integration" / "support"
STEADY_ENV = {"PYTHONPATH": str(SUPPORT)}
STEADY = ("--models", "steady_model:spec")
FINAL = ("succeeded", "failed", "canceled")
FIGURES = ROOT / "bench" / "out" / "reliability"


class RunEvents:
    """Every ``runs`` event the backend sends to a connected page, with its arrival time."""

    def __init__(self, url: str):
        from marcelle_torch.worker.client import FeathersClient

        self.client = FeathersClient(url)
        self.events: list[tuple[float, str, dict]] = []
        self._lock = threading.Lock()
        for kind in ("created", "patched"):
            self.client.on(f"runs {kind}", lambda doc, kind=kind: self._add(kind, doc))
        self.client.connect()

    def _add(self, kind: str, doc) -> None:
        if isinstance(doc, dict):
            with self._lock:
                self.events.append((time.monotonic(), kind, doc))

    def of(self, run_id: str, kind: str = "patched") -> list[dict]:
        with self._lock:
            return [doc for _, k, doc in self.events if k == kind and doc.get("_id") == run_id]

    def succeeded(self, run_id: str) -> int:
        """Writes that left the run ``succeeded`` (one per accepted write)."""
        return sum(1 for doc in self.of(run_id) if doc.get("status") == "succeeded")

    def result_writes(self, run_id: str) -> int:
        return sum(1 for doc in self.of(run_id) if doc.get("result") is not None)

    def close(self) -> None:
        self.client.disconnect()


def _log_counter(workers, pattern: str) -> Counter:
    counts: Counter = Counter()
    for worker in workers:
        counts.update(re.findall(pattern, worker.log_text()))
    return counts


def claims(workers) -> Counter:
    return _log_counter(workers, r"run (\S+): claimed")


def completions(workers) -> Counter:
    return _log_counter(workers, r"run (\S+): succeeded in ")


def process_name(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    return " ".join(part.decode(errors="replace") for part in cmd[:4] if part)[:100]


def replica_pids(session: int, deployment: str = "model-digits") -> list[int]:
    """PIDs of the live replica actors of ``deployment`` (Ray names the process
    ``ray::ServeReplica:<app>:<deployment>``) in session ``session``: the ``marcelle-torch
    serve`` under test (started in a session of its own), never another Serve on the machine."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,stat=,args="], capture_output=True, text=True).stdout
    pids = []
    for line in out.splitlines():
        pid, sid, stat, args = line.strip().split(None, 3)
        if (
            sid == str(session)
            and not stat.startswith("Z")
            and re.match(rf"ray::ServeReplica:[^:\s]+:{re.escape(deployment)}\b", args)
        ):
            pids.append(int(pid))
    return pids


def record(name: str, figures: dict) -> Path:
    """Write a scenario's figures (with the date) for bench/soak.py's table."""
    from marcelle_torch.files import atomic_write_text

    FIGURES.mkdir(parents=True, exist_ok=True)
    path = FIGURES / f"{name}.json"
    figures = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), **figures}
    atomic_write_text(path, json.dumps(figures, indent=2) + "\n")
    print(f"{name}: {json.dumps(figures)}")
    return path
