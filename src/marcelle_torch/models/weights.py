"""Resolving a spec's weights to a local file, and loading the model.

Downloads and training write to a temporary file first and rename it into place, so an
interrupted run never leaves a half-written file that a later run would trust.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import torch

from ..errors import WeightsError
from ..files import atomic_write
from .spec import ModelSpec

log = logging.getLogger("marcelle_torch.models")


def cache_dir() -> Path:
    """Where weights are kept: $MARCELLE_TORCH_CACHE, else ~/.cache/marcelle-torch."""
    root = os.environ.get("MARCELLE_TORCH_CACHE") or Path.home() / ".cache" / "marcelle-torch"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def trained_weights_path(spec: ModelSpec) -> Path:
    return cache_dir() / "weights" / f"{spec.name}-v{spec.version}.pt"


def download(url: str, sha256: str, target: Path, timeout: float = 60.0) -> Path:
    def write(tmp: Path) -> None:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
                shutil.copyfileobj(resp, out)
        except OSError as exc:  # URLError, HTTPError and socket errors are all OSError
            raise WeightsError(f"cannot download weights from {url}: {exc}") from exc
        got = sha256_of(tmp)
        if got != sha256:
            raise WeightsError(f"weights from {url} fail their sha256 check: got {got}, want {sha256}")

    return atomic_write(target, write)


def resolve_weights(spec: ModelSpec, train_if_missing: bool = True, progress: bool = False) -> Path | None:
    """The local file holding the spec's weights (downloading or training if needed)."""
    w = spec.weights
    if w.path:
        path = Path(w.path).expanduser()
        if not path.is_file():
            raise WeightsError(f"model {spec.name}: weights file not found: {path}")
        if w.sha256 and sha256_of(path) != w.sha256:
            raise WeightsError(f"model {spec.name}: weights file {path} fails its sha256 check")
        return path
    if w.url:
        assert w.sha256 is not None  # Weights requires it beside a url
        target = cache_dir() / "downloads" / f"{w.sha256}.pt"
        if target.is_file() and sha256_of(target) == w.sha256:
            return target
        return download(w.url, w.sha256, target)
    if w.train:
        target = trained_weights_path(spec)
        if target.is_file():
            return target
        if not train_if_missing:
            raise WeightsError(f"model {spec.name} is not trained yet: run `marcelle-torch train {spec.name}`")
        w.train(spec=spec, target=target, progress=progress)
        return target
    return None


def read_checkpoint(path: Path) -> Any:
    """torch.load with weights only; a corrupt or foreign file is one line naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's own message runs over many lines
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"cannot read weights {path} ({first[:160]}): not a PyTorch checkpoint, or damaged; "
            "delete it, or train again with --force"
        ) from None


def load_state_dict(path: Path) -> dict:
    state = read_checkpoint(path)
    # Training checkpoints keep the weights under "state_dict" beside their metrics.
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_model(
    spec: ModelSpec,
    device: str | torch.device = "cpu",
    train_if_missing: bool = True,
    progress: bool = False,
    logger: logging.Logger | None = None,
) -> torch.nn.Module:
    """Build the module, load its weights, move it to ``device``, put it in eval mode.
    Logs the weights' sha256 (on ``logger``), the digest the ONNX bundle's manifest records, so
    Serve, the worker and the browser bundle can be seen to run the same file."""
    module = spec.build()
    if not isinstance(module, torch.nn.Module):
        raise WeightsError(f"model {spec.name}: build() returned {type(module).__name__}, not nn.Module")
    path = resolve_weights(spec, train_if_missing=train_if_missing, progress=progress)
    if path is not None:
        try:
            module.load_state_dict(load_state_dict(path))
        except RuntimeError as exc:
            raise WeightsError(f"model {spec.name}: weights {path} do not fit the module: {exc}") from exc
        (logger or log).info("model %s: weights %s sha256 %s", spec.name, path, sha256_of(path))
    return module.to(device).eval()


def training_metrics(spec: ModelSpec) -> dict | None:
    """The metrics saved with a trained checkpoint (e.g. held-out accuracy), if any."""
    path = trained_weights_path(spec)
    if not path.is_file():
        return None
    state = read_checkpoint(path)
    return state.get("metrics") if isinstance(state, dict) else None
