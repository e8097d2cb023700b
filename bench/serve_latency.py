"""Ray Serve against the strongest single-process server for the same contract, driven by wrk.

Load comes from ``wrk`` (Debian package ``wrk``; ``make system-deps``), one connection per
client, each sending one request after the other; a Python client saturates a core at these
rates and would measure itself. Its ceiling is shown in the same run: the same wrk against a
no-op Serve deployment (``/noop``) deployed beside the models.

Targets, each started fresh, the same PNG body, the same weights (the repo's cache, as `make`):

- ``serve``: ``marcelle-torch serve`` with the packaged (default) serve config;
- ``starlette``: uvicorn (uvloop, httptools) + Starlette, the same JSON contract, torch 1 thread,
  the forward pass on the event loop (no thread hop);
- ``starlette-batched``: the same with the project's adaptive batcher in-process (forward in a
  worker thread, concurrent requests batched).
The baseline of each ratio is the better of the two at that level.

The peer: LitServe (``pip install -c constraints.txt '.[bench]'``; bench/litserve_peer.py), the same
contract, model and weights, torch 1 thread per inference worker, its dynamic batching (batches up to
16), in each configuration of ``workers_per_device`` (1, 2) x ``batch_timeout`` (0, 2, 5 ms): the
targets ``litserve-w<workers>-t<ms>``, measured in the same interleaved rounds. At each level the
LitServe best is its configuration with the highest median req/s (the lowest median p50 at c=1).
While one target is measured, the others that are not Serve are paused (SIGSTOP): idle LitServe
processes poll their queues and would take the measured one's CPU.
Goal 3: at c=32, Serve >= 1.2x the best LitServe configuration of each round, in every round; at
c=1, Serve's p50 <= the best LitServe p50.

Where Serve's CPU goes: /proc's CPU seconds of every process in the Serve target's session (Ray's
processes, the proxy, HAProxy, the replicas), grouped by role, idle (5 s, the other servers paused)
and during the first c=32 round, as shares of the machine's cores; with py-spy, the model replica's
top functions in an extra c=32 run.

Each Serve target is also measured on the Open Inference Protocol (v2): ``POST
/v2/models/digits/infer`` with the same digit as an FP32 tensor in JSON (the decoded 1x128x128
input, what a v2 client that does its own preprocessing sends), beside v1's PNG body; a v2 infer
takes the router's hop to the model's deployment (serving/app.py).

``--serve-modes`` adds a Serve target per way HTTP reaches the application (``marcelle-torch serve
--serve-mode``, serving/modes.py), measured in the same interleaved rounds: ``serve`` is the default
mode, ``serve-<mode>`` the others (``--skip-baselines`` leaves the Starlette servers and LitServe out). Such a
run writes bench/out/serve_modes.{json,md,png}, beside the default run's report.

Goal 1: at c=32, Serve >= 1.5x the baseline's req/s; at c=1, Serve's p50 <= 2x the baseline's.

Compute-bound section (goal 2): the ResNet-18-shaped benchmark model
(``marcelle_torch.models.resnet_bench:spec``, 3x224x224, random weights) through Serve with the
default config, against the best in-process batched samples/s (batch size x torch threads swept
in one process), and against LitServe (``litserve-resnet-w<workers>-t<ms>``, workers 1, 2 x
batch_timeout 0, 5 ms): Serve >= 1.0x the best LitServe configuration of each round at c=32.

Writes bench/out/serve_latency.{json,md,png}.
    .venv/bin/python bench/serve_latency.py [--duration 8] [--skip-compute]
A short run while editing: --duration 2 --rounds 1 --levels 1 32 --skip-compute
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The weights cache `make` uses (tests/conftest.py and the Makefile set the same), before any
# marcelle_torch import reads it.
os.environ.setdefault("MARCELLE_TORCH_CACHE", str(REPO / ".cache" / "models"))

from marcelle_torch.files import atomic_write, atomic_write_text  # noqa: E402
from marcelle_torch.processes import ManagedProcess, free_port, session_processes  # noqa: E402

OUT = REPO / "bench" / "out"
LEVELS = (1, 8, 32)
RESNET = "marcelle_torch.models.resnet_bench:spec"
V2_INFER = "/v2/models/digits/infer"
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open(os.getenv("BODY_FILE"), "rb"); wrk.body = f:read("*a"); f:close()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, '
    .. '"errors": %d, "non2xx": %d}\\n', summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(99), e.connect + e.read + e.write + e.timeout, e.status))
end
"""


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


def rgb_instance(size: int = 224) -> dict:
    import base64
    import io

    import numpy as np
    from PIL import Image

    arr = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG")
    return {"b64": base64.b64encode(buf.getvalue()).decode()}


# ----------------------------------------------------------------------------- the single-process baseline


def baseline_app(model_ref: str, batched: bool):
    """Starlette app with the serve contract for one model; forward in-process, torch 1 thread."""
    import torch
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from marcelle_torch.errors import MarcelleTorchError
    from marcelle_torch.models import decode_instances, get_spec, load_model, postprocess
    from marcelle_torch.models.inputs import parse_predict_body
    from marcelle_torch.serving.api import unknown_model
    from marcelle_torch.serving.batching import AdaptiveBatcher

    torch.set_num_threads(1)
    spec = get_spec(model_ref)
    model = load_model(spec, train_if_missing=True)

    def run_batch(batches):
        sizes = [len(b) for b in batches]
        with torch.inference_mode():
            outputs = model(torch.cat(batches) if len(batches) > 1 else batches[0])
        return [postprocess(spec, part) for part in outputs.split(sizes)]

    batcher = AdaptiveBatcher(run_batch, max_batch_size=16)

    async def predict(request):
        try:
            if request.path_params["name"] != spec.name:
                raise unknown_model(request.path_params["name"], [spec.name])
            batch = decode_instances(spec, parse_predict_body(await request.body()))
            if batched:
                predictions = await batcher.submit(batch, len(batch))
            else:
                predictions = run_batch([batch])[0]
        except MarcelleTorchError as exc:
            return JSONResponse(exc.to_json(), status_code=exc.status)
        return Response(json.dumps({"predictions": predictions}), media_type="application/json")

    async def readyz(_):
        return JSONResponse({"status": "ready"})

    return Starlette(routes=[Route("/v1/models/{name}:predict", predict, methods=["POST"]), Route("/readyz", readyz)])


# LitServe's configurations: (workers_per_device, batch_timeout in ms).
LITSERVE_CONFIGS = tuple((w, t) for w in (1, 2) for t in (0, 2, 5))
LITSERVE_GOAL_C32 = 1.2  # Serve's req/s at c=32 over the LitServe best, in every round
# The compute-bound model: the queue stays full at c=32, so fewer timeouts to try.
LITSERVE_CONFIGS_COMPUTE = ((1, 0), (1, 5), (2, 0), (2, 5))
LITSERVE_GOAL_COMPUTE = 1.0


def litserve_plans(model_ref: str, check, configs=LITSERVE_CONFIGS, tag: str = "") -> list:
    """One target per LitServe configuration, or one that says how to install LitServe."""
    import importlib.util

    if importlib.util.find_spec("litserve") is None:
        missing = "litserve is not installed: pip install -c constraints.txt '.[bench]'"
        return [("litserve", None, None, lambda _url: missing)]
    return [
        (
            f"litserve{tag}-w{w}-t{t}ms",
            [sys.executable, __file__, "--litserve-server", "{port}", model_ref, str(w), str(t)],
            None,
            check,
        )
        for w, t in configs
    ]


def run_baseline(port: int, model_ref: str, batched: bool) -> None:
    import uvicorn

    uvicorn.run(
        baseline_app(model_ref, batched),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        loop="uvloop",
        http="httptools",
        access_log=False,
    )


# ----------------------------------------------------------------------------- targets and load


class Target(ManagedProcess):
    """A server under test. The ones that are not Serve are paused (SIGSTOP) while another target is
    measured: LitServe's idle processes poll their queues and would take CPU from it. Serve's stay
    up (Ray's health checks); its idle share is in the CPU breakdown."""

    def __init__(self, name: str, args: list[str], log: Path, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.pausable = not name.startswith("serve")
        self.paused = False
        super().__init__(name, [a.replace("{port}", str(self.port)) for a in args], log, env=env)

    def _signal_session(self, sig: int) -> None:
        for pid in session_processes(self.pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def pause(self) -> None:
        if self.pausable and not self.paused:
            self._signal_session(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.paused:
            self._signal_session(signal.SIGCONT)
            self.paused = False

    def wait_ready(self, timeout_s: float = 900) -> float:
        started = time.monotonic()
        self.wait_http(self.url + "/readyz", timeout_s)
        return time.monotonic() - started

    def stop(self) -> None:
        self.resume()  # a stopped process would not see SIGTERM
        super().stop(timeout=180)


@contextmanager
def measuring(target: Target):
    """``target`` running (resumed if paused) for the time of a measurement, paused again after."""
    target.resume()
    try:
        yield
    finally:
        target.pause()


def serve_config_with_noop(models: list[str], tmp: Path) -> Path:
    """The packaged config for ``models`` plus a no-op application at /noop (wrk's ceiling)."""
    import yaml

    from marcelle_torch.serving.config import DEFAULT_CONFIG, apply_overrides

    config = apply_overrides(yaml.safe_load(DEFAULT_CONFIG.read_text()), models=models)
    config["applications"].append(
        {
            "name": "noop",
            "route_prefix": "/noop",
            "import_path": "noop_app:app",
            "deployments": [{"name": "Noop", "ray_actor_options": {"num_cpus": 0}}],
        }
    )
    (tmp / "noop_app.py").write_text(
        "from ray import serve\nfrom starlette.responses import Response\n\n"
        "@serve.deployment\nclass Noop:\n"
        "    async def __call__(self, request):\n"
        "        await request.body()\n"
        "        return Response(b'{\"predictions\": []}', media_type='application/json')\n\n"
        "app = Noop.bind()\n"
    )
    path = tmp / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def drained(result: dict) -> dict:
    """Wait until what the server still had queued when wrk stopped is done (about its p99), so the
    next measurement does not share the CPU with the last one's backlog."""
    time.sleep(min(10.0, result["p99_ms"] / 1000 + 0.5))
    return result


def wrk(url: str, body: bytes, concurrency: int, duration: float, script: Path) -> dict:
    return drained(wrk_undrained(url, body, concurrency, duration, script))


def wrk_undrained(url: str, body: bytes, concurrency: int, duration: float, script: Path) -> dict:
    body_file = script.with_suffix(".body")
    body_file.write_bytes(body)
    cmd = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "30s",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(
        cmd, capture_output=True, text=True, env=dict(os.environ, BODY_FILE=str(body_file)), timeout=duration + 60
    )
    match = re.search(r"^RESULT (\{.*\})$", out.stdout, re.M)
    if not match:
        raise RuntimeError(f"wrk gave no result: {out.stdout[-300:]} {out.stderr[-300:]}")
    r = json.loads(match.group(1))
    ok = r["requests"] - r["non2xx"]
    return {
        "concurrency": concurrency,
        "requests": r["requests"],
        "errors": r["errors"] + r["non2xx"],
        "rps": ok / (r["duration_us"] / 1e6),
        "p50_ms": r["p50_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
    }


# ----------------------------------------------------------------------------- where the CPU goes

# (role, pattern in the command line), first match wins; Ray names its workers' processes
# ``ray::<actor class>`` (setproctitle).
ROLES = (
    ("replica (model)", r"^ray::ServeReplica:model-"),
    ("replica (router)", r"^ray::ServeReplica:[^:]*:Router"),
    ("replica (no-op)", r"^ray::ServeReplica:noop:"),
    ("replica (other)", r"^ray::ServeReplica"),
    ("ServeController", r"^ray::ServeController"),
    ("ProxyActor", r"^ray::ProxyActor"),
    ("HAProxyManager", r"^ray::HAProxyManager"),
    ("dashboard agent", r"^ray::DashboardAgent"),
    ("runtime env agent", r"^ray::RuntimeEnvAgent"),
    ("idle Ray worker", r"^ray::IDLE"),
    ("Ray worker (other)", r"^ray::"),
    # Binaries by their own path, before the scripts: raylet's arguments name the agents' scripts.
    ("haproxy", r"^(\S*/)?haproxy( |$)"),
    ("gcs_server", r"^(\S*/)?gcs_server( |$)"),
    ("raylet", r"^(\S*/)?raylet( |$)"),
    ("dashboard agent", r"dashboard/agent\.py"),
    ("runtime env agent", r"runtime_env/agent"),
    ("dashboard", r"dashboard/(dashboard|subprocesses|modules)|^ray-dashboard-"),
    ("log_monitor", r"log_monitor\.py"),
    ("autoscaler monitor", r"autoscaler/.*monitor\.py"),
    ("marcelle-torch serve (driver)", r"marcelle-torch serve|marcelle_torch\.cli serve"),
)


def process_role(cmdline: str) -> str:
    """The role of a process of the Serve target, from its command line (``other: <name>`` if none fits)."""
    for role, pattern in ROLES:
        if re.search(pattern, cmdline):
            return role
    return "other: " + (Path(cmdline.split(" ")[0]).name or "?")


def proc_snapshot() -> dict[int, tuple[int, float]]:
    """pid -> (session, utime+stime seconds) of every process, from /proc/<pid>/stat."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state is fields[0]
        out[int(entry)] = (int(fields[3]), (int(fields[11]) + int(fields[12])) / tick)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def cpu_by_role(before: dict, after: dict, roles: dict[int, str], seconds: float, cores: int) -> dict:
    """CPU seconds per role between two snapshots of the same processes, and each as a share of the
    machine's ``cores`` over ``seconds`` (a process that started in between counts from zero)."""
    used: dict[str, dict] = {}
    for pid, role in roles.items():
        if pid not in after:
            continue
        cpu = after[pid][1] - (before[pid][1] if pid in before else 0.0)
        r = used.setdefault(role, {"role": role, "processes": 0, "cpu_s": 0.0})
        r["processes"] += 1
        r["cpu_s"] += cpu
    rows = sorted(used.values(), key=lambda r: -r["cpu_s"])
    for r in rows:
        r["cpu_s"] = round(r["cpu_s"], 3)
        r["share"] = round(r["cpu_s"] / (seconds * cores), 4)
    total = sum(r["cpu_s"] for r in rows)
    return {
        "seconds": round(seconds, 2),
        "cores": cores,
        "total_share": round(total / (seconds * cores), 4),
        "roles": rows,
    }


def machine_busy_s() -> float:
    """CPU seconds every core spent busy since boot (/proc/stat: all but idle and iowait)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def session_roles(sid: int, snapshot: dict) -> dict[int, str]:
    return {pid: process_role(cmdline(pid)) for pid, (session, _) in snapshot.items() if session == sid}


def cpu_during(sid: int, work) -> tuple[dict, object]:
    """Run ``work()`` and measure the CPU of session ``sid``'s processes by role while it runs, with
    the CPU of the whole machine and of this process's waited children (wrk) beside it."""
    cores = os.cpu_count() or 1
    before, busy0, kids0 = proc_snapshot(), machine_busy_s(), os.times()
    started = time.monotonic()
    value = work()
    seconds = time.monotonic() - started
    after, busy1, kids1 = proc_snapshot(), machine_busy_s(), os.times()
    out = cpu_by_role(before, after, session_roles(sid, after), seconds, cores)
    waited = (kids1.children_user + kids1.children_system) - (kids0.children_user + kids0.children_system)
    out["wrk_share"] = round(waited / (seconds * cores), 4)
    out["machine_share"] = round((busy1 - busy0) / (seconds * cores), 4)
    return out, value


def replica_pid(sid: int, model: str) -> int | None:
    for pid, (session, _) in proc_snapshot().items():
        if session == sid and re.match(f"ray::ServeReplica:[^:]*:model-{re.escape(model)}$", cmdline(pid)):
            return pid
    return None


def py_spy_top(pid: int, seconds: float, out_file: Path, top: int = 15) -> dict:
    """py-spy samples of ``pid`` for ``seconds`` (non-blocking), summed by function: the share of
    samples where it is the running frame (self) and where it is on the stack (total)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return {"problem": "py-spy is not installed"}
    proc = subprocess.run(
        [spy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", "200"]
        + ["--format", "raw", "--output", str(out_file), "--nonblocking"],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    if proc.returncode != 0 or not out_file.is_file():
        said = (proc.stderr or proc.stdout).strip().splitlines()
        return {"problem": said[-1] if said else f"py-spy exited with {proc.returncode}"}
    return summarize_stacks(out_file.read_text().splitlines(), top)


def summarize_stacks(lines: list[str], top: int = 15) -> dict:
    """Collapsed stacks (``frame;frame;... count``, py-spy's raw format) -> top functions by self
    and by total samples, a frame named ``function (file)`` without its line."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + n
        for f in set(frames):
            total[f] = total.get(f, 0) + n

    def ranked(d: dict[str, int]) -> list:
        return [
            {"function": f, "share": round(n / samples, 4)} for f, n in sorted(d.items(), key=lambda x: -x[1])[:top]
        ]

    return {"samples": samples, "self": ranked(own) if samples else [], "total": ranked(total) if samples else []}


def replicas(url: str, model: str) -> int | None:
    import httpx

    try:
        return httpx.get(f"{url}/v1/models/{model}", timeout=30).json().get("replicas")
    except (httpx.HTTPError, ValueError):
        return None


def warm_to_full(url: str, model: str, body: bytes, script: Path, want: int, limit_s: float = 90) -> dict:
    """Load at c=32 until the autoscaler has ``want`` replicas (the default config's max here)."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        wrk(f"{url}/v1/models/{model}:predict", body, 32, 5, script)
        if (replicas(url, model) or 0) >= want:
            break
    return {"replicas": replicas(url, model), "warm_s": round(time.monotonic() - started, 1)}


def check_correct(url: str, samples, expected_labels) -> str | None:
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


def check_answers(url: str, model: str, body: bytes) -> str | None:
    """The model answers ``body`` (one instance) with one prediction."""
    import httpx

    r = httpx.post(f"{url}/v1/models/{model}:predict", content=body, timeout=120)
    if r.status_code != 200 or len(r.json().get("predictions", [])) != 1:
        return f"predict answered {r.status_code}: {r.text[:200]}"
    return None


def median_of(runs: list[dict]) -> dict:
    """The round with the median req/s, with every round's figures beside it."""
    ordered = sorted(runs, key=lambda r: r["rps"])
    mid = dict(ordered[len(ordered) // 2])
    mid["rounds"] = [{k: round(r[k], 2) for k in ("rps", "p50_ms", "p99_ms")} for r in runs]
    mid["p50_ms"] = sorted(r["p50_ms"] for r in runs)[len(runs) // 2]
    mid["errors"] = sum(r["errors"] for r in runs)
    return mid


def start_targets(plans, results) -> list:
    """Start every target and wait until each is ready and correct; the broken ones are reported."""
    running = []
    for name, cmd, env, check in plans:
        if cmd is None:  # a target that cannot start here: ``check`` says why
            results["targets"].append({"name": name, "levels": [], "problem": check(None)})
            print(f"== {name}: NOT USABLE: {results['targets'][-1]['problem']}", flush=True)
            continue
        print(f"== {name}: starting", flush=True)
        target = Target(name, cmd, OUT / f"serve_latency.{name}.log", env=env)
        entry: dict = {"name": name, "levels": []}
        results["targets"].append(entry)
        try:
            entry["ready_s"] = round(target.wait_ready(), 1)
            entry["problem"] = check(target.url) if check else None
        except RuntimeError as exc:
            entry["problem"] = str(exc).splitlines()[0]
        if entry["problem"]:
            print(f"   NOT USABLE: {entry['problem']}", flush=True)
            target.stop()
        else:
            target.pause()
            running.append((target, entry))
    return running


def measure_interleaved(
    running,
    model: str,
    body: bytes,
    levels,
    duration: float,
    rounds: int,
    script: Path,
    full_replicas: int,
    profile: str | None = None,
    spy: bool = True,
) -> None:
    """Each level in ``rounds`` rounds, the targets one after the other in each round, so a change of
    the machine's load meets them all alike; each figure is the median round. The ``profile`` target's
    CPU by process role is measured in the first c=32 round, and py-spy samples its replica in an
    extra c=32 run that is not counted."""
    for target, _ in running:
        with measuring(target):
            wrk(f"{target.url}/v1/models/{model}:predict", body, 1, 2, script)  # warm-up, not counted
    for level in levels:
        if level > 1:
            for target, entry in running:
                if entry["name"].startswith("serve") and "scaled" not in entry and full_replicas:
                    entry["scaled"] = warm_to_full(target.url, model, body, script, full_replicas)
                    print(f"   {entry['name']} scaled: {entry['scaled']}", flush=True)
        runs: dict[str, list] = {entry["name"]: [] for _, entry in running}
        for i in range(rounds):
            for target, entry in running:
                url = f"{target.url}/v1/models/{model}:predict"
                if entry["name"] == profile and level == 32 and i == 0:
                    cpu, result = cpu_during(target.pid, partial(wrk_undrained, url, body, level, duration, script))
                    entry.setdefault("cpu", {})["c32"] = cpu
                    runs[entry["name"]].append(drained(result))
                else:
                    with measuring(target):
                        runs[entry["name"]].append(wrk(url, body, level, duration, script))
        if level == 32 and profile and spy:
            for target, entry in running:
                if entry["name"] == profile:
                    entry["py_spy"] = spy_replica(target, model, body, duration, script)
        for _, entry in running:
            r = median_of(runs[entry["name"]])
            entry["levels"].append(r)
            print(
                f"   {entry['name']:18s} c={level:3d}  {r['rps']:8.1f} req/s  p50 {r['p50_ms']:7.2f} ms  "
                f"p99 {r['p99_ms']:7.2f} ms  errors {r['errors']}  rounds {[x['rps'] for x in r['rounds']]}",
                flush=True,
            )


def spy_replica(target, model: str, body: bytes, duration: float, script: Path) -> dict:
    """py-spy on the model's replica during an extra c=32 run (py-spy's own CPU stays out of the
    counted rounds)."""
    import threading

    pid = replica_pid(target.pid, model)
    if pid is None:
        return {"problem": "no replica process found"}
    out: dict = {}
    spy = threading.Thread(target=lambda: out.update(py_spy_top(pid, duration, OUT / "serve_latency.py-spy.txt")))
    spy.start()
    wrk(f"{target.url}/v1/models/{model}:predict", body, 32, duration + 1, script)
    spy.join()
    print(f"   py-spy on the replica: {out.get('problem') or out.get('self', [])[:5]}", flush=True)
    return out


# ----------------------------------------------------------------------------- compute-bound, in process


def in_process_rate(model, threads: int, batch: int, duration: float) -> float:
    import torch

    torch.set_num_threads(threads)
    x = torch.rand(batch, 3, 224, 224)
    with torch.inference_mode():
        model(x)
        n, started = 0, time.perf_counter()
        while time.perf_counter() - started < duration:
            model(x)
            n += batch
    return n / (time.perf_counter() - started)


def compute_bound(args, cli: str, script: Path) -> dict:
    """Serve (default config, the ResNet-shaped model) against the best in-process batched samples/s,
    and against LitServe's configurations.

    The in-process sweep picks the best (threads, batch); then that configuration, Serve and each
    LitServe configuration at c=32 are measured in alternating rounds while all are up (median of each)."""
    from marcelle_torch.models import get_spec, load_model

    print("== compute-bound: in process sweep", flush=True)
    model = load_model(get_spec(RESNET))
    sweep = []
    for threads in sorted({1, os.cpu_count() or 1}):
        for batch in (1, 4, 8, 16):
            rate = in_process_rate(model, threads, batch, max(3.0, args.duration / 2))
            sweep.append({"threads": threads, "batch": batch, "samples_per_s": rate})
            print(f"   in-process threads={threads} batch={batch:2d}: {rate:6.1f} samples/s", flush=True)
    best = max(sweep, key=lambda r: r["samples_per_s"])
    out: dict = {"in_process": {"runs": sweep, "best": best}}
    rbody = json.dumps({"instances": [rgb_instance()]}).encode()
    full = min(int(os.cpu_count() or 1), 2)
    ((target, entry),) = start_targets(
        [("serve-resnet", [cli, "serve", "--port", "{port}", "--model", RESNET], None, None)], {"targets": []}
    ) or [(None, {"problem": "did not start"})]
    if target is None:
        out["serve"] = entry
        return out
    peers: dict = {"targets": []}
    running = []
    if not (args.skip_baselines or args.skip_litserve):
        check = partial(check_answers, model="resnet-bench", body=rbody)
        running = start_targets(litserve_plans(RESNET, check, LITSERVE_CONFIGS_COMPUTE, "-resnet"), peers)
    try:
        url = f"{target.url}/v1/models/resnet-bench:predict"
        entry["scaled"] = warm_to_full(target.url, "resnet-bench", rbody, script, full)
        print(f"   serve-resnet scaled: {entry['scaled']}", flush=True)
        for peer, _ in running:
            with measuring(peer):
                wrk(f"{peer.url}/v1/models/resnet-bench:predict", rbody, 1, 2, script)  # warm-up, not counted
        serve_runs, local_runs = [], []
        peer_runs: dict[str, list] = {e["name"]: [] for _, e in running}
        for _ in range(args.rounds):
            serve_runs.append(wrk(url, rbody, 32, args.duration * 2, script))
            local_runs.append(in_process_rate(model, best["threads"], best["batch"], args.duration * 2))
            for peer, e in running:
                with measuring(peer):
                    peer_runs[e["name"]].append(
                        wrk(f"{peer.url}/v1/models/resnet-bench:predict", rbody, 32, args.duration * 2, script)
                    )
            print(
                f"   round: serve {serve_runs[-1]['rps']:.1f}, in-process {local_runs[-1]:.1f} samples/s, "
                + ", ".join(f"{n} {r[-1]['rps']:.1f}" for n, r in peer_runs.items()),
                flush=True,
            )
        for _, e in running:
            e["levels"] = [median_of(peer_runs[e["name"]])]
        entry["levels"] = [median_of(serve_runs)]
        entry["replicas_end"] = replicas(target.url, "resnet-bench")
        out["in_process"]["best_rounds"] = local_runs
        out["in_process"]["best_median"] = sorted(local_runs)[len(local_runs) // 2]
        out["ratio"] = entry["levels"][0]["rps"] / out["in_process"]["best_median"]
        out["peer"] = peer_comparison([entry, *peers["targets"]], "serve-resnet", goal_c32=LITSERVE_GOAL_COMPUTE)
    except RuntimeError as exc:
        entry["problem"] = str(exc).splitlines()[0]
    finally:
        target.stop()
        for peer, _ in running:
            peer.stop()
    out["serve"] = entry
    out["litserve"] = peers["targets"]
    return out


# ----------------------------------------------------------------------------- report


def ratios(results: dict) -> dict:
    serve = next((t for t in results["targets"] if t["name"] == "serve" and not t.get("problem")), None)
    bases = [t for t in results["targets"] if t["name"].startswith("starlette") and not t.get("problem")]
    if not serve or not bases:
        return {}
    out = {}
    for lvl in serve["levels"]:
        c = lvl["concurrency"]
        at = [(t["name"], next(x for x in t["levels"] if x["concurrency"] == c)) for t in bases]
        best_rps = max(at, key=lambda a: a[1]["rps"])
        best_p50 = min(at, key=lambda a: a[1]["p50_ms"])
        out[str(c)] = {
            "serve_rps": lvl["rps"],
            "baseline_rps": best_rps[1]["rps"],
            "baseline_rps_by": best_rps[0],
            "rps_ratio": lvl["rps"] / best_rps[1]["rps"],
            "serve_p50_ms": lvl["p50_ms"],
            "baseline_p50_ms": best_p50[1]["p50_ms"],
            "baseline_p50_by": best_p50[0],
            "p50_ratio": lvl["p50_ms"] / best_p50[1]["p50_ms"],
        }
    return out


def peer_comparison(
    targets: list[dict], serve: str = "serve", prefix: str = "litserve", goal_c32: float = LITSERVE_GOAL_C32
) -> dict:
    """Serve against the peer's configurations (targets named ``prefix...``): the best configuration
    at each level (by median req/s, and by median p50), Serve's c=32 req/s over the best peer
    configuration of each round (the rounds alternate, so round i of each ran side by side), and
    Serve's c=1 p50 over the best peer p50; each with its goal, met or not."""
    main = next((t for t in targets if t["name"] == serve and not t.get("problem") and t["levels"]), None)
    peers = [t for t in targets if t["name"].startswith(prefix) and not t.get("problem") and t["levels"]]
    if main is None or not peers:
        return {}

    def at(t: dict, c: int) -> dict | None:
        return next((x for x in t["levels"] if x["concurrency"] == c), None)

    out: dict = {"best": {}}
    for lvl in main["levels"]:
        c = lvl["concurrency"]
        levels = [(t["name"], x) for t in peers if (x := at(t, c))]
        if not levels:
            continue
        by_rps = max(levels, key=lambda a: a[1]["rps"])
        by_p50 = min(levels, key=lambda a: a[1]["p50_ms"])
        out["best"][str(c)] = {
            "rps_by": by_rps[0],
            "rps": by_rps[1]["rps"],
            "p50_by": by_p50[0],
            "p50_ms": by_p50[1]["p50_ms"],
        }
    serve32 = at(main, 32)
    if serve32 and "32" in out["best"]:
        rounds = []
        for i, mine in enumerate(serve32["rounds"]):
            theirs = [(t["name"], x["rounds"][i]["rps"]) for t in peers if (x := at(t, 32)) and i < len(x["rounds"])]
            name, rps = max(theirs, key=lambda a: a[1])
            ratio = mine["rps"] / rps if rps else None  # no peer answered that round: no ratio
            rounds.append({"serve_rps": mine["rps"], "litserve_rps": rps, "litserve_by": name, "ratio": ratio})
        out["c32"] = {
            "goal": goal_c32,
            "rounds": rounds,
            "min_ratio": min((r["ratio"] for r in rounds if r["ratio"] is not None), default=None),
            "met": all(r["ratio"] is not None and r["ratio"] >= goal_c32 for r in rounds),
        }
    serve1 = at(main, 1)
    if serve1 and "1" in out["best"]:
        ratio = serve1["p50_ms"] / out["best"]["1"]["p50_ms"]
        out["c1"] = {
            "serve_p50_ms": serve1["p50_ms"],
            "litserve_p50_ms": out["best"]["1"]["p50_ms"],
            "litserve_by": out["best"]["1"]["p50_by"],
            "ratio": ratio,
            "goal": 1.0,
            "met": ratio <= 1.0,
        }
    return out


def met(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def times(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def peer_markdown(results: dict) -> list[str]:
    """Goal 3's section: every c=32 round of every target, the LitServe best, the ratios."""
    peer = results.get("peer") or {}
    if not peer:
        return []
    lines = ["", "## Against LitServe (goal 3)", ""]
    lines += [
        "LitServe configurations `litserve-w<workers_per_device>-t<batch_timeout ms>`, batches up to 16, "
        "torch 1 thread per worker. Best configuration per level:",
        "",
        "| c | best req/s (config) | best p50 ms (config) |",
        "|---:|---|---|",
    ]
    for c, b in peer["best"].items():
        lines.append(f"| {c} | {b['rps']:.0f} ({b['rps_by']}) | {b['p50_ms']:.2f} ({b['p50_by']}) |")
    per_round = [
        (t["name"], lvl["rounds"])
        for t in results["targets"]
        if not t.get("problem")
        for lvl in t["levels"]
        if lvl["concurrency"] == 32 and lvl.get("rounds")
    ]
    if per_round:
        n = max(len(r) for _, r in per_round)
        lines += [
            "",
            "Every c=32 round (req/s; the targets alternate within each round):",
            "",
            "| target | " + " | ".join(f"round {i + 1}" for i in range(n)) + " |",
            "|---|" + "---:|" * n,
        ]
        lines += [f"| {name} | " + " | ".join(f"{x['rps']:.0f}" for x in r) + " |" for name, r in per_round]
    lines.append("")
    if "c32" in peer:
        g = peer["c32"]
        each = ", ".join(f"{times(r['ratio'])} (vs {r['litserve_by']} {r['litserve_rps']:.0f})" for r in g["rounds"])
        lines += [
            f"- c=32 throughput, Serve over the best LitServe configuration of each round: {each}; "
            f"lowest **{times(g['min_ratio'])}** (goal >= {g['goal']:g}x in every round): {met(g['met'])}",
        ]
    if "c1" in peer:
        g = peer["c1"]
        lines.append(
            f"- c=1 p50: Serve {g['serve_p50_ms']:.2f} ms vs {g['litserve_p50_ms']:.2f} ms ({g['litserve_by']}): "
            f"**{g['ratio']:.2f}x** (goal <= {g['goal']:g}x): {met(g['met'])}"
        )
    return lines


def cpu_markdown(results: dict) -> list[str]:
    """Where the Serve target's CPU goes, by process role, idle and at c=32; py-spy's top functions."""
    serve = next((t for t in results["targets"] if t["name"] == "serve" and t.get("cpu")), None)
    if serve is None:
        return []
    cpu = serve["cpu"]
    phases = [(k, cpu[k]) for k in ("idle", "c32") if k in cpu]
    shares = {k: {r["role"]: r for r in p["roles"]} for k, p in phases}
    roles = sorted(
        {role for v in shares.values() for role in v},
        key=lambda r: -max(v.get(r, {}).get("cpu_s", 0) for v in shares.values()),
    )
    head = {"idle": "idle, % of the cores", "c32": "c=32, % of the cores"}
    when = {"idle": "idle for {} s (the other servers paused)", "c32": "during the first c=32 round ({} s)"}
    cores = phases[0][1]["cores"]
    lines = [
        "",
        "## Where Serve's CPU goes",
        "",
        f"CPU time (/proc utime + stime) of every process of the `serve` target, by role, as a share of the "
        f"machine's {cores} cores: " + " and ".join(when[k].format(p["seconds"]) for k, p in phases) + ".",
        "",
        "| role | processes | " + " | ".join(head[k] for k, _ in phases) + " |",
        "|---|---:|" + "---:|" * len(phases),
    ]
    for role in roles:
        n = max(v.get(role, {}).get("processes", 0) for v in shares.values())
        cells = [f"{100 * shares[k][role]['share']:.1f}" if role in shares[k] else "-" for k, _ in phases]
        lines.append(f"| {role} | {n} | " + " | ".join(cells) + " |")
    for label, key in (
        ("**the Serve target**", "total_share"),
        ("wrk (the load)", "wrk_share"),
        ("the whole machine", "machine_share"),
    ):
        lines.append(f"| {label} | | " + " | ".join(f"{100 * p[key]:.1f}" for _, p in phases) + " |")
    spy = serve.get("py_spy") or {}
    if spy.get("self"):
        lines += [
            "",
            f"py-spy on the digits replica during an extra c=32 run ({spy['samples']} samples; share of samples "
            "where the function runs, and where it is on the stack):",
            "",
            "| function (self) | self | function (on the stack) | total |",
            "|---|---:|---|---:|",
        ]
        for a, b in zip(spy["self"], spy["total"], strict=False):
            lines.append(
                f"| `{a['function']}` | {100 * a['share']:.1f}% | `{b['function']}` | {100 * b['share']:.1f}% |"
            )
    elif spy.get("problem"):
        lines += ["", f"py-spy: {spy['problem']}"]
    return lines


def markdown(results: dict) -> str:
    """The report as Markdown, from its JSON alone (the docs render it the same way)."""
    r = results["ratios"]
    lines = [
        f"# Serve latency and throughput ({results['machine']})",
        "",
        f"{results['date']}, `{results['command']}`, load average at start {results['load_start']}, "
        f"at end {results['load_end']}. wrk {results['wrk']}, {results['duration_s']:g} s per measurement, "
        f"{results['rounds']} rounds per level alternating between the targets (median round shown), one "
        "128x128 PNG digit per request (v1); the v2 rows send the same digit as its decoded FP32 tensor "
        "(1x128x128, JSON) to `/v2/models/digits/infer`, through the router's extra hop.",
        "",
        "| target | c | req/s | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    modes = results.get("serve_modes") or {}
    if len(modes) > 1:
        described = ", ".join(f"`{name}`: `--serve-mode {mode}`" for name, mode in modes.items())
        lines[4:4] = [f"Serve targets: {described}.", ""]
    for t in results["targets"]:
        if t.get("problem"):
            lines.append(f"| {t['name']} | - | - | - | - | not correct: {t['problem']} |")
            continue
        for lvl in t["levels"] + t.get("v2", []) + t.get("noop", []):
            name = t["name"] + (" (no-op, wrk ceiling)" if lvl in t.get("noop", []) else "")
            name += " (v2, FP32 tensor in JSON)" if lvl in t.get("v2", []) else ""
            lines.append(
                f"| {name} | {lvl['concurrency']} | {lvl['rps']:.0f} | {lvl['p50_ms']:.2f} | "
                f"{lvl['p99_ms']:.2f} | {lvl['errors']} |"
            )
    if r:
        lines += [
            "",
            "Goal 1 (baseline: the better single-process server at each level):",
            "",
            f"- c=1 p50: Serve {r['1']['serve_p50_ms']:.2f} ms vs {r['1']['baseline_p50_ms']:.2f} ms "
            f"({r['1']['baseline_p50_by']}): **{r['1']['p50_ratio']:.2f}x** (goal <= 2x)",
        ]
        for c in ("8", "32"):
            if c in r:
                lines.append(
                    f"- c={c} throughput: Serve {r[c]['serve_rps']:.0f} req/s vs {r[c]['baseline_rps']:.0f} "
                    f"({r[c]['baseline_rps_by']}): **{r[c]['rps_ratio']:.2f}x**"
                    + (" (goal >= 1.5x)" if c == "32" else "")
                )
        serve = next(t for t in results["targets"] if t["name"] == "serve")
        if serve.get("scaled"):
            lines.append(
                f"- Serve replicas during c>1: {serve['scaled']['replicas']} (autoscaled from 1 under load "
                f"in {serve['scaled']['warm_s']} s; default config)"
            )
    lines += peer_markdown(results)
    lines += cpu_markdown(results)
    comp = results.get("compute")
    if comp:
        best = comp["in_process"]["best"]
        lines += [
            "",
            "## Compute-bound model (goal 2)",
            "",
            f"ResNet-18-shaped, 3x224x224 PNG per request, random weights. In-process sweep best: batch "
            f"{best['batch']}, {best['threads']} torch threads; re-measured in rounds alternating with Serve: "
            f"{comp['in_process'].get('best_median', best['samples_per_s']):.1f} samples/s (median).",
            "",
            "| in process: threads | batch | samples/s |",
            "|---:|---:|---:|",
        ]
        lines += [f"| {x['threads']} | {x['batch']} | {x['samples_per_s']:.1f} |" for x in comp["in_process"]["runs"]]
        s = comp.get("serve", {})
        if s.get("levels") and "ratio" in comp:
            lvl = s["levels"][-1]
            lines += [
                "",
                f"Serve, default config ({s.get('replicas_end')} replicas x 1 CPU, 1 torch thread each, "
                f"adaptive batches up to 16), wrk c={lvl['concurrency']}: {lvl['rps']:.1f} samples/s, "
                f"p50 {lvl['p50_ms']:.0f} ms: **{comp['ratio']:.0%}** of the in-process best (goal >= 90%).",
            ]
        elif s.get("problem"):
            lines += ["", f"Serve: {s['problem']}"]
        extra = []  # LitServe's figures, a list after a blank line
        for t in comp.get("litserve", []):
            extra.append(
                f"- LitServe `{t['name']}`: not correct: {t['problem']}"
                if t.get("problem") or not t["levels"]
                else f"- LitServe `{t['name']}`, c=32: {t['levels'][0]['rps']:.1f} samples/s (median), rounds "
                + ", ".join(f"{x['rps']:.1f}" for x in t["levels"][0]["rounds"])
            )
        g = (comp.get("peer") or {}).get("c32")
        if g:
            each = ", ".join(f"{times(r['ratio'])} (vs {r['litserve_by']})" for r in g["rounds"])
            extra.append(
                f"- Serve over the best LitServe configuration of each round: {each}; lowest "
                f"**{times(g['min_ratio'])}** (goal >= {g['goal']:g}x in every round): {met(g['met'])}"
            )
        lines += ["", *extra] if extra else []
    return "\n".join(lines) + "\n"


def write_report(results: dict, stem: str = "serve_latency") -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_text(OUT / f"{stem}.json", json.dumps(results, indent=2))
    atomic_write_text(OUT / f"{stem}.md", markdown(results))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    # Of LitServe's configurations, only its best at the highest level: a readable plot.
    best = (results.get("peer") or {}).get("best", {})
    shown = best[max(best, key=int)]["rps_by"] if best else None
    for t in results["targets"]:
        if t.get("problem") or not t["levels"] or (t["name"].startswith("litserve") and t["name"] != shown):
            continue
        c = [lvl["concurrency"] for lvl in t["levels"]]
        ax1.plot(c, [lvl["rps"] for lvl in t["levels"]], marker="o", label=t["name"])
        (line,) = ax2.plot(c, [lvl["p50_ms"] for lvl in t["levels"]], marker="o", label=f"{t['name']} p50")
        ax2.plot(
            c,
            [lvl["p99_ms"] for lvl in t["levels"]],
            marker="x",
            linestyle="--",
            color=line.get_color(),
            label=f"{t['name']} p99",
        )
        if t.get("noop"):
            ax1.plot(
                [x["concurrency"] for x in t["noop"]],
                [x["rps"] for x in t["noop"]],
                marker="s",
                linestyle=":",
                color="grey",
                label="Serve no-op (wrk ceiling)",
            )
    for ax, title, ylabel in ((ax1, "Throughput", "requests/s"), (ax2, "Latency p50 / p99", "latency (ms)")):
        ax.set(xlabel="concurrent clients (wrk)", ylabel=ylabel, title=title, xscale="log", xticks=LEVELS)
        ax.set_xticklabels([str(x) for x in LEVELS])
    ax2.set_yscale("log")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    atomic_write(OUT / f"{stem}.png", lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per concurrency level")
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS))
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per level (median reported)")
    parser.add_argument("--skip-compute", action="store_true", help="leave out the compute-bound section")
    parser.add_argument(
        "--serve-modes",
        nargs="+",
        default=None,
        help="Serve targets, one per serve mode (default: the default mode only)",
    )
    parser.add_argument(
        "--skip-baselines", action="store_true", help="leave out the single-process servers and LitServe"
    )
    parser.add_argument("--skip-litserve", action="store_true", help="leave out the LitServe peer")
    parser.add_argument("--skip-py-spy", action="store_true", help="no py-spy sampling of Serve's replica")
    parser.add_argument("--baseline-server", nargs=3, metavar=("PORT", "MODEL", "BATCHED"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--litserve-server", nargs=4, metavar=("PORT", "MODEL", "WORKERS", "TIMEOUT_MS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.baseline_server:
        port, model, batched = args.baseline_server
        run_baseline(int(port), model, batched == "1")
        return 0
    if args.litserve_server:
        import litserve_peer  # bench/, this script's directory

        port, model, workers, timeout_ms = args.litserve_server
        litserve_peer.run(int(port), model, int(workers), float(timeout_ms))
        return 0
    if not shutil.which("wrk"):
        print("wrk is not installed: `make system-deps` (Debian package wrk)", file=sys.stderr)
        return 2

    import torch

    from marcelle_torch.models import decode_instances, get_spec, load_model, postprocess, resolve_weights

    spec = get_spec("digits")
    resolve_weights(spec, train_if_missing=True, progress=True)  # train once, into make's cache
    samples = digit_instances()
    with torch.no_grad():
        outputs = load_model(spec)(decode_instances(spec, [s for s, _ in samples]))
        expected = [p["label"] for p in postprocess(spec, outputs)]
    body = json.dumps({"instances": [samples[0][0]]}).encode()
    tensor = decode_instances(spec, [samples[0][0]])
    v2_body = json.dumps(
        {
            "inputs": [
                {"name": "input", "shape": list(tensor.shape), "datatype": "FP32", "data": tensor.flatten().tolist()}
            ]
        }
    ).encode()

    OUT.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="mt-bench-"))
    script = tmp / "post.lua"
    script.write_text(WRK_SCRIPT)
    cli = str(Path(sys.executable).with_name("marcelle-torch"))
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0].strip()
    results = {
        "machine": f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, {sys.platform}",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "make bench (" + " ".join(["python", "bench/serve_latency.py", *(argv or sys.argv[1:])]) + ")",
        "wrk": wrk_version,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "load_start": load_avg(),
        "targets": [],
    }
    full = min(int(os.cpu_count() or 1), 2)  # the packaged config's max_replicas
    env = {"PYTHONPATH": str(tmp)}
    check = lambda url: check_correct(url, samples, expected)  # noqa: E731
    from marcelle_torch.serving.modes import DEFAULT_SERVE_MODE, SERVE_MODES

    modes = args.serve_modes or [DEFAULT_SERVE_MODE]
    unknown = sorted(set(modes) - set(SERVE_MODES))
    if unknown:
        print(f"unknown serve modes {unknown}; choose from {', '.join(SERVE_MODES)}", file=sys.stderr)
        return 2
    results["serve_modes"] = {("serve" if m == DEFAULT_SERVE_MODE else f"serve-{m}"): m for m in modes}
    config = str(serve_config_with_noop(["digits"], tmp))
    plans = [
        (name, [cli, "serve", "--port", "{port}", "--config", config, "--serve-mode", mode], env, check)
        for name, mode in results["serve_modes"].items()
    ]
    for name, batched in () if args.skip_baselines else (("starlette", "0"), ("starlette-batched", "1")):
        plans.append((name, [sys.executable, __file__, "--baseline-server", "{port}", "digits", batched], None, check))
    if not (args.skip_baselines or args.skip_litserve):
        plans += litserve_plans("digits", check)
    running = start_targets(plans, results)
    try:
        for target, entry in running:
            if entry["name"] == "serve":  # every target up and unloaded, the others paused
                entry["cpu"] = {"idle": cpu_during(target.pid, lambda: time.sleep(5))[0]}
        measure_interleaved(
            running,
            "digits",
            body,
            args.levels,
            args.duration,
            args.rounds,
            script,
            full,
            profile="serve",
            spy=not args.skip_py_spy,
        )
        serving = [(t, e) for t, e in running if e["name"].startswith("serve")]
        for level in args.levels:
            v2_runs: dict[str, list] = {e["name"]: [] for _, e in serving}
            for _ in range(args.rounds):
                for target, entry in serving:
                    v2_runs[entry["name"]].append(wrk(f"{target.url}{V2_INFER}", v2_body, level, args.duration, script))
            for _, entry in serving:
                r = median_of(v2_runs[entry["name"]])
                entry.setdefault("v2", []).append(r)
                print(
                    f"   {entry['name']:18s} v2 FP32 c={level:3d}  {r['rps']:8.1f} req/s  p50 {r['p50_ms']:7.2f} ms  "
                    f"p99 {r['p99_ms']:7.2f} ms  errors {r['errors']}",
                    flush=True,
                )
        for target, entry in running:
            if not entry["name"].startswith("serve"):
                continue
            entry["replicas_end"] = replicas(target.url, "digits")
            entry["noop"] = [
                median_of([wrk(f"{target.url}/noop", body, c, args.duration, script) for _ in range(args.rounds)])
                | {"concurrency": c}
                for c in (1, 32)
            ]
            for r in entry["noop"]:
                print(
                    f"   {entry['name']:18s} no-op c={r['concurrency']:3d}  {r['rps']:8.1f} req/s  "
                    f"p50 {r['p50_ms']:.2f} ms",
                    flush=True,
                )
    finally:
        for target, _ in running:
            target.stop()
    results["ratios"] = ratios(results)
    results["peer"] = peer_comparison(results["targets"])

    if not args.skip_compute:
        results["compute"] = compute_bound(args, cli, script)
    results["load_end"] = load_avg()
    shutil.rmtree(tmp, ignore_errors=True)
    # A comparison of serve modes is another report than the one the docs show (serve_latency.json).
    stem = "serve_modes" if args.serve_modes or args.skip_baselines else "serve_latency"
    write_report(results, stem)
    print((OUT / f"{stem}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
