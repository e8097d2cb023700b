"""`marcelle-torch up`, started and stopped as a user does: how long until its URL answers, and
how long it takes to exit after SIGTERM.

Each cycle starts ``marcelle-torch up`` on free ports in a fresh work dir (weights already in
MARCELLE_TORCH_CACHE: a warm start, as every start after the first), times until it prints its
URL and until that URL answers 200, sends SIGTERM, and times until the process has exited and
nothing it started is left (its session's processes, and any process naming its Ray temp dir).

Writes bench/out/startup.{json,md}:
    .venv/bin/python bench/startup.py [--cycles 3] [--up-arg=--monitoring ...]
Needs the built web app (make webapp) and services/backend installed (make setup).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from marcelle_torch.files import atomic_write_text
from marcelle_torch.processes import cli_argv, session_processes

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
GOAL_START_S = 15.0
GOAL_STOP_S = 5.0


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cycle(workdir: Path, up_args: list[str], log_path: Path, timeout: float = 600.0) -> dict:
    argv = [
        *cli_argv(),
        "up",
        "--port",
        "0",
        "--serve-port",
        "0",
        "--backend-port",
        "0",
        "--workdir",
        str(workdir),
        *up_args,
    ]
    lines: list[tuple[float, str]] = []
    url_seen = threading.Event()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )

    def read() -> None:
        for line in proc.stdout:
            lines.append((time.perf_counter() - t0, line.rstrip()))
            if line.startswith("Open http"):
                url_seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    result: dict = {}
    try:
        if not url_seen.wait(timeout):
            raise RuntimeError(
                f"no URL printed within {timeout:.0f}s; output:\n" + "\n".join(text for _, text in lines[-20:])
            )
        printed_at, line = next((t, text) for t, text in lines if text.startswith("Open http"))
        url = re.search(r"(http://\S+)", line).group(1).rstrip(" ;")
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.05)
        result.update(url=url, url_printed_s=round(printed_at, 3), url_answers_s=round(time.perf_counter() - t0, 3))
        ray_dirs = sorted({m for _, text in lines for m in re.findall(r"(/tmp/mt-ray-\w+)", text)})
        time.sleep(1.0)
        t_term = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout)
        exited = time.perf_counter() - t_term
        # Everything it started gone too (Ray's workers, HAProxy, node, the worker).
        while session_processes(proc.pid) and time.perf_counter() - t_term < 120:
            time.sleep(0.05)
        left = session_processes(proc.pid)
        result.update(
            stop_exit_s=round(exited, 3),
            stop_all_gone_s=round(time.perf_counter() - t_term, 3),
            left_after_120s=left,
            ray_dirs=ray_dirs,
            exit_code=proc.returncode,
        )
        result["stop_lines"] = [f"{t - (t_term - t0):+.2f}s {text}" for t, text in lines if t >= t_term - t0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        for pid in session_processes(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        reader.join(5)
        log_path.write_text("\n".join(f"{t:8.3f} {text}" for t, text in lines) + "\n")
    return result


def markdown(results: dict) -> str:
    """The report as Markdown, from its JSON alone (the docs render it the same way)."""
    s = results["summary"]
    lines = [
        "# `marcelle-torch up`: start and stop",
        "",
        f"{results['date']}, {results['machine']['cpus']} CPUs, load average {results['machine']['load_before']} "
        f"before, {results['machine']['load_after']} after; `{results['command']}`; weights cached (warm start).",
        "",
        "| cycle | URL printed | URL answers | exit after SIGTERM | all its processes gone | load |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for i, c in enumerate(results["cycles"], start=1):
        lines.append(
            f"| {i} | {c['url_printed_s']:.1f} s | {c['url_answers_s']:.1f} s | {c['stop_exit_s']:.2f} s | "
            f"{c['stop_all_gone_s']:.2f} s | {c['load']} |"
        )
    lines += [
        "",
        f"Warm start to a working URL, median: **{s['warm_start_p50_s']:.1f} s** (goal <= {GOAL_START_S:.0f} s: "
        f"{'met' if s['start_max_s'] <= GOAL_START_S else 'not met'} on every cycle"
        f"{'' if s['start_max_s'] <= GOAL_START_S else ', worst ' + format(s['start_max_s'], '.1f') + ' s'}). "
        f"Stop after SIGTERM, median: **{s['stop_p50_s']:.2f} s** (goal <= {GOAL_STOP_S:.0f} s: "
        f"{'met' if s['stop_max_s'] <= GOAL_STOP_S else 'not met'}; worst {s['stop_max_s']:.2f} s).",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=3, help="start/stop cycles (default 3)")
    parser.add_argument("--up-arg", action="append", default=[], help="an extra `marcelle-torch up` argument")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "command": " ".join(["bench/startup.py", *(argv or sys.argv[1:])]),
        "machine": {"cpus": os.cpu_count(), "load_before": load()},
        "cycles": [],
    }
    for i in range(args.cycles):
        with tempfile.TemporaryDirectory(prefix="startup-") as tmp:
            try:
                r = cycle(Path(tmp) / "stack", args.up_arg, OUT / f"startup.{i + 1}.log")
            finally:  # the stack's own logs (Ray Serve's, the worker's) next to the bench's
                shutil.rmtree(OUT / f"startup.{i + 1}.logs", ignore_errors=True)
                if (Path(tmp) / "stack" / "logs").is_dir():
                    shutil.copytree(Path(tmp) / "stack" / "logs", OUT / f"startup.{i + 1}.logs")
        r["load"] = load()
        results["cycles"].append(r)
        print(
            f"cycle {i + 1}: URL answers after {r['url_answers_s']:.1f} s; exited {r['stop_exit_s']:.2f} s after "
            f"SIGTERM, all gone after {r['stop_all_gone_s']:.2f} s (load {r['load']})",
            flush=True,
        )
    results["machine"]["load_after"] = load()
    start = statistics.median(c["url_answers_s"] for c in results["cycles"])
    stop = statistics.median(c["stop_all_gone_s"] for c in results["cycles"])
    results["summary"] = {
        "warm_start_p50_s": round(start, 2),
        "stop_p50_s": round(stop, 2),
        "start_max_s": max(c["url_answers_s"] for c in results["cycles"]),
        "stop_max_s": max(c["stop_all_gone_s"] for c in results["cycles"]),
    }
    atomic_write_text(OUT / "startup.json", json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    atomic_write_text(OUT / "startup.md", text)
    print(text, end="")
    return 0 if not any(c["left_after_120s"] for c in results["cycles"]) else 1


if __name__ == "__main__":
    sys.exit(main())
