"""The same inputs through every way the digits model runs, compared with PyTorch in-process.

Paths:
- ``pytorch``: the model in this process (the reference);
- ``ray-serve``: ``POST /v1/models/digits:predict`` on ``marcelle-torch serve`` (started here on
  free ports, or ``--serve-url``);
- ``onnxruntime``: the exported bundle's ``model.onnx`` in onnxruntime (Python, CPU EP);
- ``onnxruntime-web``: the built web app's ONNX page in headless Chromium (WASM backend): each
  input is uploaded into the page's image input, the page predicts, the result is read back.

Inputs: held-out scikit-learn digits drawn on 128x128 canvases (both polarities) and random
noise canvases, quantised to 8 bits so that the PNG the server and the browser get holds
exactly the tensor the in-process paths get. Latency is per input (batch of 1): in-process
forward, HTTP round trip, ORT run, and the page's own inference time (``session.run``).

Writes bench/out/parity.{json,md,png}:
    .venv/bin/python bench/parity.py [--n 200] [--serve-url URL | --no-serve] [--no-browser]
                                     [--browser-threads auto,2]
Needs the bundle and the built app: `marcelle-torch export-onnx digits`, then `npm run build`.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from marcelle_torch.files import atomic_write, atomic_write_text
from marcelle_torch.processes import ManagedProcess, cli_argv, free_port

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"

# The browser tests' Chromium (path and flags), so that this bench measures the page as they drive it.
sys.path.insert(0, str(REPO / "tests" / "browser"))
from chromium import CHROMIUM, CHROMIUM_ARGS  # noqa: E402


def make_inputs(n: int, seed: int = 0):
    """(uint8 canvases (n, 128, 128), float32 tensor (n, 1, 128, 128)): 90% drawn digits, 10% noise."""
    from marcelle_torch.models.optdigits import load_split, render_canvas

    _, x_test, _, _ = load_split(seed)
    rng = np.random.default_rng(seed)
    n_noise = max(1, n // 10)
    drawn = [render_canvas(x_test[i % len(x_test)], 128, rng, light_background=bool(i % 2)) for i in range(n - n_noise)]
    noise = list(rng.uniform(0, 1, size=(n_noise, 128, 128)))
    canvases = (np.stack(drawn + noise) * 255).round().astype(np.uint8)
    # The server's decoding: Pillow "L" bytes / 255 in float32.
    return canvases, (canvases.astype(np.float32) / 255.0)[:, None]


def png_bytes(canvas: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(canvas, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def as_probabilities(conf: dict, labels) -> list[float]:
    return [float(conf[label]) for label in labels]


# --- the paths ----------------------------------------------------------------------------


def run_pytorch(spec, model, tensor):
    import torch

    probs, times = [], []
    with torch.inference_mode():
        for x in torch.from_numpy(tensor).split(1):
            t0 = time.perf_counter()
            p = model(x)
            times.append(time.perf_counter() - t0)
            probs.append(p[0].numpy())
    return np.stack(probs), times


def run_onnxruntime(bundle: Path, tensor, pause: float = 0.0):
    """ORT on each input; ``pause`` seconds idle before each run (the page's pace), else back to back."""
    from marcelle_torch.onnx.checks import ort_session

    session = ort_session(bundle / "model.onnx")
    meta = json.loads((bundle / "model.json").read_text())["onnx"]
    for x in tensor[:10]:  # warm-up, as the page does after loading
        session.run([meta["output_name"]], {meta["input_name"]: x[None]})
    probs, times = [], []
    for x in tensor:
        if pause:
            time.sleep(pause)
        t0 = time.perf_counter()
        p = session.run([meta["output_name"]], {meta["input_name"]: x[None]})[0]
        times.append(time.perf_counter() - t0)
        probs.append(p[0])
    return np.stack(probs), times


def run_serve(url: str, labels, canvases):
    endpoint = f"{url.rstrip('/')}/v1/models/digits:predict"
    probs, times = [], []
    for canvas in canvases:
        body = json.dumps({"instances": [{"b64": base64.b64encode(png_bytes(canvas)).decode()}]}).encode()
        request = urllib.request.Request(endpoint, data=body, headers={"Content-Type": "application/json"})
        t0 = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as resp:
            prediction = json.loads(resp.read())["predictions"][0]
        times.append(time.perf_counter() - t0)
        probs.append(as_probabilities(prediction["confidences"], labels))
    return np.array(probs, dtype=np.float32), times


BACK_TO_BACK_JS = """async (encoded) => {
  const c = window.marcelleTorchOnnx;
  const bytes = Uint8Array.from(atob(encoded), (ch) => ch.charCodeAt(0));
  const size = c.inputLength, n = bytes.length / size, times = [], probs = [];
  for (let i = 0; i < n; i += 1) {
    const x = new Float32Array(size);
    for (let j = 0; j < size; j += 1) x[j] = bytes[i * size + j] / 255;
    const t0 = performance.now();
    const p = await c.run(x);
    times.push(performance.now() - t0);
    probs.push(Array.from(p));
  }
  return { times, probs };
}"""


def run_browser(dist: Path, labels, canvases, chromium: str, threads="auto"):
    """Each canvas uploaded into the ONNX page's image input; the page's prediction read back.

    Returns (probabilities, times, runtime): runtime is what the page says it really used (its
    ``data-`` hooks: execution provider, WASM threads, SIMD, cross-origin isolation) and the
    number of web workers the browser saw the page start (ORT's threads are workers)."""
    from playwright.sync_api import sync_playwright

    from marcelle_torch.stack.webapp import start_webapp

    # The other pages' servers are not part of this run: point them at a path of the app itself.
    url, stop = start_webapp(
        dist,
        {
            "onnxBundle": "onnx/digits/",
            "serveUrl": "/elsewhere/serve",
            "backendUrl": "/elsewhere/backend",
            "onnxThreads": threads,
            "benchHooks": True,
        },
    )
    probs, times = [], []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page()
            workers = []
            page.on("worker", lambda worker: workers.append(worker.url))
            page.set_default_timeout(120_000)
            page.goto(url)
            page.get_by_text("ONNX in the browser", exact=True).first.click()
            page.wait_for_selector("[data-testid=onnx-model-status][data-status=ready]")
            upload = page.locator("[data-testid=image-input-upload] input[type=file]")
            label = "[data-testid=onnx-label]"
            started = time.perf_counter()
            for i, canvas in enumerate(canvases, start=1):
                upload.set_input_files(
                    files=[{"name": f"{i}.png", "mimeType": "image/png", "buffer": png_bytes(canvas)}]
                )
                page.wait_for_function(
                    "([sel, n]) => document.querySelector(sel)?.dataset.count === String(n)", arg=[label, i]
                )
                el = page.locator(label)
                probs.append(as_probabilities(json.loads(el.get_attribute("data-confidences")), labels))
                times.append(float(page.locator("[data-testid=onnx-time]").get_attribute("data-ms")) / 1000)
            pace = (time.perf_counter() - started) / len(canvases)
            # The same inputs again, back to back inside the page (the runtime alone, as native ORT
            # is timed in a loop): the same session.run the page's predictions use.
            encoded = base64.b64encode(np.ascontiguousarray(canvases).tobytes()).decode()
            loop = page.evaluate(BACK_TO_BACK_JS, encoded)
            hook = page.locator("[data-testid=onnx-model-backend]")
            runtime = {
                "backend": hook.get_attribute("data-backend"),
                "ep": hook.get_attribute("data-ep"),
                "threads": int(hook.get_attribute("data-threads")),
                "simd": hook.get_attribute("data-simd") == "true",
                "cross_origin_isolated": page.evaluate("globalThis.crossOriginIsolated"),
                "workers_started": len(workers),
                "threads_setting": threads,
                "seconds_between_predictions": round(pace, 4),
            }
            browser.close()
    finally:
        stop()
    back_to_back = (np.array(loop["probs"], dtype=np.float32), [t / 1000 for t in loop["times"]])
    return np.array(probs, dtype=np.float32), times, runtime, back_to_back


def start_serve(log: Path) -> tuple[ManagedProcess, str]:
    """A ``marcelle-torch serve`` of the digits model on free ports, once ready: (process, url)."""
    port = free_port()
    server = ManagedProcess(
        "marcelle-torch serve",
        [
            *cli_argv(),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--metrics-port",
            str(free_port()),
            "--model",
            "digits",
        ],
        log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        server.wait_http(url + "/readyz", 900)
    except BaseException:
        server.stop()
        raise
    return server, url


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --- report -------------------------------------------------------------------------------


def compare(reference: np.ndarray, probs: np.ndarray, times: list[float]) -> dict:
    agree = reference.argmax(1) == probs.argmax(1)
    return {
        "inputs": int(len(probs)),
        "label_agreement_pct": round(100 * float(agree.mean()), 2),
        "disagreeing_inputs": [int(i) for i in np.nonzero(~agree)[0]],
        "max_abs_diff": float(np.abs(reference - probs).max()),
        "latency_p50_ms": round(1000 * statistics.median(times), 3),
        "latency_p90_ms": round(1000 * float(np.percentile(times, 90)), 3),
    }


def markdown(results: dict) -> str:
    """The report as Markdown, from its JSON alone (the docs render it the same way)."""
    rows = [
        "| path | inputs | same label as PyTorch | max abs diff (probabilities) | latency p50 | p90 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["paths"].items():
        if "skipped" in r:
            rows.append(f"| {name} | – | skipped: {r['skipped']} | | | |")
            continue
        rows.append(
            f"| {name} | {r['inputs']} | {r['label_agreement_pct']:.2f}% | {r['max_abs_diff']:.2e} | "
            f"{r['latency_p50_ms']:.2f} ms | {r['latency_p90_ms']:.2f} ms |"
        )
    env = results["environment"]
    lines = [
        "# Parity of the digits model across paths",
        "",
        f"{results['inputs']} inputs ({results['drawn']} drawn held-out digits, {results['noise']} noise canvases), "
        f"one at a time; reference: PyTorch in-process. Machine: {env['cpus']} CPUs; torch {env['torch']}, "
        f"onnxruntime {env['onnxruntime']}, browser backend {env.get('browser_backend') or 'n/a'}; "
        f"load average {env['load_before']} before, {env['load_after']} after.",
        "",
    ] + rows
    web, native = results["paths"].get("onnxruntime-web", {}), results["paths"].get("onnxruntime", {})
    if "latency_p50_ms" in web and "latency_p50_ms" in native:
        rt = web["runtime"]
        ratio = results["web_vs_native_p50"]
        lines += [
            "",
            f"onnxruntime-web / onnxruntime p50, like for like: **{ratio['back_to_back']:.2f}x** back to back "
            f"(the same inputs in a loop in each runtime), **{ratio['paced']:.2f}x** one input at a time at "
            f"the page's pace ({1000 * rt['seconds_between_predictions']:.0f} ms apart; native ORT idles as long "
            f"between runs); goal <= 3x. The page's prediction p50 against native back to back (the old "
            f"comparison): {ratio['page_vs_native_back_to_back']:.2f}x. The page really used: {rt['ep']}, "
            f"{rt['threads']} thread(s), SIMD {rt['simd']}, "
            f"crossOriginIsolated {rt['cross_origin_isolated']}, {rt['workers_started']} web worker(s) started.",
        ]
    lines += [
        "",
        "Latency: in-process forward (pytorch), HTTP round trip with PNG decoding (ray-serve), "
        "ORT run (onnxruntime; back to back, or paced), the page's own session.run per uploaded image "
        "(onnxruntime-web) and in a loop over the same inputs (back to back).",
    ]
    return "\n".join(lines) + "\n"


def write_report(results: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_text(OUT / "parity.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(OUT / "parity.md", markdown(results))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = {k: v for k, v in results["paths"].items() if "skipped" not in v}
    fig, ax = plt.subplots(figsize=(7, 3.6))
    names = list(done)
    bars = ax.bar(names, [done[n]["latency_p50_ms"] for n in names], color="#0d9488")
    for bar, n in zip(bars, names, strict=True):
        ax.annotate(
            f"{done[n]['label_agreement_pct']:.1f}% same label\nmax diff {done[n]['max_abs_diff']:.1e}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_ylabel("latency p50 per input (ms)")
    ax.set_title(f"digits: {results['inputs']} inputs through each path (vs PyTorch)")
    ax.margins(y=0.3)
    fig.tight_layout()
    atomic_write(OUT / "parity.png", lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="inputs (default 200)")
    parser.add_argument("--serve-url", help="use this running Serve instead of starting one")
    parser.add_argument("--no-serve", action="store_true", help="skip the Ray Serve path")
    parser.add_argument("--no-browser", action="store_true", help="skip the onnxruntime-web path")
    parser.add_argument(
        "--browser-threads",
        type=lambda v: [t if t == "auto" else int(t) for t in v.split(",")],
        default=["auto"],
        help="the page's onnxThreads settings to measure, comma-separated; "
        "the first is the reported row (default: auto)",
    )
    parser.add_argument("--bundle", type=Path, default=REPO / "services/frontend/public/onnx/digits")
    parser.add_argument("--dist", type=Path, default=REPO / "services/frontend/dist")
    parser.add_argument("--chromium", default=CHROMIUM, help=f"Chromium to run (default: {CHROMIUM})")
    args = parser.parse_args(argv)

    import onnxruntime
    import torch

    from marcelle_torch.models import get_spec, load_model

    if not (args.bundle / "model.onnx").is_file():
        sys.exit(f"parity: no bundle at {args.bundle}: run `marcelle-torch export-onnx digits` first")
    spec = get_spec("digits")
    model = load_model(spec, progress=True)
    from marcelle_torch.models import resolve_weights
    from marcelle_torch.models.weights import sha256_of

    made_from = json.loads((args.bundle / "model.json").read_text())["created_from"].get("weights_sha256")
    if made_from != sha256_of(resolve_weights(spec)):
        sys.exit(
            f"parity: {args.bundle} was exported from other weights than the model here: re-export it "
            "(same MARCELLE_TORCH_CACHE), then rebuild the app"
        )
    canvases, tensor = make_inputs(args.n)
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "command": " ".join(["bench/parity.py", *(argv or sys.argv[1:])]),
        "inputs": args.n,
        "noise": max(1, args.n // 10),
        "drawn": args.n - max(1, args.n // 10),
        "paths": {},
        "environment": {
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "load_before": _load(),
            "onnxruntime": onnxruntime.__version__,
        },
    }

    print(f"pytorch: {args.n} inputs", flush=True)
    reference, times = run_pytorch(spec, model, tensor)
    results["paths"]["pytorch"] = compare(reference, reference, times)

    print("onnxruntime (Python, CPU EP)", flush=True)
    probs, times = run_onnxruntime(args.bundle, tensor)
    results["paths"]["onnxruntime"] = compare(reference, probs, times)

    if args.no_serve:
        results["paths"]["ray-serve"] = {"skipped": "--no-serve"}
    else:
        server = None
        try:
            url = args.serve_url
            if not url:
                print("ray-serve: starting marcelle-torch serve (local Ray)", flush=True)
                OUT.mkdir(parents=True, exist_ok=True)
                server, url = start_serve(OUT / "parity.serve.log")
            print(f"ray-serve: {url}", flush=True)
            probs, times = run_serve(url, spec.labels, canvases)
            results["paths"]["ray-serve"] = compare(reference, probs, times)
        finally:
            if server:
                server.stop()

    if args.no_browser:
        results["paths"]["onnxruntime-web"] = {"skipped": "--no-browser"}
    elif not (args.dist / "onnx/digits/model.onnx").is_file():
        sys.exit(f"parity: the built app {args.dist} has no ONNX bundle: export, then `npm run build`")
    else:
        for i, threads in enumerate(args.browser_threads):
            name = "onnxruntime-web" if i == 0 else f"onnxruntime-web (onnxThreads {threads})"
            print(f"{name}: the app's ONNX page in headless Chromium (onnxThreads {threads})", flush=True)
            probs, times, runtime, (loop_probs, loop_times) = run_browser(
                args.dist, spec.labels, canvases, args.chromium, threads
            )
            results["paths"][name] = {**compare(reference, probs, times), "runtime": runtime}
            results["paths"][f"{name}, back to back"] = {
                **compare(reference, loop_probs, loop_times),
                "runtime": runtime,
            }
            print(f"  runtime: {runtime}", flush=True)
        web = results["paths"]["onnxruntime-web"]
        results["environment"]["browser_backend"] = web["runtime"]["backend"]
        # Native ORT again at the page's pace (idle between inputs, as the browser is between
        # uploads): idle cores and caches cost both runtimes alike.
        pause = min(web["runtime"]["seconds_between_predictions"], 0.2)
        print(f"onnxruntime, paced: one input every {pause * 1000:.0f} ms", flush=True)
        probs, times = run_onnxruntime(args.bundle, tensor, pause=pause)
        results["paths"]["onnxruntime, paced like the page"] = compare(reference, probs, times)
        native = results["paths"]["onnxruntime"]["latency_p50_ms"]
        results["web_vs_native_p50"] = {
            "back_to_back": round(results["paths"]["onnxruntime-web, back to back"]["latency_p50_ms"] / native, 3),
            "paced": round(
                web["latency_p50_ms"] / results["paths"]["onnxruntime, paced like the page"]["latency_p50_ms"], 3
            ),
            "page_vs_native_back_to_back": round(web["latency_p50_ms"] / native, 3),
        }

    results["environment"]["load_after"] = _load()
    write_report(results)
    print((OUT / "parity.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
