"""A user's own model, from nothing to its first prediction: through `marcelle-torch up --model
URL#sha256=...` (Ray Serve, and a run through the backend), and in the page (ONNX in the browser).

The models are made here with torch (not built-ins): an RGB classifier (32x32x3, a small
convolution, then a big Linear layer sized so that model.onnx is ~5 MB or ~50 MB), saved with
torch.export (.pt2, dynamic batch) and made into a model folder with ``write_folder`` (what
``marcelle-torch model init`` runs).

- ``up``: the 5 MB folder as a ``.tar.gz`` served by a local ``http.server``; each cycle starts
  ``marcelle-torch up --model URL#sha256=<hex>`` with a fresh MARCELLE_TORCH_CACHE (the archive
  is really downloaded and unpacked, its ONNX bundle exported at start), the built-ins' trained
  weights linked in (as after a first ``make``). From the start of ``up``, it times: the first
  200 answer of ``POST {serve}/v1/models/<name>:predict`` (one PNG, polled every 0.1 s from the
  moment ``up`` names Serve's port), the first run of the model through the backend to reach
  ``succeeded`` (created as soon as the backend accepts a connection, polled every 0.05 s), and
  when ``up`` printed its URLs. Then SIGTERM, and every process it started must be gone.
- ``page``: each model's ONNX bundle (``marcelle-torch export-onnx FOLDER --out DIR``) served by
  the built web app (``start_webapp(..., bundles=...)``, ``onnxBundle: onnx/<name>/``); each load
  is a new headless Chromium (a fresh profile: nothing cached), and times, from navigation start
  (``performance.now()`` in the page): model.onnx downloaded (Resource Timing), the session
  created (the classifier's first run starts: the page has hashed the file and ORT has built the
  session), that first inference, the page ready (after its warm-up runs; also its own
  ``$loadTime`` and the "loaded in" row of its panel), and the first ``predict()`` answered (a
  call made through ``window.marcelleTorchOnnx`` (``benchHooks``) as soon as the page exists).
  The download is from 127.0.0.1: no network in it.

Writes bench/out/model_first_prediction.{json,md} (and the stacks' logs beside them):
    .venv/bin/python bench/model_first_prediction.py [--cycles 3] [--loads 5] [--sizes-mb 5,50]
                                                     [--no-up] [--no-page]
Needs the built web app (make webapp) and services/backend installed (make setup).
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from marcelle_torch.files import atomic_write_text
from marcelle_torch.processes import cli_argv, session_processes

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
NAME = "bench-user"
SIZE = 32
CHANNELS = 3
CONV = 8
LABELS = [f"class-{i}" for i in range(10)]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

# The browser tests' Chromium (path and flags), so that this bench measures the page as they drive it.
sys.path.insert(0, str(REPO / "tests" / "browser"))
from chromium import CHROMIUM, CHROMIUM_ARGS  # noqa: E402


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


# --- the user's model -----------------------------------------------------------------------


def hidden_for(size_mb: float) -> int:
    """The hidden width that makes the module's float32 weights ~``size_mb`` MB (1e6 bytes)."""
    per_unit = CONV * SIZE * SIZE + 1 + len(LABELS)  # one hidden unit: its input row, bias, output column
    return max(1, round(size_mb * 1e6 / 4 / per_unit))


def make_folder(root: Path, size_mb: float, seed: int = 0) -> Path:
    """A model folder as a user makes one: their module saved with torch.export, then model init."""
    import torch

    from marcelle_torch.models.folder import write_folder

    class UserClassifier(torch.nn.Module):
        """An RGB classifier trained on normalised images; answers logits."""

        def __init__(self, hidden: int):
            super().__init__()
            self.conv = torch.nn.Conv2d(CHANNELS, CONV, 3, padding=1)
            self.hidden = torch.nn.Linear(CONV * SIZE * SIZE, hidden)
            self.head = torch.nn.Linear(hidden, len(LABELS))

        def forward(self, x):
            return self.head(torch.relu(self.hidden(torch.relu(self.conv(x)).flatten(1))))

    torch.manual_seed(seed)
    module = UserClassifier(hidden_for(size_mb)).eval()
    example = torch.rand(2, CHANNELS, SIZE, SIZE)
    program = torch.export.export(module, (example,), dynamic_shapes=({0: torch.export.Dim("batch", max=1024)},))
    weights = root / f"user-{size_mb:g}mb.pt2"
    torch.export.save(program, weights)
    folder = root / f"folder-{size_mb:g}mb"
    write_folder(
        weights,
        folder,
        name=NAME,
        labels=",".join(LABELS),
        input_text=f"image:{SIZE}x{SIZE}x{CHANNELS}",
        output="logits",
        mean=MEAN,
        std=STD,
        description=f"an RGB classifier made by bench/model_first_prediction.py (~{size_mb:g} MB)",
    )
    return folder


def export_bundle(folder: Path, out: Path, log: Path) -> dict:
    """``marcelle-torch export-onnx FOLDER --out DIR`` as a user runs it; the bundle's model.json."""
    t0 = time.perf_counter()
    done = subprocess.run(
        [*cli_argv(), "export-onnx", str(folder), "--out", str(out)], capture_output=True, text=True, timeout=1200
    )
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"export-onnx {folder} failed ({done.returncode}); see {log}:\n{done.stderr[-2000:]}")
    meta = json.loads((out / "model.json").read_text())
    return {"seconds": round(time.perf_counter() - t0, 1), "bytes": meta["onnx"]["bytes"], "meta": meta}


def archive(folder: Path, into: Path) -> tuple[Path, str]:
    """The folder as ``NAME.tar.gz`` (one folder at its top) and its sha256."""
    path = into / f"{NAME}.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        tf.add(folder, arcname=NAME)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def png_b64(seed: int = 0) -> str:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, size=(SIZE, SIZE, CHANNELS), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args) -> None:  # noqa: A002 (the base class's name)
        pass


def serve_files(directory: Path) -> tuple[str, http.server.ThreadingHTTPServer]:
    """``directory`` over http on 127.0.0.1 (a free port), in a daemon thread: (url, server)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    threading.Thread(target=server.serve_forever, name="archive-server", daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server


# --- 1. `up --model URL#sha256=...` to the first prediction and run ------------------------


def fresh_cache(root: Path, weights: Path) -> Path:
    """An empty model cache (archives/, folders/ are made in it) with the built-ins' weights linked in."""
    root.mkdir(parents=True)
    (root / "weights").symlink_to(weights, target_is_directory=True)
    return root


def first_prediction(serve_url: str, body: bytes, t0: float, stop: threading.Event, out: dict) -> None:
    endpoint = f"{serve_url}/v1/models/{NAME}:predict"
    attempts = 0
    while not stop.is_set():
        attempts += 1
        request = urllib.request.Request(endpoint, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answer = json.loads(response.read())
            prediction = answer["predictions"][0]
            if prediction["label"] not in LABELS:
                raise ValueError(f"unexpected answer {answer}")
            out.update(serve_s=round(time.perf_counter() - t0, 3), serve_attempts=attempts, serve_answer=prediction)
            return
        except urllib.error.HTTPError as exc:
            out["serve_last_error"] = f"HTTP {exc.code}"
        except (OSError, ValueError, KeyError) as exc:
            out["serve_last_error"] = f"{type(exc).__name__}: {exc}"
        stop.wait(0.1)


def first_run(backend_url: str, b64: str, t0: float, stop: threading.Event, out: dict) -> None:
    from marcelle_torch.worker.client import FeathersClient

    client = FeathersClient(backend_url, timeout=30)
    try:
        while not stop.is_set():
            try:
                client.connect()
                break
            except Exception as exc:  # not listening yet
                out["run_last_error"] = f"{type(exc).__name__}: {exc}"
                stop.wait(0.1)
        out["backend_connected_s"] = round(time.perf_counter() - t0, 3)
        run_id = None
        while not stop.is_set():
            try:
                if run_id is None:
                    run = client.create("runs", {"model": NAME, "input": {"b64": b64}})
                    run_id = run["_id"]
                    out.setdefault("run_created_s", round(time.perf_counter() - t0, 3))
                run = client.get("runs", run_id)
                if run.get("status") == "succeeded":
                    out.update(run_s=round(time.perf_counter() - t0, 3), run_result=run.get("result"))
                    return
                if run.get("status") in ("failed", "canceled"):
                    out["run_last_error"] = f"run {run['status']}: {run.get('error')}"
                    run_id = None  # another one
            except Exception as exc:  # refused while no worker serves the model yet, a dropped connection
                out["run_last_error"] = f"{type(exc).__name__}: {exc}"
            stop.wait(0.05)
    finally:
        client.disconnect()


def up_cycle(ref: str, cache: Path, workdir: Path, log_path: Path, timeout: float) -> dict:
    argv = [*cli_argv(), "up", "--port", "0", "--serve-port", "0", "--backend-port", "0"]
    argv += ["--workdir", str(workdir), "--model", ref]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MARCELLE_TORCH_CACHE": str(cache)}
    lines: list[tuple[float, str]] = []
    found: dict[str, str] = {}
    seen = threading.Condition()
    b64 = png_b64()
    body = json.dumps({"instances": [{"b64": b64}]}).encode()
    result: dict = {}
    stop = threading.Event()
    probes: list[threading.Thread] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env
    )

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with seen:
                lines.append((time.perf_counter() - t0, line.rstrip()))
                for key, pattern in (
                    ("serve", r"Ray Serve on port (\d+)"),
                    ("backend", r"Marcelle backend on port (\d+)"),
                ):
                    if key not in found and (m := re.search(pattern, line)):
                        found[key] = f"http://127.0.0.1:{m.group(1)}"
                if line.startswith("Open http"):
                    found["open"] = line
                seen.notify_all()
        with seen:
            found["eof"] = ""
            seen.notify_all()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def start_probe(key: str, target, *args) -> None:
        with seen:
            if not seen.wait_for(lambda: key in found or "eof" in found, timeout):
                raise RuntimeError(f"`up` did not name its {key} port within {timeout:.0f}s")
            if key not in found:
                raise RuntimeError("`up` exited early; output:\n" + "\n".join(t for _, t in lines[-20:]))
        probe = threading.Thread(target=target, args=(found[key], *args, t0, stop, result), daemon=True)
        probe.start()
        probes.append(probe)

    try:
        start_probe("serve", first_prediction, body)
        start_probe("backend", first_run, b64)
        deadline = time.perf_counter() + timeout
        for probe in probes:
            probe.join(max(0.0, deadline - time.perf_counter()))
        with seen:
            seen.wait_for(lambda: "open" in found or "eof" in found, max(0.0, deadline - time.perf_counter()))
        if "serve_s" not in result or "run_s" not in result or "open" not in found:
            raise RuntimeError(
                f"no first prediction and run within {timeout:.0f}s: {result}; output:\n"
                + "\n".join(t for _, t in lines[-20:])
            )
        result["urls_printed_s"] = round(next(t for t, text in lines if text.startswith("Open http")), 3)
        # When `up` said each step began (the model's download, unpacking and ONNX export are in [1/N]).
        result["steps_s"] = {m.group(1): round(t, 3) for t, text in lines if (m := re.match(r"\[(\d+)/\d+\]", text))}
        t_term = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout)
        result["stop_exit_s"] = round(time.perf_counter() - t_term, 3)
        while session_processes(proc.pid) and time.perf_counter() - t_term < 120:
            time.sleep(0.05)
        result.update(
            stop_all_gone_s=round(time.perf_counter() - t_term, 3),
            left_after_120s=session_processes(proc.pid),
            exit_code=proc.returncode,
        )
    finally:
        stop.set()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        for pid in session_processes(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for probe in probes:
            probe.join(5)
        reader.join(5)
        log_path.write_text("\n".join(f"{t:8.3f} {text}" for t, text in lines) + "\n")
    archives = list((cache / "archives").glob("*.tar.gz"))
    result["archive_downloaded"] = bool(archives)  # into the fresh cache: a real download
    return result


def run_up(folder: Path, tmp: Path, cycles: int, timeout: float) -> dict:
    from marcelle_torch.models import get_spec, resolve_weights
    from marcelle_torch.models.weights import cache_dir

    for name in ("digits", "digits-generator"):  # trained once into the usual cache, if not yet
        resolve_weights(get_spec(name), train_if_missing=True, progress=True)
    weights = cache_dir() / "weights"
    path, sha256 = archive(folder, tmp)
    base, server = serve_files(tmp)
    ref = f"{base}/{path.name}#sha256={sha256}"
    out: dict = {"archive_bytes": path.stat().st_size, "ref": ref, "cycles": []}
    try:
        for i in range(cycles):
            cache = fresh_cache(tmp / f"cache-{i + 1}", weights)
            logs = OUT / f"model_first_prediction.up.{i + 1}.logs"
            try:
                r = up_cycle(
                    ref, cache, tmp / f"stack-{i + 1}", OUT / f"model_first_prediction.up.{i + 1}.log", timeout
                )
            finally:  # the stack's own logs (Serve's, the worker's) next to the bench's
                shutil.rmtree(logs, ignore_errors=True)
                if (tmp / f"stack-{i + 1}" / "logs").is_dir():
                    shutil.copytree(tmp / f"stack-{i + 1}" / "logs", logs)
            r["load"] = load()
            out["cycles"].append(r)
            print(
                f"up cycle {i + 1}: first Serve prediction {r['serve_s']:.1f} s, first run {r['run_s']:.1f} s, "
                f"URLs printed {r['urls_printed_s']:.1f} s; all gone {r['stop_all_gone_s']:.2f} s after SIGTERM "
                f"(load {r['load']})",
                flush=True,
            )
    finally:
        server.shutdown()
        server.server_close()
    c = out["cycles"]
    out["median"] = {
        key: median([x[key] for x in c]) for key in ("serve_s", "run_s", "urls_printed_s", "stop_all_gone_s")
    }
    return out


# --- 2. the page: navigation start to the first ONNX prediction -----------------------------

# Before the app runs: catches the classifier when the page hands it to window.marcelleTorchOnnx
# (config.benchHooks), marks when its first run starts (the session exists) and ends, and asks
# for a prediction at once, which the classifier answers once it is loaded.
INIT_SCRIPT = """(() => {
  const marks = (window.__firstPrediction = {});
  let classifier;
  Object.defineProperty(window, 'marcelleTorchOnnx', {
    configurable: true,
    get: () => classifier,
    set(c) {
      classifier = c;
      marks.hooked = performance.now();
      if (typeof c.run === 'function') {
        const run = c.run.bind(c);
        c.run = async (x) => {
          if (marks.sessionReady !== undefined) return run(x);
          marks.sessionReady = performance.now();
          const out = await run(x);
          marks.firstRunDone = performance.now();
          return out;
        };
      }
      // One input of the model's own size (not known until model.json is read): predict() waits for it.
      marks.predicting = (async () => {
        let loading;
        do {
          loading = c.loaded; // the page may start another load (its model picker) meanwhile
          await loading;
        } while (loading !== c.loaded);
        marks.loaded = performance.now();
        const x = new Float32Array(c.inputLength).fill(0.5);
        const answer = await c.predict(x);
        marks.firstPrediction = performance.now();
        marks.label = answer.label;
        marks.predictMs = c.$latency.get();
      })().catch((e) => (marks.error = String(e?.message ?? e)));
    },
  });
})();"""

READ_MARKS = """async (file) => {
  const marks = window.__firstPrediction;
  if (!marks || !marks.predicting) throw new Error('the page did not expose window.marcelleTorchOnnx (benchHooks)');
  await marks.predicting;
  const c = window.marcelleTorchOnnx;
  const resources = performance.getEntriesByType('resource');
  const entry = resources.find((e) => new URL(e.name).pathname === file);
  const wasm = resources.find((e) => new URL(e.name).pathname.endsWith('.wasm'));
  const { predicting, ...plain } = marks;
  return {
    ...plain,
    downloadStart: entry ? entry.requestStart : null,
    downloaded: entry ? entry.responseEnd : null,
    transferSize: entry ? entry.transferSize : null,
    wasmFetchStart: wasm ? wasm.startTime : null,
    wasmFetched: wasm ? wasm.responseEnd : null,
    wasmBytes: wasm ? wasm.transferSize : null,
    loadTime: c.$loadTime.get(),
    runtime: c.$runtime ? c.$runtime.get() : null,
  };
}"""


def page_load(url: str, name: str, chromium: str, timeout_ms: int) -> dict:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # A new browser for each load: a fresh profile, so model.onnx is really downloaded.
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.set_default_timeout(timeout_ms)
            page.add_init_script(INIT_SCRIPT)
            page.goto(url)
            page.get_by_text("ONNX in the browser", exact=True).first.click()
            marks = page.evaluate(READ_MARKS, f"/onnx/{name}/model.onnx")
            if marks.get("error"):
                raise RuntimeError(f"the page's first prediction failed: {marks['error']}")
            page.wait_for_selector("[data-testid=onnx-model] >> text=loaded in")
            row = re.search(r"loaded in\s*(\d+)\s*ms", page.locator("[data-testid=onnx-model]").inner_text())
            marks["panelLoadedInMs"] = int(row.group(1)) if row else None
        finally:
            browser.close()
    return {
        "downloaded_ms": marks["downloaded"],
        "download_ms": marks["downloaded"] - marks["downloadStart"],
        "session_ready_ms": marks.get("sessionReady"),
        "first_inference_ms": (marks["firstRunDone"] - marks["sessionReady"]) if "firstRunDone" in marks else None,
        "loaded_ms": marks.get("loaded"),
        "first_prediction_ms": marks["firstPrediction"],
        "predict_ms": marks.get("predictMs"),
        "page_load_time_ms": marks["loadTime"],
        "panel_loaded_in_ms": marks["panelLoadedInMs"],
        "classifier_started_ms": marks["hooked"],
        # Without a run() to wrap (the page changed), only the page's own marks remain.
        "download_and_session_ms": (marks["sessionReady"] - marks["hooked"]) if "sessionReady" in marks else None,
        "ort_wasm_fetch_start_ms": marks["wasmFetchStart"],
        "ort_wasm_fetched_ms": marks["wasmFetched"],
        "ort_wasm_bytes": marks["wasmBytes"],
        "transfer_bytes": marks["transferSize"],
        "label": marks.get("label"),
        "runtime": marks.get("runtime"),
    }


def run_page(bundles: dict[float, Path], dist: Path, loads: int, chromium: str) -> dict:
    from marcelle_torch.stack.webapp import start_webapp

    out: dict = {}
    for size_mb, bundle in bundles.items():
        # The other pages' servers are not part of this run: point them at a path of the app itself.
        config = {
            "onnxBundle": f"onnx/{NAME}/",
            "serveUrl": "/elsewhere/serve",
            "backendUrl": "/elsewhere/backend",
            "benchHooks": True,
        }
        url, stop = start_webapp(dist, config, bundles={NAME: bundle})
        rows = []
        try:
            for i in range(loads):
                r = page_load(url, NAME, chromium, 300_000)
                r["load"] = load()
                rows.append(r)
                print(
                    f"page {size_mb:g} MB load {i + 1}: downloaded {r['downloaded_ms']:.0f} ms, session "
                    f"{r['session_ready_ms']:.0f} ms, first inference {r['first_inference_ms']:.1f} ms, first "
                    f"prediction {r['first_prediction_ms']:.0f} ms after navigation start (load {r['load']})",
                    flush=True,
                )
        finally:
            stop()
        meta = json.loads((bundle / "model.json").read_text())
        keys = (
            "classifier_started_ms",
            "downloaded_ms",
            "ort_wasm_fetch_start_ms",
            "ort_wasm_fetched_ms",
            "download_and_session_ms",
            "download_ms",
            "session_ready_ms",
            "first_inference_ms",
            "loaded_ms",
            "first_prediction_ms",
            "predict_ms",
            "page_load_time_ms",
        )
        out[f"{size_mb:g}"] = {
            "onnx_bytes": meta["onnx"]["bytes"],
            "loads": rows,
            "median": {key: median([r[key] for r in rows]) for key in keys},
        }
    return out


# --- report ---------------------------------------------------------------------------------


def markdown(results: dict) -> str:
    """The report as Markdown, from its JSON alone (the docs render it the same way)."""
    m = results["machine"]
    lines = [
        "# A user's model: from nothing to its first prediction",
        "",
        f"{results['date']}, {m['cpus']} CPUs, load average {m['load_before']} before, {m['load_after']} after; "
        f"`{results['command']}`. The model: an RGB {SIZE}x{SIZE} classifier made with torch "
        "(torch.export .pt2 in a model folder), not a built-in.",
    ]
    up = results.get("up")
    if up:
        c = up["cycles"]
        lines += [
            "",
            f"## `marcelle-torch up --model URL#sha256=...` ({up['model_mb']:g} MB model, "
            f"{up['archive_bytes'] / 1e6:.1f} MB archive, fresh model cache)",
            "",
            "Seconds from starting `up`: the model's archive downloaded and unpacked, its ONNX bundle exported, "
            "Ray Serve, the backend and a worker started.",
            "",
            "| cycle | first Serve prediction | first backend run succeeded | `up` printed its URLs "
            "| all gone after SIGTERM | load |",
            "|---:|---:|---:|---:|---:|---|",
        ]
        for i, r in enumerate(c, start=1):
            lines.append(
                f"| {i} | {r['serve_s']:.1f} s | {r['run_s']:.1f} s | {r['urls_printed_s']:.1f} s | "
                f"{r['stop_all_gone_s']:.2f} s | {r['load']} |"
            )
        med = up["median"]
        lines.append(
            f"| **median** | **{med['serve_s']:.1f} s** | **{med['run_s']:.1f} s** | {med['urls_printed_s']:.1f} s | "
            f"{med['stop_all_gone_s']:.2f} s | |"
        )
        left = [r["left_after_120s"] for r in c if r["left_after_120s"]]
        lines += ["", "Processes left after SIGTERM: " + (f"**{left}**" if left else "none, every cycle.")]
    page = results.get("page")
    if page:
        lines += [
            "",
            "## The page: ONNX in the browser, navigation start to the first prediction",
            "",
            f"Median of {results['loads']} page loads, each in a new headless Chromium (fresh profile: the model is "
            "downloaded each time, from 127.0.0.1); milliseconds from navigation start. The classifier starts "
            "loading once the app has booted (its JS, config.json); then model.json and model.onnx are fetched. "
            "Session ready: model.onnx downloaded, hashed (sha256), ORT's runtime fetched and compiled and the "
            "session created; download + session: from the classifier's start to there. First inference: the "
            "session's first run (cold). Ready: after the page's warm-up runs (its own `$loadTime`, the panel's "
            '"loaded in", counts from the classifier\'s start). First prediction: `predict()` on one input, '
            "asked for as soon as the page exists, answered.",
            "",
            "| model.onnx | classifier starts loading | model.onnx downloaded (the transfer) "
            "| ORT's .wasm fetched (from) | session ready | download + session | first inference (cold) "
            "| ready (warm-up done; `$loadTime`) "
            "| **first prediction** | that predict() |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]

        def ms(value: float | None, digits: int = 0) -> str:
            return "–" if value is None else f"{value:.{digits}f} ms"

        for _, r in page.items():
            med = r["median"]
            lines.append(
                f"| {r['onnx_bytes'] / 1e6:.1f} MB | {ms(med['classifier_started_ms'])} | "
                f"{ms(med['downloaded_ms'])} ({ms(med['download_ms'])}) | "
                f"{ms(med['ort_wasm_fetched_ms'])} ({ms(med['ort_wasm_fetch_start_ms'])}) | "
                f"{ms(med['session_ready_ms'])} | **{ms(med['download_and_session_ms'])}** | "
                f"**{ms(med['first_inference_ms'], 1)}** | {ms(med['loaded_ms'])} ({ms(med['page_load_time_ms'])}) | "
                f"**{ms(med['first_prediction_ms'])}** | {ms(med['predict_ms'], 2)} |"
            )
        runtime = next(iter(page.values()))["loads"][0].get("runtime")
        if runtime:
            lines += ["", f"The page's runtime: {runtime}."]
    return "\n".join(lines) + "\n"


def write_report(results: dict) -> None:
    atomic_write_text(OUT / "model_first_prediction.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(OUT / "model_first_prediction.md", markdown(results))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=3, help="`up` start/stop cycles (default 3)")
    parser.add_argument("--loads", type=int, default=5, help="page loads per model size (default 5)")
    parser.add_argument(
        "--sizes-mb",
        type=lambda v: [float(x) for x in v.split(",")],
        default=[5.0, 50.0],
        help="model.onnx sizes for the page, MB, comma-separated (default 5,50); `up` uses the first",
    )
    parser.add_argument("--no-up", action="store_true", help="skip `marcelle-torch up`")
    parser.add_argument("--no-page", action="store_true", help="skip the page")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for one `up` cycle (default 600)")
    parser.add_argument("--dist", type=Path, default=REPO / "services/frontend/dist")
    parser.add_argument("--chromium", default=CHROMIUM, help=f"Chromium to run (default: {CHROMIUM})")
    args = parser.parse_args(argv)
    if not (args.dist / "index.html").is_file():
        sys.exit(f"model_first_prediction: the web app is not built ({args.dist}): run `make webapp`")

    OUT.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "command": " ".join(["bench/model_first_prediction.py", *(argv or sys.argv[1:])]),
        "machine": {"cpus": os.cpu_count(), "load_before": load()},
        "loads": args.loads,
        "model": {"input": f"image {SIZE}x{SIZE}x{CHANNELS}", "labels": len(LABELS), "weights": ".pt2 (torch.export)"},
    }
    with tempfile.TemporaryDirectory(prefix="model-first-prediction-") as tmp_name:
        tmp = Path(tmp_name)
        folders = {}
        bundles = {}
        for size_mb in args.sizes_mb:
            folders[size_mb] = make_folder(tmp, size_mb)
            print(f"model folder {folders[size_mb]} ({size_mb:g} MB)", flush=True)
            if not args.no_page:
                done = export_bundle(
                    folders[size_mb],
                    tmp / f"bundle-{size_mb:g}mb",
                    OUT / f"model_first_prediction.export-{size_mb:g}mb.log",
                )
                bundles[size_mb] = tmp / f"bundle-{size_mb:g}mb"
                results["model"][f"export_onnx_{size_mb:g}mb_s"] = done["seconds"]
                print(f"  export-onnx: model.onnx {done['bytes'] / 1e6:.1f} MB in {done['seconds']:.0f} s", flush=True)
        if not args.no_page:
            results["page"] = run_page(bundles, args.dist, args.loads, args.chromium)
        if not args.no_up:
            up_tmp = tmp / "up"
            up_tmp.mkdir()
            results["up"] = {
                "model_mb": args.sizes_mb[0],
                **run_up(folders[args.sizes_mb[0]], up_tmp, args.cycles, args.timeout),
            }
    results["machine"]["load_after"] = load()
    write_report(results)
    print((OUT / "model_first_prediction.md").read_text())
    return 0 if not any(c["left_after_120s"] for c in results.get("up", {}).get("cycles", [])) else 1


if __name__ == "__main__":
    sys.exit(main())
