"""Backend runs (Solution 3), timed as a page sees them, against the same generation in process.

Each timed run is done twice in a row, in process and through the backend (same digit, seed and
steps; which goes first alternates), and the overhead is the median of the pairs' ratios: the
machine is shared and its load drifts.

- ``in-process``: ``digits-generator``'s ``run()`` called here, ``--steps`` denoising steps, with
  a report callback that does nothing (the model's own time), torch on ``--threads`` threads;
- ``backend``: the same runs created in a real Marcelle backend (``services/backend``) by a
  Socket.IO client (the protocol Marcelle's web client speaks) and done by a real
  ``marcelle-torch worker`` process with the same torch threads. The client times, from its own
  ``runs patched`` events: create -> claim (the first ``running`` event), claim -> succeeded,
  and create -> succeeded (total); the overhead is total / in-process - 1;
- ``long run``: one ``--long-steps`` generation through the backend; progress events seen by
  the client per second while it runs, and how many carried a partial image.

Writes bench/out/runs_latency.{json,md}:
    .venv/bin/python bench/runs_latency.py [--steps 200] [--runs 10] [--long-steps 1000] [--threads 1]
Needs services/backend installed (make setup) and the weights in MARCELLE_TORCH_CACHE (make sets it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from marcelle_torch.files import atomic_write_text
from marcelle_torch.stack.worker import start_worker

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
MODEL = "digits-generator"
GOAL_OVERHEAD = 0.15
GOAL_UPDATES = 10.0


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def in_process_runner(threads: int):
    """A function (digit, steps, seed) -> seconds of one generation here, no reporting."""
    import torch

    from marcelle_torch.models import get_spec, load_model

    torch.set_num_threads(threads)
    spec = get_spec(MODEL)
    module = load_model(spec, train_if_missing=True, progress=True)

    def run(digit: int, steps: int, seed: int) -> float:
        t0 = time.perf_counter()
        spec.run(module, {"digit": digit}, {"steps": steps, "seed": seed}, lambda progress, partial=None: None)
        return time.perf_counter() - t0

    run(0, steps=20, seed=0)  # warm-up
    return run


class Recorder:
    """Every ``runs patched`` event, with the client's arrival time, by run id."""

    def __init__(self, client):
        self.events: dict[str, list[tuple[float, dict]]] = {}
        self.cond = threading.Condition()
        client.on("runs patched", self._on)

    def _on(self, run) -> None:
        now = time.perf_counter()
        with self.cond:
            self.events.setdefault(run.get("_id"), []).append((now, run))
            self.cond.notify_all()

    def wait_done(self, run_id: str, timeout: float = 600) -> list[tuple[float, dict]]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                seen = self.events.get(run_id, [])
                if seen and seen[-1][1].get("status") in ("succeeded", "failed", "canceled"):
                    return list(seen)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"run {run_id} did not finish in {timeout:.0f}s (events: {len(seen)})")
                self.cond.wait(left)


def one_run(client, recorder: Recorder, digit: int, steps: int, seed: int) -> dict:
    t0 = time.perf_counter()
    run = client.create("runs", {"model": MODEL, "input": {"digit": digit}, "params": {"steps": steps, "seed": seed}})
    events = recorder.wait_done(run["_id"])
    done_at, last = events[-1]
    if last["status"] != "succeeded":
        raise RuntimeError(f"run {run['_id']} {last['status']}: {last.get('error')}")
    running = [(t, e) for t, e in events if e.get("status") == "running"]
    claim_at = running[0][0] if running else done_at
    progress_events = [(t, e) for t, e in running[1:]]  # after the claim itself
    return {
        "total_s": done_at - t0,
        "claim_s": claim_at - t0,
        "claim_to_done_s": done_at - claim_at,
        "progress_events": len(progress_events),
        "partials": sum(1 for _, e in progress_events if e.get("partial")),
        "progress_values": [e.get("progress") for _, e in progress_events],
        "first_progress_at_s": (progress_events[0][0] - claim_at) if progress_events else None,
        "last_progress_at_s": (progress_events[-1][0] - claim_at) if progress_events else None,
    }


def median(values):
    return round(statistics.median(values), 4)


def markdown(results: dict) -> str:
    """The report as Markdown, from its JSON alone (the docs render it the same way)."""
    s = results["summary"]
    ok_overhead = s["overhead_pct"] <= 100 * GOAL_OVERHEAD
    ok_updates = s["long_run_updates_per_s"] >= GOAL_UPDATES
    lines = [
        "# Backend runs: latency as the page sees it",
        "",
        f"{results['date']}, {results['machine']['cpus']} CPUs, load average {results['machine']['load_before']} "
        f"before, {results['machine']['load_after']} after; `{results['command']}`; torch threads {results['threads']} "
        "in process and in the worker.",
        "",
        "| figure | value | goal |",
        "|---|---:|---|",
        f"| in-process generation, {results['steps']} steps (p50 of {results['runs']}) | "
        f"{s['in_process_p50_s'] * 1000:.0f} ms | |",
        f"| through the backend, create -> succeeded event (p50) | {s['backend_total_p50_s'] * 1000:.0f} ms | |",
        f"| overhead of the backend path (median of the {results['runs']} pairs' ratios; of the medians: "
        f"{s['overhead_of_medians_pct']:+.1f}%) | {s['overhead_pct']:+.1f}% | <= +{100 * GOAL_OVERHEAD:.0f}% "
        f"({'met' if ok_overhead else 'not met'}) |",
        f"| create -> claimed (first running event, p50) | {s['claim_p50_ms']:.1f} ms | |",
        f"| claimed -> succeeded event (p50) | {s['claim_to_done_p50_s'] * 1000:.0f} ms | |",
        f"| progress events per {results['steps']}-step run (p50) | {s['progress_events_p50']} | |",
        f"| long run ({results['long_run']['steps']} steps, {s['long_run_s']:.2f} s): progress events seen per "
        "second | "
        f"{s['long_run_updates_per_s']:.1f} | >= {GOAL_UPDATES:.0f} ({'met' if ok_updates else 'not met'}) |",
        f"| long run: events with a partial image | {results['long_run']['partials']} of "
        f"{results['long_run']['progress_events']} | |",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="denoising steps of the timed runs (default 200)")
    parser.add_argument("--runs", type=int, default=10, help="timed runs each way (default 10)")
    parser.add_argument("--long-steps", type=int, default=1000, help="steps of the long run (default 1000, the max)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, here and in the worker (default 1)")
    parser.add_argument(
        "--worker-arg",
        action="append",
        default=[],
        help="an extra `marcelle-torch worker` argument (repeatable), e.g. --worker-arg=--max-updates-per-second=20",
    )
    args = parser.parse_args(argv)

    from marcelle_torch.stack.backend import start_backend
    from marcelle_torch.worker.client import FeathersClient

    results = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "command": " ".join(["bench/runs_latency.py", *(argv or sys.argv[1:])]),
        "machine": {"cpus": os.cpu_count(), "load_before": load()},
        "steps": args.steps,
        "runs": args.runs,
        "threads": args.threads,
        "worker_args": args.worker_arg,
    }
    local_run = in_process_runner(args.threads)

    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="runs-latency-") as tmp:
        tmp = Path(tmp)
        backend = start_backend(tmp / "backend", port=0, host="127.0.0.1", log_path=OUT / "runs_latency.backend.log")
        worker = None
        client = None
        try:
            print(f"backend {backend.url}; starting a worker", flush=True)
            worker = start_worker(
                backend.url,
                name="bench",
                models=[MODEL],
                threads=args.threads,
                args=args.worker_arg,
                log_path=OUT / "runs_latency.worker.log",
            )
            client = FeathersClient(backend.url)
            client.connect()
            recorder = Recorder(client)
            one_run(client, recorder, 0, args.steps, 0)  # warm-up: first claim, first patches
            local_run(0, args.steps, 0)
            time.sleep(1.0)
            # In pairs, the same run in process then through the backend, so that the machine's
            # drifting load (it is shared) weighs on both sides of each ratio alike.
            timed, local = [], []
            for i in range(args.runs):
                # Which side goes first alternates: the second of two runs finds a warmer CPU.
                if i % 2 == 0:
                    local.append(local_run(i % 10, args.steps, i))
                    time.sleep(0.3)
                r = one_run(client, recorder, i % 10, args.steps, i)
                if i % 2 == 1:
                    time.sleep(0.3)
                    local.append(local_run(i % 10, args.steps, i))
                r["in_process_s"] = local[-1]
                r["ratio"] = r["total_s"] / local[-1]
                timed.append(r)
                print(
                    f"  pair {i + 1}: in process {local[-1] * 1000:.0f} ms, backend total {r['total_s'] * 1000:.0f} ms "
                    f"({100 * (r['ratio'] - 1):+.0f}%), claim {r['claim_s'] * 1000:.1f} ms, "
                    f"{r['progress_events']} progress events",
                    flush=True,
                )
                time.sleep(0.3)
            results["backend_runs"] = timed
            print(f"long run: {args.long_steps} steps", flush=True)
            long = one_run(client, recorder, 8, args.long_steps, 123)
            span = (long["last_progress_at_s"] or 0) - (long["first_progress_at_s"] or 0)
            long["updates_per_s"] = round((long["progress_events"] - 1) / span, 2) if span > 0 else 0.0
            results["long_run"] = {k: v for k, v in long.items() if k != "progress_values"} | {"steps": args.long_steps}
        finally:
            if client is not None:
                client.disconnect()
            if worker is not None:
                worker.stop()
            backend.stop()

    local_p50 = statistics.median(local)
    total_p50 = statistics.median(r["total_s"] for r in results["backend_runs"])
    results["summary"] = {
        "in_process_p50_s": median(local),
        "backend_total_p50_s": round(total_p50, 4),
        "overhead_pct": round(100 * (statistics.median(r["ratio"] for r in results["backend_runs"]) - 1), 1),
        "overhead_of_medians_pct": round(100 * (total_p50 / local_p50 - 1), 1),
        "claim_p50_ms": round(1000 * statistics.median(r["claim_s"] for r in results["backend_runs"]), 1),
        "claim_to_done_p50_s": median([r["claim_to_done_s"] for r in results["backend_runs"]]),
        "progress_events_p50": statistics.median(r["progress_events"] for r in results["backend_runs"]),
        "long_run_updates_per_s": results["long_run"]["updates_per_s"],
        "long_run_s": round(results["long_run"]["claim_to_done_s"], 3),
    }
    results["machine"]["load_after"] = load()
    atomic_write_text(OUT / "runs_latency.json", json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    atomic_write_text(OUT / "runs_latency.md", text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
