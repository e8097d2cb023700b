"""The model store: the versions training made, and which one each model publishes.

Layout (one directory, shared by everything that serves or trains; a PVC on Kubernetes)::

    <store>/<model>/<version>/      an immutable model folder (content-addressed: the version is
                                    the first 12 hex digits of its weights' sha256), with its
                                    parent, dataset and metrics in its manifest
    <store>/<model>/<version>/onnx/ its ONNX web bundle, made when it is first published
    <store>/<model>/published       a symlink to the published version (none: the model's own
                                    weights are served)
    <store>/.checkpoints/           training runs' per-epoch checkpoints
    <store>/.base/                  trainable built-ins as model folders (where training starts)

Publishing swaps the symlink in one rename, so a reader sees the old version or the new one,
never a half-written pointer; a rollback is the same swap. Serve replicas, run workers and the
web app each follow the link (the way TensorFlow Serving follows a model's base path), so a
publish moves every path without a restart, and no request is answered by a half-loaded model.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import InvalidInput

PUBLISHED = "published"
BASE = ".base"
ONNX = "onnx"
VERSION_RE = re.compile(r"^[0-9a-f]{12}$")
ENV = "MARCELLE_TORCH_STORE"


def default_store() -> Path:
    """$MARCELLE_TORCH_STORE, else ``versions/`` in the weights cache (the local stack's store)."""
    from .weights import cache_dir

    root = os.environ.get(ENV)
    return Path(root).expanduser() if root else cache_dir() / "versions"


class ModelStore:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root else default_store()

    def version_dir(self, model: str, version: str) -> Path:
        """The folder of one version; a clear error for a version that is not in the store."""
        if not isinstance(version, str) or not VERSION_RE.match(version):
            raise InvalidInput(f"a model version is 12 hex digits, got {version!r}")
        folder = self.root / model / version
        if not (folder / "marcelle-model.yaml").is_file():
            known = ", ".join(v["version"] for v in self.versions(model)) or "none"
            raise InvalidInput(f"model {model} has no version {version} in the store {self.root} (it has: {known})")
        return folder

    def versions(self, model: str) -> list[dict]:
        """Every version of a model, oldest first: version, parent, dataset, metrics, created."""
        from .folder import read_manifest

        found = []
        base = self.root / model
        if not base.is_dir():
            return []
        for folder in base.iterdir():
            if not VERSION_RE.match(folder.name) or not (folder / "marcelle-model.yaml").is_file():
                continue
            manifest = read_manifest(folder)
            found.append(
                {
                    "version": folder.name,
                    "parent": manifest.get("parent"),
                    "dataset": manifest.get("dataset"),
                    "metrics": manifest.get("metrics"),
                    "labels": list(manifest.get("labels") or []),
                    "created": folder.stat().st_mtime,
                }
            )
        return sorted(found, key=lambda v: (v["created"], v["version"]))

    def published(self, model: str) -> str | None:
        """The published version of a model, or None (its own weights). One readlink: cheap to poll."""
        try:
            target = os.readlink(self.root / model / PUBLISHED)
        except (FileNotFoundError, NotADirectoryError):
            return None
        name = Path(target).name
        return name if VERSION_RE.match(name) else None

    def base_dir(self) -> Path:
        return self.root / BASE

    def published_dir(self, model: str) -> Path | None:
        version = self.published(model)
        return self.root / model / version if version else None

    def publish(self, model: str, version: str | None) -> str | None:
        """Point ``published`` at ``version`` (None: back to the model's own weights) in one
        atomic rename; returns the version published before."""
        previous = self.published(model)
        link = self.root / model / PUBLISHED
        if version is None:
            link.unlink(missing_ok=True)
            return previous
        self.version_dir(model, version)  # it must be whole in the store
        tmp = link.with_name(f".{PUBLISHED}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        os.symlink(version, tmp)  # relative: the store can be mounted anywhere
        os.replace(tmp, link)
        return previous
