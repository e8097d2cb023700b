"""Publish runs: move a model to one of its versions in the model store (or back to its own weights).

A run ``{model, input: null, params: {publish: "<version>" | null}}`` (the backend lets only the
admin, or everyone when authentication is off, create one) is claimed by a worker that has the
store. The worker makes the version's ONNX web bundle first (``<version>/onnx/``, once), then swaps
the store's ``published`` link (models/store.py): Serve replicas, the other workers and the web
app follow the link, so after the swap every path answers with the version. A rollback is a
publish of the version before. The result is ``{model, version, previous}``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InvalidInput
from ..models.store import ONNX, ModelStore

EXPORT_TIMEOUT_S = 600


def export_command(folder: Path, out: Path) -> list[str]:
    """The exporter as its own process (it is another part of the package, and its memory goes
    with it): the ``export-onnx`` command every user runs, with its checks."""
    return [sys.executable, "-c", "from marcelle_torch.cli import main; raise SystemExit(main())",
            "export-onnx", str(folder), "--out", str(out)]  # fmt: skip


def ensure_bundle(folder: Path) -> Path:
    """The version's ONNX bundle, exported (and checked) once; a failed export leaves none."""
    out = folder / ONNX
    if (out / "model.json").is_file():
        return out
    done = subprocess.run(export_command(folder, out), capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise InvalidInput(f"the ONNX export of {folder.name} failed: {lines[-1] if lines else done.returncode}")
    return out


def run_publish(model: str, run: dict, store: ModelStore, report: Callable[[float, Any], None]) -> dict:
    params = run.get("params") or {}
    version = params.get("publish")
    if version is not None:
        folder = store.version_dir(model, version)  # a clear error for a version not in the store
        report(0.1, {"step": "onnx"})
        ensure_bundle(folder)
    elif store.published(model) is None:
        raise InvalidInput(f"model {model} already serves its own weights: there is nothing to roll back")
    report(0.9, {"step": "publish"})
    previous = store.publish(model, version)
    return {"model": model, "version": version, "previous": previous}
