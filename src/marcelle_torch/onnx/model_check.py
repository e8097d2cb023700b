"""`marcelle-torch model check`: a model (folder, archive, URL, or any reference) loaded and
checked the way each path will run it.

1. The model loads: its manifest, its weights, its output contract (``models/folder.py``).
2. Sample inputs go through the decode path that Ray Serve and the run worker share
   (``decode_instances``, encoded images as clients send them, at the model's size and another).
3. Those decoded inputs, and random ones, go through onnxruntime on the exported graph: the web
   operators are checked, and the probabilities and labels must match PyTorch's
   (``export_bundle``'s checks, the graph written to a temporary folder and removed).
"""

from __future__ import annotations

import base64
import io
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..models import ImageInput, ModelSpec, decode_instances, get_spec, load_model, postprocess
from . import checks as C
from .export import ExportRefused, export_bundle


def sample_instances(spec: ModelSpec, n: int = 8, seed: int = 0) -> list:
    """What clients send: PNG images (``{"b64": ...}``) at the model's size and at twice its
    width (resized on the way), or nested lists for a tensor model."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    if not isinstance(spec.input, ImageInput):
        return [rng.uniform(0, 1, size=spec.input.shape).astype(np.float32).tolist() for _ in range(n)]
    mode = "L" if spec.input.channels == 1 else "RGB"
    instances = []
    for i in range(n):
        width = spec.input.size * (2 if i % 2 else 1)
        pixels = rng.integers(0, 256, size=(spec.input.size, width, spec.input.channels), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode).save(buffer, format="PNG")
        instances.append({"b64": base64.b64encode(buffer.getvalue()).decode()})
    return instances


def check_model(ref: str, say: Callable[[str], None] = print) -> ModelSpec:
    """Runs the checks above; raises the first failure as one line (nothing is left behind)."""
    spec = get_spec(ref).require("onnx")
    say(f"[1/3] {spec.name} v{spec.version}: {len(spec.labels)} labels, input {spec.input.to_json()['shape']}")
    say("      PASS manifest, weights and output contract")
    model = load_model(spec)
    decoded = decode_instances(spec, sample_instances(spec))
    with torch.no_grad():
        predictions = postprocess(spec, model(decoded))
    first = predictions[0]["label"]
    say(f"[2/3] Serve's and the worker's decode path: {len(predictions)} encoded inputs -> {first!r}, ...")
    say("[3/3] ONNX (onnxruntime on the exported graph, as the browser runs it)")
    inputs = torch.cat([decoded, C.parity_inputs(spec, n_random=32, n_examples=0)])
    with tempfile.TemporaryDirectory(prefix="marcelle-model-check-") as tmp:
        try:
            result = export_bundle(
                ref,
                out_dir=Path(tmp) / spec.name,
                parity_inputs=inputs,
                on_check=lambda r: say("\n".join(f"      {line}" for line in r.lines())),
            )
        except ExportRefused as exc:
            raise ExportRefused(f"model check {spec.name}: {exc.message}") from None
    warned = [r.name for r in result.checks if not r.passed]
    say(f"{spec.name}: ready for the three paths" + (f" (warnings: {', '.join(warned)})" if warned else ""))
    return spec
