"""The Marcelle backend's memory under many runs: a leak grows with the runs, a heap that sizes
itself levels off.

The soak (bench/soak.py) sends a run every 2 s; at that pace ten minutes are a few hundred runs,
and node's resident memory is still growing when the soak ends. This bench sends runs twenty
times faster (classifier and generator in turn, done by a real ``marcelle-torch worker``) into a
fresh real backend, samples the backend's RSS every ``--every`` seconds, and compares the growth
over the second half of the runs with the first half: a leak keeps its pace, a heap that has
found its size stops. The runs' own data (NeDB keeps them in memory) is reported beside it.

With ``--keep-runs SECONDS`` the backend removes finished runs that old (its retention
setting), so it holds a bounded number of runs: what is left of the growth is node's own.

Writes bench/out/backend_memory.{json,md} (backend_memory_kept.{json,md} with --keep-runs):
    .venv/bin/python bench/backend_memory.py [--seconds 360] [--rate 10] [--every 20] [--keep-runs 30]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"


def live_runs_mib(path: Path) -> float:
    """The JSON size of the runs as stored now (NeDB's file appends every write; the last line
    of each id is the run, the one NeDB holds in memory)."""
    runs = {}
    for line in path.read_text().splitlines():
        doc = json.loads(line)
        if doc.get("$$deleted"):  # a removal (the retention setting)
            runs.pop(doc["_id"], None)
        elif "_id" in doc:
            runs[doc["_id"]] = line
    return sum(len(line) for line in runs.values()) / 2**20


def markdown(report: dict) -> str:
    """The report as Markdown, from its JSON alone (the docs render it the same way)."""
    keep = report["keep_finished_runs_s"]
    kept = f" removing finished runs after {keep} s" if keep else " keeping every run"
    lines = [
        f"# The backend's memory under many runs ({report['date']})",
        "",
        f"`{report['command']}`: {report['runs']} runs at {report['rate_per_s']:g}/s (classifier and "
        "generator in turn), "
        f"a fresh backend{kept}; the runs it holds at the end are {report['runs_json_mib']:.2f} MiB of JSON "
        "(NeDB keeps them in memory).",
        "",
        "| seconds | runs created | backend RSS (MiB) |",
        "|---:|---:|---:|",
        *[f"| {s['s']} | {s['runs']} | {s['rss_mib']} |" for s in report["samples"]],
        "",
        f"RSS growth over the first half of the runs: **{report['growth_first_half_mib']:+.1f} MiB**; over "
        f"the second half: "
        f"**{report['growth_second_half_mib']:+.1f} MiB**.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from serve_latency import digit_instances

    from marcelle_torch.files import atomic_write_text
    from marcelle_torch.processes import StartupError, rss_kib, threads_per_process
    from marcelle_torch.stack.backend import start_backend
    from marcelle_torch.stack.worker import start_worker
    from marcelle_torch.worker.client import FeathersClient

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=360.0)
    parser.add_argument("--rate", type=float, default=10.0, help="runs created per second")
    parser.add_argument("--every", type=float, default=20.0, help="seconds between RSS samples")
    parser.add_argument("--keep-runs", type=int, default=0, help="the backend's retention of finished runs (s)")
    parser.add_argument("--workdir", type=Path, default=REPO / "var" / "bench-backend-memory")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    os.environ.setdefault("MARCELLE_TORCH_CACHE", str(REPO / ".cache" / "models"))

    shutil.rmtree(args.workdir / "backend", ignore_errors=True)  # a fresh backend: no earlier runs
    args.workdir.mkdir(parents=True, exist_ok=True)
    images = [instance for instance, _label in digit_instances(10)]
    backend = start_backend(
        args.workdir / "backend",
        log_path=args.workdir / "backend.log",
        keep_finished_runs_s=args.keep_runs,
        # Runs sent faster than one user's quota allows: the memory is what is measured here.
        extra_env={"MARCELLE_RUNS_PER_MINUTE": "1000000"},
    )
    samples = []
    worker = None
    try:
        try:
            worker = start_worker(
                backend.url, name="memory", threads=threads_per_process(1), log_path=args.workdir / "worker.log"
            )
        except StartupError as exc:
            print(exc.message, file=sys.stderr)
            return 1
        client = FeathersClient(backend.url)
        client.connect()
        t0 = time.monotonic()
        created, next_sample = 0, t0
        while (now := time.monotonic()) < t0 + args.seconds:
            if now >= next_sample:
                samples.append(
                    {"s": round(now - t0), "runs": created, "rss_mib": round(rss_kib(backend.process.pid) / 1024, 1)}
                )
                print(samples[-1], flush=True)
                next_sample += args.every
            if created % 2:
                client.create("runs", {"model": "digits", "input": images[created % len(images)]})
            else:
                client.create(
                    "runs", {"model": "digits-generator", "input": {"digit": created % 10}, "params": {"steps": 20}}
                )
            created += 1
            time.sleep(max(0.0, t0 + created / args.rate - time.monotonic()))
        samples.append(
            {
                "s": round(time.monotonic() - t0),
                "runs": created,
                "rss_mib": round(rss_kib(backend.process.pid) / 1024, 1),
            }
        )
        client.disconnect()
    finally:
        if worker is not None:
            worker.stop()
        backend.stop()
    live_mib = live_runs_mib(args.workdir / "backend" / "runs.db")

    half = len(samples) // 2
    first, middle, last = samples[0], samples[half], samples[-1]
    first_half, second_half = middle["rss_mib"] - first["rss_mib"], last["rss_mib"] - middle["rss_mib"]
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "command": "python bench/backend_memory.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "runs": created,
        "rate_per_s": args.rate,
        "keep_finished_runs_s": args.keep_runs,
        "samples": samples,
        "growth_first_half_mib": round(first_half, 1),
        "growth_second_half_mib": round(second_half, 1),
        "runs_json_mib": round(live_mib, 2),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = "backend_memory_kept" if args.keep_runs else "backend_memory"
    atomic_write_text(args.out / f"{name}.json", json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    atomic_write_text(args.out / f"{name}.md", text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
