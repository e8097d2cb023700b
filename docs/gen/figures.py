"""The docs' figures, rendered at build time from the benchmarks' committed results (bench/out/*.json).

Every measured figure the docs show comes from here: each benchmark script writes its JSON and has a
``markdown(results)`` function that turns that JSON into its report, and the docs call the same
function on the committed JSON. A result that is not in the checkout renders as "not measured yet",
with the command that measures it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from reference import load_module

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
OUT = BENCH / "out"

# name: (script, result file under bench/out, what it measures, the docs page that shows it)
BENCHMARKS: dict[str, tuple[str, str, str, str]] = {
    "startup": ("startup.py", "startup.json", "`marcelle-torch up`: warm start and stop", "getting-started.md"),
    "serve_latency": (
        "serve_latency.py",
        "serve_latency.json",
        "Ray Serve latency and throughput against single-process servers and LitServe; the compute-bound model",
        "benchmarks.md",
    ),
    "serve_modes": (
        "serve_latency.py",
        "serve_modes.json",
        "how HTTP reaches Ray Serve: HAProxy (the local default) against Ray's proxy (the chart's)",
        "ray-serve.md",
    ),
    "parity": (
        "parity.py",
        "parity.json",
        "the same inputs through PyTorch, Ray Serve, onnxruntime and onnxruntime-web",
        "benchmarks.md",
    ),
    "runs_latency": ("runs_latency.py", "runs_latency.json", "backend runs as the page sees them", "benchmarks.md"),
    "training": (
        "training.py",
        "training.json",
        "training from the page: throughput against in process, live updates, Train to the new version answering",
        "benchmarks.md",
    ),
    "model_first_prediction": (
        "model_first_prediction.py",
        "model_first_prediction.json",
        "a user's model from nothing to its first prediction",
        "your-model.md",
    ),
    "cli_help": ("cli_help.py", "cli_help.json", "`marcelle-torch --help` and each command's", "benchmarks.md"),
    "gpu_check": ("gpu_check.py", "gpu_check.json", "the CUDA path on a GPU machine", "benchmarks.md"),
    "flood": ("flood.py", "flood.json", "500 runs created at once", "reliability.md"),
    "soak": ("soak.py", "soak.json", "10 minutes of mixed traffic", "reliability.md"),
    "backend_memory": (
        "backend_memory.py",
        "backend_memory.json",
        "the backend's memory, every run kept",
        "reliability.md",
    ),
    "backend_memory_kept": (
        "backend_memory.py",
        "backend_memory_kept.json",
        "the backend's memory, finished runs removed",
        "reliability.md",
    ),
}
# The command that writes each result, when it is not `python bench/<script>`.
COMMANDS = {
    "gpu_check": "PYTHONPATH=src MARCELLE_TORCH_CACHE=.cache/models python bench/gpu_check.py (on a GPU machine)",
    "backend_memory_kept": "python bench/backend_memory.py --seconds 240 --keep-runs 30",
    "serve_modes": "python bench/serve_latency.py --serve-modes haproxy-throughput haproxy proxy --skip-baselines"
    " --skip-compute",
}


def command(name: str) -> str:
    return COMMANDS.get(name, f"python bench/{BENCHMARKS[name][0]}")


def results(name: str) -> dict | None:
    path = OUT / BENCHMARKS[name][1]
    return json.loads(path.read_text()) if path.is_file() else None


def demote(markdown: str, levels: int) -> str:
    """Headings moved ``levels`` deeper (outside code blocks), so a report nests under the page's own."""
    out, fenced = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            line = "#" * levels + line
        out.append(line)
    return "\n".join(out) + "\n"


def not_measured(name: str) -> str:
    return (
        '!!! note "Not measured yet"\n'
        f"    `bench/out/{BENCHMARKS[name][1]}` is not in this checkout. Run `{command(name)}` and commit the JSON\n"
        "    it writes: this section is rendered from it.\n"
    )


def bench(name: str) -> str:
    if name not in BENCHMARKS:
        raise KeyError(f"no benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    data = results(name)
    if data is None:
        return not_measured(name)
    script = load_module(BENCH / BENCHMARKS[name][0], f"marcelle_torch_bench_{name}")
    return demote(script.markdown(data), 2)


def reliability() -> str:
    """The scenarios' table (tests/reliability and bench/flood.py figures), with the soak's row once measured."""
    soak = load_module(BENCH / "soak.py", "marcelle_torch_bench_soak")
    data = results("soak")
    if data is not None:
        return demote(soak.markdown(data), 2)
    rows = soak.reliability_rows()
    flood = OUT / "reliability" / "flood_test.json"
    if results("flood") is None and flood.is_file():  # the smaller flood that `make test` runs
        f = json.loads(flood.read_text())
        rows.append(
            (
                "Flood (`make test`'s)",
                f"{f['runs']} runs created at once by {f['clients']} clients",
                ", ".join(f"{count} {status}" for status, count in sorted(f["statuses"].items())),
                f"{f['runs_per_s']} runs/s with {f['workers']} workers; lost {f['lost']}, "
                f"doubled {f['claimed_twice'] + f['finished_twice']}",
            )
        )
    if not rows:
        return not_measured("soak")
    dated = []
    for path in sorted((OUT / "reliability").glob("*.json")):
        dated.append(f"`{path.stem}` {json.loads(path.read_text()).get('date', 'undated')}")
    return (
        "\n".join(
            [
                "| scenario | fault injected | requests failed, and how | recovery, runs lost / doubled |",
                "|---|---|---|---|",
                *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
                "",
                "Measured by `make test` (`tests/reliability/` writes `bench/out/reliability/*.json`): "
                + ", ".join(dated)
                + ". The soak's row comes once `bench/out/soak.json` is committed (`python bench/soak.py`).",
            ]
        )
        + "\n"
    )


def head_loss() -> str:
    """The cluster tier's head-loss figures (tests/cluster/test_head_loss.py writes them)."""
    path = OUT / "reliability" / "head_loss.json"
    if not path.is_file():
        return (
            "**Not measured yet**: `bench/out/reliability/head_loss.json` is written by "
            "`.venv/bin/pytest tests/cluster -k head_loss` (root).\n"
        )
    f = json.loads(path.read_text())
    failed = ", ".join(f"{n} HTTP {status}" for status, n in f["failed_statuses"].items()) or "none"
    rows = [
        (f"prediction requests sent after the kill ({f['clients']} clients)", f["requests_after_kill"]),
        ("failed", f"{f['failed']} ({failed}; {f['failed_as_json_503_with_retry_after']} a JSON 503 with Retry-After)"),
        ("answered while the head was down", f["answered_while_head_down"]),
        (
            "longest time without an answered prediction",
            f"{f['longest_gap_s']} s, from {f['longest_gap_began_after_kill_s']} s after the kill",
        ),
        ("slowest request", f"{f['slowest_request_s']} s"),
        ("new head Pod ready", f"{f['head_ready_after_s']} s after the kill"),
        ("Serve applications RUNNING again, not redeployed", f"{f['apps_running_after_s']} s after the kill"),
    ]
    table = ["| figure | measured |", "| --- | --- |", *(f"| {a} | {b} |" for a, b in rows)]
    return "\n".join([*table, "", f"Measured {f.get('date', 'undated')} by `make test` on the test machine."]) + "\n"


TITLES = {
    "getting-started.md": "Getting started",
    "your-model.md": "Your model",
    "benchmarks.md": "below",
    "reliability.md": "Reliability",
    "ray-serve.md": "Ray Serve",
}


def index() -> str:
    out = ["| benchmark | measures | result | shown in |", "|---|---|---|---|"]
    for name, (script, result, what, page) in BENCHMARKS.items():
        data = results(name)
        when = f"{data.get('date', 'undated')}" if data is not None else "**not measured yet**"
        out.append(f"| `bench/{script}` | {what} | `{result}`: {when} | [{TITLES[page]}]({page}) |")
    return "\n".join(out) + "\n"
