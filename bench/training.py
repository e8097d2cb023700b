"""Training from the page, measured as the page sees it: the built-in ``digits`` taught a new label
(a drawn star) through a real Marcelle backend and a real `marcelle-torch worker`, against the same
``fine_tune`` call in process; then from Train to Serve answering with the new version.

1. Throughput: a training run (``{model: digits, input: {examples}, params: {train: {epochs}}}``)
   created by a Socket.IO client (the protocol Marcelle's page speaks) and done by the worker,
   against ``fine_tune`` called here as the worker calls it: the same model folder (the store's
   trainable ``digits``, where the worker starts too), the same examples (the run's PNG data URLs
   decoded as the worker decodes them), the same epochs and a checkpoint per epoch (what lets a run
   resume on another worker), torch on ``--threads`` threads on both sides. The same call without
   a checkpoint is measured beside it, so what the checkpoints cost is seen apart. Examples/s is
   the training examples (after the held-out split) x epochs over the whole call: in process the
   ``fine_tune`` call, through the backend the run's create -> its ``succeeded`` event at the
   client (claim, decoding, the per-epoch checkpoints and the progress patches included). The
   rounds alternate which side goes first; the ratio is backend / in process, of the medians.
2. Updates a page sees: during each backend round, the ``runs patched`` events that carried a
   TrainingStatus partial (``status`` start/epoch, ``epoch``, ``data``), per second from the first
   to the last (the worker sends at most ``--max-updates-per-second``, the newest only).
3. Train to the new version answering: with a `marcelle-torch serve` sharing the worker's model
   store, each round creates a training run (default epochs, ten new stars: a new version every
   round), waits for its success, creates the publish run, then polls ``POST
   /v1/models/digits:predict`` every 0.1 s until ``model_version`` is the new version; then rolls
   back (a publish of null) and waits for Serve to answer with its own weights again.

Writes bench/out/training.{json,md,png}:
    .venv/bin/python bench/training.py [--rounds 5] [--stars 30] [--epochs 20] [--answer-rounds 3]
Needs services/backend installed (make setup) and the weights in MARCELLE_TORCH_CACHE (make sets it).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from runs_latency import Recorder  # bench/'s scripts run with their folder on sys.path

from marcelle_torch.files import atomic_write, atomic_write_text

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
MODEL = "digits"
LABEL = "star"
GOAL_RATIO = 0.90  # backend throughput / in-process throughput
GOAL_UPDATES = 10.0  # TrainingStatus updates a page sees per second
TRAINING_STATUSES = ("start", "epoch")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and the live processes of its session (from /proc)."""
    from marcelle_torch.processes import session_processes

    total = 0.0
    for p in {pid, *session_processes(pid)}:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def main_thread_cpu(pid: int) -> float:
    """User + system CPU seconds of the main thread of ``pid``."""
    try:
        fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def star_urls(n: int, seed: int) -> list[str]:
    """``n`` stars as PNG data URLs, what the page's sketchpad sends."""
    import numpy as np
    from PIL import Image

    from marcelle_torch.models.digits import drawn_star

    rng = np.random.default_rng(seed)
    urls = []
    for _ in range(n):
        out = io.BytesIO()
        Image.fromarray(drawn_star(rng), mode="L").save(out, format="PNG")
        urls.append("data:image/png;base64," + base64.b64encode(out.getvalue()).decode())
    return urls


# -- pure parts (tests/unit/test_bench_training.py) ---------------------------------------------


def is_training_update(run: dict) -> bool:
    """A ``runs patched`` event that carries a TrainingStatus partial of a running training."""
    partial = run.get("partial")
    return run.get("status") == "running" and isinstance(partial, dict) and partial.get("status") in TRAINING_STATUSES


def update_rate(times: list[float]) -> float:
    """Updates per second from the first to the last arrival (0 with fewer than two)."""
    if len(times) < 2 or times[-1] <= times[0]:
        return 0.0
    return (len(times) - 1) / (times[-1] - times[0])


def spread(values: list[float]) -> dict:
    """Median, min, max and (max - min) / median of a side's rounds."""
    p50 = statistics.median(values)
    return {
        "p50": round(p50, 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "spread_pct": round(100 * (max(values) - min(values)) / p50, 1) if p50 else None,
    }


def throughput_summary(rounds: list[dict]) -> dict:
    """Each side's examples/s (examples x epochs / seconds) over its rounds, and backend / in process
    of the medians (with the rounds' own ratios, each backend run over the in-process call beside it)."""
    by_side: dict[str, list[float]] = {"in_process": [], "backend": []}
    for r in rounds:
        for side in by_side:
            by_side[side].append(r[side]["examples"] * r[side]["epochs"] / r[side]["seconds"])
    summary = {side: spread(values) for side, values in by_side.items()}
    if all("no_checkpoint" in r for r in rounds):  # the same call without its per-epoch checkpoint
        bare = [
            r["no_checkpoint"]["examples"] * r["no_checkpoint"]["epochs"] / r["no_checkpoint"]["seconds"]
            for r in rounds
        ]
        summary["in_process_no_checkpoint"] = spread(bare)
        summary["ratio_to_no_checkpoint"] = round(
            summary["backend"]["p50"] / summary["in_process_no_checkpoint"]["p50"], 3
        )
    ratio = summary["backend"]["p50"] / summary["in_process"]["p50"]
    pairs = [b / i for b, i in zip(by_side["backend"], by_side["in_process"], strict=True)]
    summary.update(
        rounds=len(rounds),
        ratio_of_medians=round(ratio, 3),
        pair_ratios=[round(p, 3) for p in pairs],
        met=ratio >= GOAL_RATIO,
    )
    # Examples per CPU second: the training's cost, which the machine's other load moves less than
    # its wall time (in process: this process; through the backend: the worker's, and the node
    # backend's beside it for what the progress patches cost there).
    if all("cpu_s" in r["in_process"] and "worker_cpu_s" in r["backend"] for r in rounds):
        work = [r["in_process"]["examples"] * r["in_process"]["epochs"] for r in rounds]
        here = [w / r["in_process"]["cpu_s"] for w, r in zip(work, rounds, strict=True)]
        worker = [w / r["backend"]["worker_cpu_s"] for w, r in zip(work, rounds, strict=True)]
        summary["per_cpu_second"] = {
            "in_process": spread(here),
            "worker": spread(worker),
            "ratio_of_medians": round(statistics.median(worker) / statistics.median(here), 3),
            "backend_cpu_s_p50": round(statistics.median(r["backend"].get("backend_cpu_s", 0.0) for r in rounds), 3),
        }
        if all("worker_main_thread_cpu_s" in r["backend"] for r in rounds):
            main = [w / r["backend"]["worker_main_thread_cpu_s"] for w, r in zip(work, rounds, strict=True)]
            summary["per_cpu_second"]["worker_main_thread"] = spread(main)
            summary["per_cpu_second"]["worker_other_threads_cpu_s_p50"] = round(
                statistics.median(
                    r["backend"]["worker_cpu_s"] - r["backend"]["worker_main_thread_cpu_s"] for r in rounds
                ),
                3,
            )
    return summary


def answer_summary(rounds: list[dict]) -> dict:
    """p50, min and max of create-training -> the new version answering, and of its parts."""
    out = {"rounds": len(rounds)}
    for key in ("total_s", "training_s", "publish_to_answer_s", "published_s"):
        values = [r[key] for r in rounds if r.get(key) is not None]
        if values:
            out[key] = {"p50": round(statistics.median(values), 2), "min": round(min(values), 2),
                        "max": round(max(values), 2)}  # fmt: skip
    return out


def markdown(results: dict) -> str:
    """The report as Markdown, from its JSON alone (the docs render it the same way)."""
    t = results["throughput"]
    u = results["updates"]
    lines = [
        "# Training from the page: throughput, live updates, time to the new version",
        "",
        f"{results['date']}, {results['machine']['cpus']} CPUs, load average {results['machine']['load_before']} "
        f"before, {results['machine']['load_after']} after; `{results['command']}`; torch threads "
        f"{results['threads']} in process and in the worker. The built-in `digits` taught `{LABEL}`: "
        f"{results['stars']} drawn stars + {results['rehearsed']} rehearsed dataset digits, "
        f"{results['train_examples']} trained on (the rest held out), {results['epochs']} epochs.",
        "",
        "| round | first | in process | through the backend (create -> succeeded) | backend / in process |"
        " CPU s: in process, worker, node backend | updates seen/s |",
        "|---:|---|---:|---:|---:|---|---:|",
    ]
    for i, r in enumerate(results["rounds"], start=1):
        ip, be = r["in_process"], r["backend"]
        cpu = ", ".join(f"{x:.2f}" if x is not None else "-" for x in
                        (ip.get("cpu_s"), be.get("worker_cpu_s"), be.get("backend_cpu_s")))  # fmt: skip
        if be.get("worker_main_thread_cpu_s") is not None:
            cpu += f" (worker's main thread {be['worker_main_thread_cpu_s']:.2f})"
        lines.append(
            f"| {i} | {r['first'].replace('_', ' ')} | {ip['examples'] * ip['epochs'] / ip['seconds']:.0f} ex/s "
            f"({ip['seconds']:.2f} s) | {be['examples'] * be['epochs'] / be['seconds']:.0f} ex/s "
            f"({be['seconds']:.2f} s) | {t['pair_ratios'][i - 1]:.2f} | {cpu} | {r['updates_per_s']:.1f} |"
        )
    a = results.get("answer")
    lines += [
        "",
        "| figure | value | goal |",
        "|---|---:|---|",
        f"| training throughput in process, as the worker calls it (a checkpoint per epoch), median of "
        f"{t['rounds']} (spread {t['in_process']['spread_pct']}%) | {t['in_process']['p50']:.0f} examples/s | |",
        f"| through the backend and worker, median of {t['rounds']} (spread {t['backend']['spread_pct']}%) | "
        f"{t['backend']['p50']:.0f} examples/s | |",
        f"| backend / in process (ratio of the medians) | {100 * t['ratio_of_medians']:.0f}% | "
        f">= {100 * GOAL_RATIO:.0f}% ({'met' if t['met'] else 'not met'}) |",
    ]
    if "in_process_no_checkpoint" in t:
        lines.append(
            f"| in process without the checkpoints: {t['in_process_no_checkpoint']['p50']:.0f} examples/s; "
            f"backend / that | {100 * t['ratio_to_no_checkpoint']:.0f}% | |"
        )
    c = t.get("per_cpu_second")
    if c:
        lines += [
            f"| examples per CPU second: in process {c['in_process']['p50']:.0f}, the worker "
            f"{c['worker']['p50']:.0f} (the node backend beside it: {c['backend_cpu_s_p50']:.2f} CPU s a run) | "
            f"{100 * c['ratio_of_medians']:.0f}% | |",
        ]
        if "worker_main_thread" in c:
            share = c["worker_main_thread"]["p50"] / c["in_process"]["p50"]
            lines.append(
                f"| examples per CPU second of the worker's main thread (the training; its other threads, "
                f"Socket.IO and progress: {c['worker_other_threads_cpu_s_p50']:.2f} CPU s a run, p50) | "
                f"{c['worker_main_thread']['p50']:.0f} ({100 * share:.0f}% "
                "of in process) | |"
            )
    lines += [
        f"| TrainingStatus updates a page sees per second, during the epochs (median of {len(u['per_round'])}; "
        f"min {min(u['per_round']):.1f}) | {u['p50']:.1f} | >= {GOAL_UPDATES:.0f} "
        f"({'met' if u['met'] else 'not met'}) |",
    ]
    if a:
        s = a["summary"]
        lines += [
            f"| Train -> the new version answering on Serve, p50 of {s['rounds']} (min {s['total_s']['min']:.1f}, "
            f"max {s['total_s']['max']:.1f}) | {s['total_s']['p50']:.1f} s | |",
            f"| of which the training run (create -> succeeded, {a['epochs']} epochs, {a['stars']} stars), p50 | "
            f"{s['training_s']['p50']:.1f} s | |",
            f"| of which publish created -> Serve answers with the version, p50 (min "
            f"{s['publish_to_answer_s']['min']:.1f}, max {s['publish_to_answer_s']['max']:.1f}) | "
            f"{s['publish_to_answer_s']['p50']:.1f} s | |",
        ]
        lines += [
            "",
            "| round | version | training run | publish created -> succeeded | publish created -> answers | total |",
            "|---:|---|---:|---:|---:|---:|",
        ]
        for i, r in enumerate(a["rounds"], start=1):
            published = f"{r['published_s']:.1f} s" if r.get("published_s") is not None else "-"
            lines.append(
                f"| {i} | `{r['version']}` | {r['training_s']:.1f} s | {published} | {r['publish_to_answer_s']:.1f} s "
                f"| {r['total_s']:.1f} s |"
            )
    size = statistics.median(r["backend"].get("update_bytes_p50", 0) for r in results["rounds"])
    lines += [
        "",
        f"Rounds alternate which side goes first; on a shared machine single rounds move (spread above). The "
        f"backend side includes what the in-process call leaves out: the claim, decoding the PNGs, a checkpoint "
        f"per epoch and the progress patches (the worker sends at most {results['max_updates_per_second']:g} a "
        "second)"
        + (
            f"; each update is a `runs patched` event of the whole run, its examples included ({size / 1000:.0f} kB "
            "of JSON, p50), which the backend sends to every client but the worker that made it."
            if size
            else "."
        ),
    ]
    return "\n".join(lines) + "\n"


# -- the real parts -------------------------------------------------------------------------------


def backend_training(client, recorder: Recorder, urls: list[str], epochs: int | None, pids: dict | None = None) -> dict:
    """One training run through the backend, as the page sees it; ``pids``: {name: pid} whose CPU
    seconds (their sessions') during the run are recorded."""
    train = {} if epochs is None else {"epochs": epochs}
    examples = [{"x": url, "y": LABEL} for url in urls]
    cpu0 = {name: cpu_seconds(pid) for name, pid in (pids or {}).items()}
    main0 = main_thread_cpu(pids["worker"]) if pids and "worker" in pids else 0.0
    here0 = time.process_time()
    t0 = time.perf_counter()
    run = client.create("runs", {"model": MODEL, "input": {"examples": examples}, "params": {"train": train}})
    events = recorder.wait_done(run["_id"])
    done_at, last = events[-1]
    if last["status"] != "succeeded":
        raise RuntimeError(f"training run {run['_id']} {last['status']}: {last.get('error')}")
    running = [t for t, e in events if e.get("status") == "running"]
    updates = [t for t, e in events if is_training_update(e)]
    sizes = [len(json.dumps(e)) for _, e in events if is_training_update(e)]
    cpu = {f"{name}_cpu_s": round(cpu_seconds(pid) - cpu0[name], 3) for name, pid in (pids or {}).items()}
    if pids and "worker" in pids:  # the worker's main thread trains; its others talk to the backend
        cpu["worker_main_thread_cpu_s"] = round(main_thread_cpu(pids["worker"]) - main0, 3)
    return {
        "seconds": done_at - t0,
        **cpu,
        "client_cpu_s": round(time.process_time() - here0, 3),
        "claim_to_done_s": done_at - (running[0] if running else done_at),
        "updates": len(updates),
        "updates_per_s": update_rate(updates),
        "updates_span_s": (updates[-1] - updates[0]) if len(updates) > 1 else 0.0,
        # Each update is the whole run document (its input, the examples, included), as JSON.
        "update_bytes_p50": int(statistics.median(sizes)) if sizes else 0,
        "result": last["result"],
    }


def in_process_training(folder: Path, examples: list, store: Path, epochs: int, checkpoint: bool = True) -> dict:
    from marcelle_torch.training import fine_tune

    started: dict = {}

    def on_status(event: dict) -> None:
        if event["status"] == "start":
            started.update(event)

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    path = store / ".checkpoints" / "bench-in-process.pt" if checkpoint else None
    version = fine_tune(folder, examples, store=store, on_status=on_status, epochs=epochs, checkpoint=path)
    return {
        "seconds": time.perf_counter() - t0,
        "cpu_s": round(time.process_time() - cpu0, 3),
        "examples": started["examples"],
        "rehearsed": started["rehearsed"],
        "epochs": epochs,
        "version": version.version,
    }


def predict(url: str, instance: str) -> dict:
    body = json.dumps({"instances": [instance]}).encode()
    request = urllib.request.Request(f"{url}/v1/models/{MODEL}:predict", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def wait_version(url: str, instance: str, version: str, timeout: float = 300, interval: float = 0.1) -> float:
    """Poll Serve until it answers with ``version``; the perf_counter time it first did."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predict(url, instance).get("model_version")
        except (urllib.error.URLError, OSError) as exc:
            last = repr(exc)
        if last == version:
            return time.perf_counter()
        time.sleep(interval)
    raise TimeoutError(f"Serve did not answer with version {version} in {timeout:.0f}s (last: {last!r})")


def start_serve(store: Path, log_path: Path):
    from marcelle_torch.processes import ManagedProcess, cli_argv, free_port

    port = free_port()
    argv = [*cli_argv(), "serve", "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(free_port()),
            "--model", MODEL]  # fmt: skip
    serve = ManagedProcess("marcelle-torch serve", argv, log_path, env={"MARCELLE_TORCH_STORE": str(store)})
    serve.url = f"http://127.0.0.1:{port}"
    try:
        serve.wait_http(serve.url + "/readyz", 900)
    except BaseException:
        serve.stop()
        raise
    return serve


def answer_round(client, recorder: Recorder, serve_url: str, probe: str, urls: list[str], base: str) -> dict:
    t0 = time.perf_counter()
    trained = backend_training(client, recorder, urls, None)
    version = trained["result"]["version"]
    t_trained = t0 + trained["seconds"]
    t_pub = time.perf_counter()
    run = client.create("runs", {"model": MODEL, "input": None, "params": {"publish": version}})
    answered = wait_version(serve_url, probe, version)
    events = recorder.wait_done(run["_id"])
    if events[-1][1]["status"] != "succeeded":
        raise RuntimeError(f"publish run {run['_id']} {events[-1][1]['status']}: {events[-1][1].get('error')}")
    r = {
        "version": version,
        "training_s": round(t_trained - t0, 3),
        "publish_wait_s": round(t_pub - t_trained, 3),
        "published_s": round(events[-1][0] - t_pub, 3),
        "publish_to_answer_s": round(answered - t_pub, 3),
        "total_s": round(answered - t0, 3),
        "updates_per_s": round(trained["updates_per_s"], 2),
    }
    # Back to the model's own weights, so the next round publishes anew.
    rollback = client.create("runs", {"model": MODEL, "input": None, "params": {"publish": None}})
    if recorder.wait_done(rollback["_id"])[-1][1]["status"] != "succeeded":
        raise RuntimeError(f"rollback run {rollback['_id']} did not succeed")
    wait_version(serve_url, probe, base)
    return r


def plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = results["rounds"]
    n = range(1, len(rounds) + 1)
    rate = lambda side: [r[side]["examples"] * r[side]["epochs"] / r[side]["seconds"] for r in rounds]  # noqa: E731
    answer = results.get("answer")
    fig, axes = plt.subplots(1, 2 if answer else 1, figsize=(11 if answer else 6, 4), squeeze=False)
    ax = axes[0][0]
    width = 0.38
    ax.bar([i - width / 2 for i in n], rate("in_process"), width, label="in process (fine_tune)")
    ax.bar([i + width / 2 for i in n], rate("backend"), width, label="backend + worker")
    ax.set(xlabel="round", ylabel="examples/s", title="Training throughput", xticks=list(n))
    ax.legend(fontsize=8)
    if answer:
        ax = axes[0][1]
        a = answer["rounds"]
        m = range(1, len(a) + 1)
        training = [r["training_s"] for r in a]
        rest = [r["total_s"] - r["training_s"] for r in a]
        ax.bar(list(m), training, label="training run")
        ax.bar(list(m), rest, bottom=training, label="publish -> Serve answers")
        ax.set(xlabel="round", ylabel="seconds", title="Train -> new version answering", xticks=list(m))
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(OUT / "training.png", lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="throughput rounds, each side once per round (5)")
    parser.add_argument("--stars", type=int, default=30, help="stars taught in the throughput rounds (30)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of the throughput rounds (20)")
    parser.add_argument("--answer-rounds", type=int, default=3, help="Train -> answering rounds (3; 0: skip Serve)")
    parser.add_argument("--answer-stars", type=int, default=10, help="stars taught per answering round (10)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, here and in the worker (default 1)")
    parser.add_argument(
        "--max-updates-per-second", type=float, default=None, help="the worker's (default: the worker's own)"
    )
    args = parser.parse_args(argv)

    import torch

    from marcelle_torch.models import get_spec
    from marcelle_torch.models.store import ModelStore
    from marcelle_torch.stack.backend import start_backend
    from marcelle_torch.stack.worker import start_worker
    from marcelle_torch.worker.client import FeathersClient
    from marcelle_torch.worker.options import WorkerOptions
    from marcelle_torch.worker.training_run import decode_examples

    torch.set_num_threads(args.threads)
    max_updates = args.max_updates_per_second or WorkerOptions().max_updates_per_second
    results: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "command": " ".join(["bench/training.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"cpus": os.cpu_count(), "load_before": load()},
        "threads": args.threads,
        "stars": args.stars,
        "epochs": args.epochs,
        "max_updates_per_second": max_updates,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    spec = get_spec(MODEL)
    urls = star_urls(args.stars, seed=0)
    examples = decode_examples(spec, {"examples": [{"x": u, "y": LABEL} for u in urls]})

    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        tmp = Path(tmp)
        store = ModelStore(tmp / "store")
        folder = Path(spec.trainable(spec, store.base_dir()))  # where the worker's training starts too
        print(f"warm-up in process ({args.epochs} epochs)", flush=True)
        warm = in_process_training(folder, examples, store.root, args.epochs)
        results.update(rehearsed=warm["rehearsed"], train_examples=warm["examples"])
        backend = start_backend(tmp / "backend", port=0, host="127.0.0.1", log_path=OUT / "training.backend.log")
        worker = client = serve = None
        try:
            worker_args = ["--store", str(store.root)]
            if args.max_updates_per_second:
                worker_args += ["--max-updates-per-second", str(args.max_updates_per_second)]
            worker = start_worker(
                backend.url,
                name="bench-trainer",
                models=[MODEL],
                threads=args.threads,
                args=worker_args,
                log_path=OUT / "training.worker.log",
            )
            client = FeathersClient(backend.url)
            client.connect()
            recorder = Recorder(client)
            pids = {"worker": worker.pid, "backend": backend.process.pid}
            print("warm-up through the backend (1 epoch)", flush=True)
            backend_training(client, recorder, urls, 1)

            rounds = []
            for i in range(args.rounds):
                first = "in_process" if i % 2 == 0 else "backend"
                r: dict = {"first": first}
                for side in (first, "backend" if first == "in_process" else "in_process"):
                    time.sleep(0.5)
                    if side == "in_process":
                        r["in_process"] = in_process_training(folder, examples, store.root, args.epochs)
                        r["no_checkpoint"] = in_process_training(
                            folder, examples, store.root, args.epochs, checkpoint=False
                        )
                    else:
                        b = backend_training(client, recorder, urls, args.epochs, pids)
                        b.update(examples=warm["examples"], epochs=args.epochs, version=b.pop("result")["version"])
                        r["backend"] = b
                r["updates_per_s"] = round(r["backend"]["updates_per_s"], 2)
                r["load"] = load()
                for side in ("in_process", "no_checkpoint", "backend"):
                    r[side]["seconds"] = round(r[side]["seconds"], 3)
                rounds.append(r)
                ip, be = r["in_process"], r["backend"]
                print(
                    f"round {i + 1}: in process {ip['seconds']:.2f} s, backend {be['seconds']:.2f} s "
                    f"({ip['seconds'] / be['seconds']:.0%}), {be['updates']} updates, "
                    f"{be['updates_per_s']:.1f}/s (load {r['load']})",
                    flush=True,
                )
                r["same_version"] = ip["version"] == be["version"]  # the same training on both sides
            results["rounds"] = rounds
            results["throughput"] = throughput_summary(rounds)
            per_round = [r["updates_per_s"] for r in rounds]
            results["updates"] = {
                "per_round": per_round,
                "p50": round(statistics.median(per_round), 2),
                "met": min(per_round) >= GOAL_UPDATES,
            }

            if args.answer_rounds:
                print("starting marcelle-torch serve on the same store", flush=True)
                serve = start_serve(store.root, OUT / "training.serve.log")
                probe = star_urls(1, seed=999)[0]
                base = predict(serve.url, probe)["model_version"]
                answers = []
                for i in range(args.answer_rounds):
                    a = answer_round(client, recorder, serve.url, probe, star_urls(args.answer_stars, 100 + i), base)
                    answers.append(a)
                    print(
                        f"answer round {i + 1}: version {a['version']} answering {a['total_s']:.1f} s after Train "
                        f"(training {a['training_s']:.1f} s, publish -> answers {a['publish_to_answer_s']:.1f} s)",
                        flush=True,
                    )
                results["answer"] = {
                    "stars": args.answer_stars,
                    "epochs": spec_epochs(folder),
                    "base_version": base,
                    "rounds": answers,
                    "summary": answer_summary(answers),
                }
        finally:
            if client is not None:
                client.disconnect()
            if serve is not None:
                serve.stop()
            if worker is not None:
                worker.stop()
            backend.stop()

    results["machine"]["load_after"] = load()
    atomic_write_text(OUT / "training.json", json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    atomic_write_text(OUT / "training.md", text)
    plot(results)
    print(text, end="")
    return 0


def spec_epochs(folder: Path) -> int:
    """The epochs a training run of ``folder`` takes by default (its manifest's ``train.epochs``)."""
    from marcelle_torch.models.folder import load_trainable

    return load_trainable(folder).config.epochs


if __name__ == "__main__":
    sys.exit(main())
