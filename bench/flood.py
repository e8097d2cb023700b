"""Flood: many runs created in a burst through the Marcelle backend, drained by 1 and by 2 workers.

For each worker count, on a fresh backend (NeDB files) with fresh ``marcelle-torch worker``
processes (torch threads = cores / workers, as ``marcelle-torch up`` sizes them): ``--clients``
Socket.IO clients create ``--runs`` runs of the ``digits`` classifier at once (a drawn digit
each; one in 20 with an input of the wrong shape, which must end ``failed`` with a readable error).
Then it waits for every run to end and checks that none was lost (every created id ends
succeeded or failed, the total matches) and none was done twice (the workers' logs: one claim
and one outcome per run; the runs events: at most one ``succeeded`` write per run).

Writes bench/out/flood.{json,md}; tests/reliability/test_flood.py runs the same code smaller.
    .venv/bin/python bench/flood.py [--runs 500] [--clients 20] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
FINAL = ("succeeded", "failed", "canceled")


def digit_inputs(n: int = 10) -> list[str]:
    """Held-out digits drawn on 128x128 canvases, as PNG data URLs (what the page sends)."""
    sys.path.insert(0, str(REPO / "bench"))
    from serve_latency import digit_instances

    return [f"data:image/png;base64,{inst['b64']}" for inst, _ in digit_instances(n)]


def start_workers(backend_url: str, count: int, logs: Path, models: str = "digits") -> list:
    """``count`` workers on ``backend_url``, launched together, returned once all are connected."""
    from marcelle_torch.processes import threads_per_process
    from marcelle_torch.stack.worker import start_worker

    threads = threads_per_process(count)
    workers = []
    try:
        for i in range(count):
            workers.append(
                start_worker(
                    backend_url,
                    name=f"flood-{i + 1}",
                    models=models.split(","),
                    threads=threads,
                    log_path=logs / f"worker-{i + 1}.log",
                    wait=False,
                )
            )
        for worker in workers:
            worker.wait_ready()
    except BaseException:
        for worker in workers:
            worker.stop(timeout=30)
        raise
    return workers


def flood(
    backend_url: str, workers: list, runs: int, clients: int, bad_every: int = 20, timeout: float = 900.0
) -> dict:
    """Create ``runs`` runs from ``clients`` clients at once; wait for all; check; figures."""
    from marcelle_torch.worker.client import FeathersClient

    inputs = digit_inputs()
    observer = FeathersClient(backend_url)
    succeeded_writes: Counter = Counter()
    observer.on(
        "runs patched",
        lambda doc: (
            isinstance(doc, dict) and doc.get("status") == "succeeded" and succeeded_writes.update([doc["_id"]])
        ),
    )
    observer.connect()
    conns = []
    for _ in range(clients):
        c = FeathersClient(backend_url)
        c.connect()
        conns.append(c)
    created: list[tuple[str, bool]] = []
    errors: list[str] = []
    lock = threading.Lock()
    go = threading.Event()

    def client(k: int) -> None:
        go.wait()
        for i in range(k, runs, clients):
            bad = bad_every and i % bad_every == bad_every - 1
            data = {"model": "digits", "input": [[2.0] * 4] * 4 if bad else inputs[i % len(inputs)], "params": {}}
            try:
                doc = conns[k].create("runs", data)
                with lock:
                    created.append((doc["_id"], bool(bad)))
            except Exception as exc:  # noqa: BLE001 - reported, and fails the check below
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    started = time.monotonic()
    go.set()
    for t in threads:
        t.join()
    created_s = time.monotonic() - started
    deadline = started + timeout
    while True:
        open_runs = observer.find("runs", {"status": {"$in": ["pending", "running"]}, "$limit": 0})["total"]
        if open_runs == 0:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"{open_runs} runs still open after {timeout:.0f}s")
        time.sleep(0.25)
    drained_s = time.monotonic() - started
    time.sleep(1.0)  # the last events reach the observer

    docs = {}
    skip = 0
    while True:
        page = observer.find("runs", {"$limit": 500, "$skip": skip, "$select": ["_id", "status", "error", "worker"]})
        docs.update({d["_id"]: d for d in page["data"]})
        skip += len(page["data"])
        if not page["data"] or skip >= page["total"]:
            break
    for c in conns + [observer]:
        c.disconnect()

    logs = "".join(w.log_text() for w in workers)
    claims = Counter(re.findall(r"run (\S+): claimed", logs))
    outcomes = Counter(re.findall(r"run (\S+): (?:succeeded|failed) in ", logs))
    ids = [i for i, _ in created]
    bad_ids = {i for i, bad in created if bad}
    statuses = Counter(docs[i]["status"] if i in docs else "missing" for i in ids)
    unreadable = [
        docs[i]
        for i in bad_ids
        if i in docs and not (docs[i]["status"] == "failed" and "wrong shape" in (docs[i]["error"] or ""))
    ]
    return {
        "runs": runs,
        "clients": clients,
        "workers": len(workers),
        "create_errors": errors[:5],
        "created": len(ids),
        "total_in_backend": len(docs),
        "statuses": dict(statuses),
        "lost": sum(1 for i in ids if i not in docs or docs[i]["status"] not in FINAL),
        "claimed_twice": sum(1 for i in ids if claims[i] > 1),
        "never_claimed": sum(1 for i in ids if claims[i] == 0),
        "finished_twice": sum(1 for i in ids if outcomes[i] > 1),
        "succeeded_written_twice": sum(1 for n in succeeded_writes.values() if n > 1),
        "bad_inputs": len(bad_ids),
        "bad_without_readable_failure": len(unreadable),
        "good_not_succeeded": sum(1 for i in ids if i not in bad_ids and docs.get(i, {}).get("status") != "succeeded"),
        "created_s": round(created_s, 2),
        "drained_s": round(drained_s, 2),
        "runs_per_s": round(len(ids) / drained_s, 2),
    }


def problems(figures: dict) -> list[str]:
    """What breaks the guarantee in one flood's figures (empty when all is well)."""
    out = []
    if figures["create_errors"]:
        out.append(f"create errors: {figures['create_errors']}")
    if figures["created"] != figures["runs"] or figures["total_in_backend"] != figures["runs"]:
        out.append(f"created {figures['created']} of {figures['runs']}, {figures['total_in_backend']} in the backend")
    for key in (
        "lost",
        "claimed_twice",
        "never_claimed",
        "finished_twice",
        "succeeded_written_twice",
        "bad_without_readable_failure",
        "good_not_succeeded",
    ):
        if figures[key]:
            out.append(f"{key}: {figures[key]}")
    return out


def run_one(workers_count: int, runs: int, clients: int, workdir: Path) -> dict:
    from marcelle_torch.stack.backend import start_backend

    # A fresh backend each round: runs left by an earlier invocation would be counted.
    shutil.rmtree(workdir / "backend", ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    backend = start_backend(workdir / "backend", log_path=workdir / "backend.log")
    workers = []
    try:
        workers = start_workers(backend.url, workers_count, workdir)
        return flood(backend.url, workers, runs, clients)
    finally:
        for w in workers:
            w.stop(timeout=30)
        backend.stop()


def markdown(report: dict) -> str:
    """The report as Markdown, from its JSON alone (the docs render it the same way)."""
    rows = [
        "| workers | runs | clients | runs/s | drained in | lost | claimed twice | finished twice | statuses |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        rows.append(
            f"| {r['workers']} | {r['runs']} | {r['clients']} | {r['runs_per_s']} | {r['drained_s']} s | "
            f"{r['lost']} | {r['claimed_twice']} | {r['finished_twice']} | "
            f"{', '.join(f'{k} {v}' for k, v in sorted(r['statuses'].items()))} |"
        )
    return f"Flood ({report['date']}, {report['cores']} cores): `{report['command']}`\n\n" + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    from marcelle_torch.files import atomic_write_text

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workdir", type=Path, default=REPO / "var" / "bench-flood")
    args = parser.parse_args(argv)
    os.environ.setdefault("MARCELLE_TORCH_CACHE", str(REPO / ".cache" / "models"))

    results, failed = [], False
    for n in args.workers:
        print(f"flood: {args.runs} runs from {args.clients} clients, {n} worker(s)...", flush=True)
        figures = run_one(n, args.runs, args.clients, args.workdir / f"workers-{n}")
        bad = problems(figures)
        failed |= bool(bad)
        print(
            f"  {figures['runs_per_s']} runs/s (drained in {figures['drained_s']}s), statuses {figures['statuses']}"
            + (f"; PROBLEMS: {bad}" if bad else "; none lost, none twice"),
            flush=True,
        )
        results.append(figures)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cores": len(os.sched_getaffinity(0)),
        "command": "python bench/flood.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "results": results,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_text(OUT / "flood.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(OUT / "flood.md", markdown(report))
    print(f"wrote {OUT / 'flood.json'} and {OUT / 'flood.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
