"""What an operator sees: drive traffic through the stack, then plot the overview dashboard's
main panels from Prometheus, with the dashboard's own queries.

Starts the local stack with monitoring (`marcelle-torch up --monitoring`'s launcher) unless
URLs of a running one are given, sends predictions (about 5% bad requests) with changing
concurrency and a generator run now and then, queries Prometheus' `query_range` for the
panels below and writes bench/out/dashboard.{png,json,md} and a copy docs/dashboard.png.

    .venv/bin/python bench/dashboard_render.py                       # starts its own stack
    .venv/bin/python bench/dashboard_render.py --prometheus http://127.0.0.1:9090 \\
        --serve http://127.0.0.1:8000 --backend http://127.0.0.1:3030 # a running `make demo`
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from marcelle_torch.files import atomic_write, atomic_write_text
from marcelle_torch.stack import monitoring

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
DASHBOARD = ROOT / "charts" / "marcelle-torch" / "dashboards" / "overview.json"
PANELS = [
    "Serve requests/s by route and status",
    "Serve errors/s by route and code",
    "Serve HTTP latency p50 / p95 / p99",
    "Predictions/s by model and outcome",
    "Model latency p50 / p95 / p99",
    "Batch size",
    "Replicas healthy / target",
    "Requests queued and in flight",
    "Runs pending / running",
    "Runs/s by outcome",
    "Run duration p50 / p95",
    "Progress updates/s",
]
# Short windows: the local Prometheus scrapes every 2 s and the run is a few minutes long.
INTERVALS = {"__rate_interval": "20s", "__interval": "5s", "__range": "1m"}


def digit_instance(digit: int) -> list:
    """A 128x128 drawing of an optdigits sample (dark ink on white)."""
    import numpy as np
    from sklearn.datasets import load_digits

    data = load_digits()
    image = data.images[list(data.target).index(digit)] / 16.0
    return [(1.0 - np.kron(image, np.ones((16, 16)))).round(3).tolist()]


class Traffic:
    """Predictions in phases of rising then falling concurrency, plus runs through the backend."""

    def __init__(self, serve: str, backend: str | None, duration: float, model: str, generator: str):
        self.serve, self.backend, self.duration = serve, backend, duration
        self.model, self.generator = model, generator
        self.counts = {"predict_ok": 0, "predict_4xx": 0, "predict_other": 0, "runs": 0}
        self._lock = threading.Lock()
        self._instances = [digit_instance(d) for d in range(10)]

    def _count(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1

    def _predict(self, client: httpx.Client, rng: random.Random) -> None:
        if rng.random() < 0.05:  # a client mistake: wrong shape -> 400
            body = {"instances": [[[0.0]]]}
        else:
            body = {"instances": [rng.choice(self._instances) for _ in range(rng.choice((1, 1, 2, 4)))]}
        try:
            status = client.post(f"{self.serve}/v1/models/{self.model}:predict", json=body).status_code
        except httpx.HTTPError:
            status = 0
        self._count("predict_ok" if status == 200 else "predict_4xx" if 400 <= status < 500 else "predict_other")

    def _runs(self, stop: threading.Event) -> None:
        rng = random.Random(1)
        with httpx.Client(timeout=60) as client:
            while not stop.wait(15.0):
                try:
                    client.post(
                        f"{self.backend}/runs",
                        json={
                            "model": self.generator,
                            "input": {"digit": rng.randrange(10)},
                            "params": {"steps": 25, "seed": rng.randrange(1000)},
                            "status": "pending",
                        },
                    )
                    self._count("runs")
                except httpx.HTTPError as exc:
                    print(f"  run not created: {exc}", file=sys.stderr)

    def run(self) -> tuple[float, float]:
        start = time.time()
        stop = threading.Event()
        runner = threading.Thread(target=self._runs, args=(stop,), daemon=True) if self.backend else None
        if runner:
            runner.start()
        phases = [1, 2, 4, 8, 4, 2, 1]
        per_phase = self.duration / len(phases)
        with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=16)) as client:
            for phase, concurrency in enumerate(phases):
                print(
                    f"  phase {phase + 1}/{len(phases)}: {concurrency} concurrent clients, {per_phase:.0f}s", flush=True
                )
                end = time.monotonic() + per_phase

                def loop(seed: int, end: float = end) -> None:
                    rng = random.Random(seed)
                    while time.monotonic() < end:
                        self._predict(client, rng)

                with ThreadPoolExecutor(concurrency) as pool:
                    list(pool.map(loop, range(phase * 100, phase * 100 + concurrency)))
        stop.set()
        if runner:
            runner.join()
        return start, time.time()


def collect(prometheus: str, start: float, end: float, step: float) -> dict[str, list[dict]]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = monitoring.dashboard_queries(dashboard, INTERVALS)
    panels: dict[str, list[dict]] = {title: [] for title in PANELS}
    for title, legend, expr in queries:
        if title not in panels:
            continue
        for series in monitoring.query_range(prometheus, expr, start, end, step):
            label = legend
            for key, value in series["metric"].items():
                label = label.replace("{{" + key + "}}", value)
            label = label.replace("{{route}}", "").replace("  ", " ").strip() or expr[:40]
            points = [(float(t), float(v)) for t, v in series["values"]]
            if all(v != v for _, v in points):  # only NaN: e.g. a quantile of a series with no traffic
                continue
            panels[title].append({"label": label, "expr": expr, "points": points})
    return panels


def plot(panels: dict[str, list[dict]], start: float, path: Path, subtitle: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 3
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.2 * rows), squeeze=False)
    for ax, (title, series) in zip(axes.flat, panels.items(), strict=False):
        for s in series:
            xs = [t - start for t, v in s["points"] if v == v]  # drop NaN (no traffic in window)
            ys = [v for t, v in s["points"] if v == v]
            if xs:
                ax.plot(xs, ys, label=s["label"], linewidth=1.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("seconds", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if any(s["points"] for s in series):
            ax.legend(fontsize=7, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(f"marcelle-torch / Overview (Prometheus query_range)\n{subtitle}", fontsize=12)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", help="Prometheus URL of a running stack (default: start one)")
    parser.add_argument("--serve", help="Serve URL of the running stack")
    parser.add_argument("--backend", help="Marcelle backend URL of the running stack (runs are skipped without it)")
    parser.add_argument("--duration", type=float, default=140.0, help="seconds of traffic (default: %(default)s)")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--generator", default="digits-generator")
    parser.add_argument("--no-docs-copy", action="store_true", help="do not refresh docs/dashboard.png")
    args = parser.parse_args(argv)
    if bool(args.prometheus) != bool(args.serve):
        parser.error("--prometheus and --serve go together (or neither, to start a stack)")

    OUT.mkdir(parents=True, exist_ok=True)
    stack = None
    workdir = None
    try:
        if args.prometheus:
            prometheus, serve, backend = args.prometheus, args.serve, args.backend
        else:
            from marcelle_torch.stack.up import StackOptions, start_stack

            workdir = Path(tempfile.mkdtemp(prefix="dashboard-render-"))
            print(f"starting the local stack with monitoring (logs: {workdir / 'logs'})", flush=True)
            stack = start_stack(
                StackOptions(
                    workdir=workdir, webapp_port=0, serve_port=0, backend_port=0, prometheus_port=0, monitoring=True
                ),
                say=lambda m: print(f"  {m}", flush=True),
            )
            prometheus, serve, backend = stack.urls["prometheus"], stack.urls["serve"], stack.urls["backend"]

        print(f"traffic for {args.duration:.0f}s against {serve}", flush=True)
        traffic = Traffic(serve, backend, args.duration, args.model, args.generator)
        start, end = traffic.run()
        time.sleep(25)  # let runs finish and the last scrapes land
        end = time.time()
        print(f"traffic done: {traffic.counts}; querying {prometheus}", flush=True)
        panels = collect(prometheus, start - 10, end, step=2.0)
    finally:
        if stack is not None:
            stack.stop(say=lambda m: print(f"  {m}", flush=True))
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)

    subtitle = (
        f"{args.duration:.0f}s of traffic, 1-8 concurrent clients; predictions ok {traffic.counts['predict_ok']}, "
        f"4xx {traffic.counts['predict_4xx']}, runs {traffic.counts['runs']}"
    )
    png = OUT / "dashboard.png"
    plot(panels, start, png, subtitle)
    summary = {
        "start": start,
        "end": end,
        "counts": traffic.counts,
        "panels": {
            title: [
                {
                    "label": s["label"],
                    "expr": s["expr"],
                    "max": max((v for _, v in s["points"] if v == v), default=None),
                    "last": next((v for _, v in reversed(s["points"]) if v == v), None),
                    "points": s["points"],
                }
                for s in series
            ]
            for title, series in panels.items()
        },
    }
    atomic_write_text(OUT / "dashboard.json", json.dumps(summary, indent=1) + "\n")
    lines = [
        "# Overview dashboard, rendered from Prometheus",
        "",
        subtitle,
        "",
        "| Panel | Series | Max | Last |",
        "|---|---|---|---|",
    ]
    for title, series in summary["panels"].items():
        if not series:
            lines.append(f"| {title} | (no data) | | |")
        for s in series:
            fmt = lambda v: "" if v is None else f"{v:.4g}"  # noqa: E731
            lines.append(f"| {title} | {s['label']} | {fmt(s['max'])} | {fmt(s['last'])} |")
    atomic_write_text(OUT / "dashboard.md", "\n".join(lines) + "\n")
    empty = [title for title, series in panels.items() if not series]
    if not args.no_docs_copy:
        shutil.copyfile(png, ROOT / "docs" / "dashboard.png")
    print(
        f"wrote {png}, {OUT / 'dashboard.json'}, {OUT / 'dashboard.md'}"
        + ("" if args.no_docs_copy else f" and {ROOT / 'docs' / 'dashboard.png'}")
    )
    if empty:
        print(f"panels without data: {', '.join(empty)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
