"""Latency and throughput of the Serve application, per Serve ingress mode, against a plain server.

For each target, started fresh: a fixed duration per concurrency level (1, 8, 32 clients,
each sending one drawn digit per request, back to back). Targets:

- ``serve-<mode>``: ``marcelle-torch serve --serve-mode <mode>`` (see SERVE_MODES);
- ``starlette``: one uvicorn process with the same JSON contract and an in-process forward pass.

Before the load, each target is checked for correctness (same labels as the in-process model,
a bad instance answered 400 with JSON); a mode that fails is reported and not chosen.

Writes bench/out/serve_latency.{json,md,png}.
    .venv/bin/python bench/serve_latency.py [--duration 8] [--modes proxy haproxy ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

from marcelle_torch.files import atomic_write, atomic_write_text
from marcelle_torch.stack.processes import ManagedProcess, free_port

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
LEVELS = (1, 8, 32)


def digit_instances(n: int = 10):
    """n held-out digits drawn on 128x128 canvases, as PNG instances, with their labels."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    from marcelle_torch.models.optdigits import load_split, render_canvas

    _, x_test, _, y_test = load_split()
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        canvas = render_canvas(x_test[i], 128, rng, scale=(0.5, 0.9))
        buf = io.BytesIO()
        Image.fromarray((canvas * 255).astype("uint8")).save(buf, format="PNG")
        out.append(({"b64": base64.b64encode(buf.getvalue()).decode()}, str(int(y_test[i]))))
    return out


# ----------------------------------------------------------------------------- the plain baseline

def baseline_app(model_name: str = "digits"):
    """Starlette app with the same contract as the Serve ingress, forward pass in-process."""
    import torch
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from marcelle_torch.errors import MarcelleTorchError, ModelNotFound
    from marcelle_torch.models import decode_instances, get_spec, load_model, postprocess
    from marcelle_torch.models.inputs import parse_predict_body

    spec = get_spec(model_name)
    model = load_model(spec, train_if_missing=True)
    torch.set_num_threads(1)

    def predict(request_body: bytes, name: str):
        if name != spec.name:
            raise ModelNotFound(f"unknown model {name!r}; served models: {spec.name}")
        batch = decode_instances(spec, parse_predict_body(request_body))
        with torch.inference_mode():
            return postprocess(spec, model(batch))

    async def endpoint(request):
        name = request.path_params["target"].removesuffix(":predict")
        body = await request.body()
        try:
            # Off the event loop, as a sync endpoint would be: the loop keeps accepting.
            predictions = await asyncio.to_thread(predict, body, name)
        except MarcelleTorchError as exc:
            return JSONResponse(exc.to_json(), status_code=exc.status)
        return JSONResponse({"predictions": predictions})

    async def readyz(_):
        return JSONResponse({"status": "ready"})

    return Starlette(routes=[Route("/v1/models/{target}", endpoint, methods=["POST"]),
                             Route("/readyz", readyz)])


def run_baseline(port: int) -> None:
    import uvicorn

    uvicorn.run(baseline_app(), host="127.0.0.1", port=port, log_level="warning")


# ----------------------------------------------------------------------------- targets

class Target(ManagedProcess):
    """A server under test, started on a free port (``{port}`` in its command line)."""

    def __init__(self, name: str, args: list[str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(name, [a.replace("{port}", str(self.port)) for a in args], log)

    def wait_ready(self, timeout_s: float = 600) -> float:
        started = time.monotonic()
        self.wait_http(self.url + "/readyz", timeout_s)
        return time.monotonic() - started

    def stop(self) -> None:
        super().stop(timeout=180)


def check_correct(url: str, samples, expected_labels) -> str | None:
    """None if the target answers like the in-process model; else what is wrong."""
    import httpx

    r = httpx.post(f"{url}/v1/models/digits:predict", json={"instances": [s for s, _ in samples]}, timeout=120)
    if r.status_code != 200:
        return f"predict answered {r.status_code}: {r.text[:200]}"
    labels = [p["label"] for p in r.json()["predictions"]]
    if labels != expected_labels:
        return f"labels {labels} != in-process {expected_labels}"
    bad = httpx.post(f"{url}/v1/models/digits:predict", json={"instances": [[[0.0]]]}, timeout=120)
    if bad.status_code != 400 or bad.json().get("error", {}).get("code") != "invalid_input":
        return f"bad input answered {bad.status_code}: {bad.text[:200]}"
    return None


async def load(url: str, instance: dict, concurrency: int, duration: float) -> dict:
    import httpx

    body = json.dumps({"instances": [instance]}).encode()
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        end = 0.0  # read by the workers at each step: the warm-up and the measured run set it

        async def worker():
            nonlocal errors
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                try:
                    r = await client.post(f"{url}/v1/models/digits:predict", content=body,
                                          headers={"content-type": "application/json"})
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        # A short warm-up at this level, not counted.
        end = time.perf_counter() + min(1.0, duration / 5)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        latencies.clear()
        errors = 0
        started = time.perf_counter()
        end = started + duration
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    import numpy as np

    lat = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {"concurrency": concurrency, "requests": len(latencies), "errors": errors,
            "rps": len(latencies) / elapsed, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99))}


# ----------------------------------------------------------------------------- report

def write_report(results: dict, args) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_text(OUT / "serve_latency.json", json.dumps(results, indent=2))
    lines = [f"# Serve latency ({results['machine']})", "",
             f"{args.duration:g} s per level, one 128x128 PNG digit per request.", "",
             "| target | concurrency | req/s | p50 ms | p99 ms | errors |", "|---|---:|---:|---:|---:|---:|"]
    for t in results["targets"]:
        if t.get("problem"):
            lines.append(f"| {t['name']} | - | - | - | - | not correct: {t['problem']} |")
            continue
        for lvl in t["levels"]:
            lines.append(f"| {t['name']} | {lvl['concurrency']} | {lvl['rps']:.1f} | {lvl['p50_ms']:.1f} | "
                         f"{lvl['p99_ms']:.1f} | {lvl['errors']} |")
    if results.get("fastest_correct_serve_mode"):
        lines += ["", "Fastest correct Serve mode (mean req/s over the levels): "
                      f"**{results['fastest_correct_serve_mode']}**"]
    atomic_write_text(OUT / "serve_latency.md", "\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for t in results["targets"]:
        if t.get("problem"):
            continue
        c = [lvl["concurrency"] for lvl in t["levels"]]
        ax1.plot(c, [lvl["rps"] for lvl in t["levels"]], marker="o", label=t["name"])
        line, = ax2.plot(c, [lvl["p50_ms"] for lvl in t["levels"]], marker="o", label=f"{t['name']} p50")
        ax2.plot(c, [lvl["p99_ms"] for lvl in t["levels"]], marker="x", linestyle="--", color=line.get_color(),
                 label=f"{t['name']} p99")
    ax1.set(xlabel="concurrent clients", ylabel="requests/s", title="Throughput", xscale="log", xticks=LEVELS)
    ax1.set_xticklabels([str(x) for x in LEVELS])
    ax2.set(xlabel="concurrent clients", ylabel="latency (ms)", title="Latency p50 / p99", xscale="log",
            yscale="log", xticks=LEVELS)
    ax2.set_xticklabels([str(x) for x in LEVELS])
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    atomic_write(OUT / "serve_latency.png", lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def main(argv=None) -> int:
    from marcelle_torch.serving.local import SERVE_MODES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per concurrency level")
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS))
    parser.add_argument("--modes", nargs="+", default=list(SERVE_MODES), choices=list(SERVE_MODES))
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--baseline-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline_server:
        run_baseline(args.baseline_server)
        return 0

    import torch

    from marcelle_torch.models import decode_instances, get_spec, load_model, postprocess, resolve_weights

    spec = get_spec("digits")
    resolve_weights(spec, train_if_missing=True, progress=True)  # train once, before any target starts
    samples = digit_instances()
    with torch.no_grad():
        model = load_model(spec)
        expected = [p["label"] for p in postprocess(spec, model(decode_instances(spec, [s for s, _ in samples])))]

    OUT.mkdir(parents=True, exist_ok=True)
    cli = str(Path(sys.executable).with_name("marcelle-torch"))
    plans = [(f"serve-{m}", [cli, "serve", "--port", "{port}", "--serve-mode", m]) for m in args.modes]
    if not args.no_baseline:
        plans.append(("starlette", [sys.executable, __file__, "--baseline-server", "{port}"]))

    results = {"machine": f"{os.cpu_count()} CPU cores, {sys.platform}", "duration_s": args.duration,
               "targets": []}
    for name, cmd in plans:
        print(f"== {name}: starting", flush=True)
        target = Target(name, cmd, OUT / f"serve_latency.{name}.log")
        entry = {"name": name, "levels": []}
        try:
            entry["ready_s"] = round(target.wait_ready(), 1)
            entry["problem"] = check_correct(target.url, samples, expected)
            if entry["problem"]:
                print(f"   NOT CORRECT: {entry['problem']}", flush=True)
            else:
                for level in args.levels:
                    r = asyncio.run(load(target.url, samples[0][0], level, args.duration))
                    entry["levels"].append(r)
                    print(f"   c={level:3d}  {r['rps']:7.1f} req/s  p50 {r['p50_ms']:7.1f} ms  "
                          f"p99 {r['p99_ms']:7.1f} ms  errors {r['errors']}", flush=True)
        except RuntimeError as exc:
            entry["problem"] = str(exc).splitlines()[0]
            print(f"   FAILED: {entry['problem']}", flush=True)
        finally:
            target.stop()
        results["targets"].append(entry)

    serve_ok = [t for t in results["targets"] if t["name"].startswith("serve-") and not t.get("problem")]
    if serve_ok:
        best = max(serve_ok, key=lambda t: sum(lvl["rps"] for lvl in t["levels"]) / len(t["levels"]))
        results["fastest_correct_serve_mode"] = best["name"].removeprefix("serve-")
    write_report(results, args)
    print((OUT / "serve_latency.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
