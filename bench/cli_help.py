"""How long `marcelle-torch --help` (and each command's --help) takes: the command line
registers every command without importing torch, numpy, httpx, yaml or Ray
(tests/unit/test_layering.py), so asking for help should cost an interpreter start and little
more. Each figure is whole-process wall time over ``--runs`` runs after a warm-up, with
``python -c pass`` beside it (the interpreter's own start) for scale.

Writes bench/out/cli_help.{json,md}.
    .venv/bin/python bench/cli_help.py [--runs 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
CLI = Path(sys.executable).with_name("marcelle-torch")


def timed(argv: list[str], runs: int) -> dict:
    subprocess.run(argv, capture_output=True, check=True)  # warm-up: the file cache, .pyc files
    walls = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True)
        walls.append(time.perf_counter() - start)
    return {
        "median_s": round(statistics.median(walls), 4),
        "min_s": round(min(walls), 4),
        "max_s": round(max(walls), 4),
        "runs": runs,
    }


def markdown(report: dict) -> str:
    """The report as Markdown, from its JSON alone (the docs render it the same way)."""
    lines = [
        f"CLI help time ({report['date']}; {report['runs']} runs after a warm-up, {report['cpus']} CPUs at load "
        f"{report['load']}, whole process)",
        "",
        "| command | median s | min s | max s |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [
        f"| `{name}` | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['max_s']:.3f} |"
        for name, r in report["rows"].items()
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    rows = {"python -c pass": timed([sys.executable, "-c", "pass"], args.runs)}
    for command in ([], ["serve"], ["up"], ["export-onnx"], ["worker"], ["predict"]):
        rows[" ".join(["marcelle-torch", *command, "--help"])] = timed([str(CLI), *command, "--help"], args.runs)
    OUT.mkdir(parents=True, exist_ok=True)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpus": os.cpu_count(),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": sys.version.split()[0],
        "runs": args.runs,
        "rows": rows,
    }
    (OUT / "cli_help.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (OUT / "cli_help.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
