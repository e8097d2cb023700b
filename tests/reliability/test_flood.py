"""Flood: runs created in a burst by 20 clients, drained by two real workers on a real backend:
every run ends (succeeded, or failed with a readable error for a bad input), none is lost, none
is claimed or finished twice. bench/flood.py runs the same code with 500 runs, with 1 and with
2 workers, for the runs/s figures."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from faults import record

pytestmark = pytest.mark.backend

BENCH = Path(__file__).resolve().parents[2] / "bench" / "flood.py"
RUNS, CLIENTS = 500, 20


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_flood", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_burst_of_runs_from_20_clients_all_end_once(make_backend, trained_models, tmp_path):
    bench = load_bench()
    backend = make_backend()
    workers = bench.start_workers(backend.url, 2, tmp_path)
    try:
        figures = bench.flood(backend.url, workers, RUNS, CLIENTS)
    finally:
        for worker in workers:
            worker.stop(timeout=30)
    print(figures)
    assert bench.problems(figures) == [], figures
    assert figures["statuses"] == {"succeeded": RUNS - RUNS // 20, "failed": RUNS // 20}
    record(
        "flood_test",
        {
            k: figures[k]
            for k in ("runs", "clients", "workers", "lost", "claimed_twice", "finished_twice", "runs_per_s", "statuses")
        },
    )
