"""ModelSpec: the one definition of a model that every path reads.

The Serve deployment loads it, the ONNX exporter exports it, the worker runs it. A spec
says how to build the ``nn.Module``, where its weights come from, what input it takes and
what its output means.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import InvalidSpec

Task = Literal["classification", "generation"]
# Where a model runs: Ray Serve, ONNX in the browser, the backend's run worker.
Target = Literal["serve", "onnx", "worker"]
TASKS = ("classification", "generation")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ImageInput:
    """A square grayscale (or RGB) image, given to the module as float N x C x size x size.

    Values are in ``value_range``; clients send an encoded image (PNG/JPEG, base64) or a
    nested list already of this shape.
    """

    size: int
    channels: int = 1
    value_range: tuple[float, float] = (0.0, 1.0)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.channels, self.size, self.size)

    def to_json(self) -> dict:
        return {
            "kind": "image",
            "size": self.size,
            "channels": self.channels,
            "shape": list(self.shape),
            "dtype": "float32",
            "range": list(self.value_range),
            "encodings": ["b64 (PNG/JPEG, any size: converted and resized)", "nested list"],
        }


@dataclass(frozen=True)
class TensorInput:
    """A tensor of a fixed per-instance shape (the batch axis is added by the caller)."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    value_range: tuple[float, float] | None = None

    def to_json(self) -> dict:
        return {
            "kind": "tensor",
            "shape": list(self.shape),
            "dtype": self.dtype,
            "range": list(self.value_range) if self.value_range else None,
            "encodings": ["nested list"],
        }


InputSchema = ImageInput | TensorInput


@dataclass(frozen=True)
class Weights:
    """Where a model's weights come from: exactly one of a local path, an http(s) URL
    checked by sha256, or a training function (built-in models train into the cache)."""

    path: str | None = None
    url: str | None = None
    sha256: str | None = None
    train: Callable[..., dict] | None = None

    def __post_init__(self) -> None:
        given = [k for k in ("path", "url", "train") if getattr(self, k) is not None]
        if len(given) > 1:
            raise InvalidSpec(f"weights: give one of path, url, train; got {', '.join(given)}")
        if self.url is not None:
            if not self.url.startswith(("http://", "https://")):
                raise InvalidSpec(f"weights.url must be http(s): {self.url!r}")
            if self.sha256 is None or not SHA256_RE.match(self.sha256):
                raise InvalidSpec("weights.url needs sha256: 64 lowercase hex digits")

    @property
    def describe(self) -> str:
        if self.path:
            return f"path {self.path}"
        if self.url:
            return f"url {self.url}"
        if self.train:
            return "trained into the cache"
        return "none (built as initialised)"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: Task
    build: Callable[[], Any]
    input: InputSchema
    weights: Weights = field(default_factory=Weights)
    labels: tuple[str, ...] = ()
    version: str = "1"
    description: str = ""
    # Extra settings a task needs (e.g. generation steps); JSON-serialisable.
    params: dict = field(default_factory=dict)
    # A generation model's run: run(module, input, params, report) -> result, where
    # report(progress, partial=None) streams progress (see models.digits_generator.run).
    run: Callable[..., Any] | None = None
    # Representative inputs, examples(n, seed) -> array (n, *input.shape) in the input's range:
    # what the ONNX parity check runs besides random tensors (e.g. digits drawn as the app's
    # sketchpad draws them), so checks need not know any dataset.
    examples: Callable[[int, int], Any] | None = None
    # The ONNX exporter this model needs: torch.export's ("dynamo"), or "torchscript" for a
    # TorchScript module, which torch.export cannot trace into.
    onnx_exporter: str = "dynamo"
    # A built-in that can be fine-tuned: trainable(spec, root) -> the model folder training starts
    # from, made under the directory root (a model folder with `train:` is trainable by itself).
    trainable: Callable[[ModelSpec, Path], Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_RE.match(self.name):
            raise InvalidSpec(f"model name {self.name!r}: use lowercase letters, digits and '-' (max 63)")
        if self.task not in TASKS:
            raise InvalidSpec(f"model {self.name}: task must be one of {TASKS}, got {self.task!r}")
        if self.examples is not None and not callable(self.examples):
            raise InvalidSpec(f"model {self.name}: examples must be callable as examples(n, seed)")
        if not callable(self.build):
            raise InvalidSpec(f"model {self.name}: build must be callable")
        if not isinstance(self.input, (ImageInput, TensorInput)):
            raise InvalidSpec(f"model {self.name}: input must be ImageInput or TensorInput")
        if self.task == "classification" and not self.labels:
            raise InvalidSpec(f"model {self.name}: a classification model needs labels")
        if self.task == "generation" and not callable(self.run):
            raise InvalidSpec(f"model {self.name}: a generation model needs run(module, input, params, report)")
        if self.task == "classification" and self.run is not None:
            raise InvalidSpec(
                f"model {self.name}: run is for generation models; a classifier's module is called on a batch"
            )
        if len(set(self.labels)) != len(self.labels):
            raise InvalidSpec(f"model {self.name}: labels must be unique")
        if self.weights.path and not Path(self.weights.path).expanduser().exists():
            # Checked at load time too; said here so a typo fails where it is written.
            raise InvalidSpec(f"model {self.name}: weights path not found: {self.weights.path}")

    def require(self, target: Target) -> ModelSpec:
        """This spec, if ``target`` can run it; else InvalidSpec saying why, in one line."""
        if target in ("serve", "onnx") and self.task != "classification":
            where = "Ray Serve" if target == "serve" else "an ONNX export"
            raise InvalidSpec(
                f"model {self.name} is a {self.task} model: {where} takes classification models "
                "only (one forward pass per request); run it through the backend worker"
            )
        return self

    def metadata(self) -> dict:
        return {
            "name": self.name,
            "task": self.task,
            "version": self.version,
            "description": self.description,
            "labels": list(self.labels),
            "input": self.input.to_json(),
            "params": self.params,
        }
