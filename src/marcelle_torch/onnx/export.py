"""Export a ModelSpec to ONNX and write a web bundle (``model.onnx`` + ``model.json``).

The exporter is torch's ``torch.export``-based one (``dynamo=True``, torch's default and the
one that stays: the TorchScript exporter is deprecated). It needs opset 18 or newer, which
onnxruntime-web runs; the graph comes out folded (no Constant nodes) and with a symbolic batch
axis. ``exporter="torchscript"`` remains for models ``torch.export`` cannot trace.

The bundle is written to a temporary directory beside the target and renamed into place, so
a failed export or a refused check leaves the previous bundle (or nothing) behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import InvalidInput, MarcelleTorchError, first_line
from ..models import ModelSpec, get_spec, load_model
from . import checks as C
from .settings import DEFAULT_OPSET, EXPORTERS

INPUT_NAME = "input"
BUNDLE_FORMAT = "marcelle-torch-onnx-bundle"
DEFAULT_BUNDLE_ROOT = Path("services/frontend/public/onnx")


class ExportRefused(MarcelleTorchError):
    """An export whose checks failed: nothing is published."""

    status = 422
    code = "export_refused"


class ExportFailed(MarcelleTorchError):
    """The exporter (or writing the bundle) failed."""

    status = 500
    code = "export_failed"


def output_name(spec: ModelSpec) -> str:
    return "probabilities" if spec.task == "classification" else "output"


@dataclass
class BundleResult:
    name: str
    out_dir: Path | None
    metadata: dict
    checks: list[C.CheckResult] = field(default_factory=list)


def export_onnx(
    spec: ModelSpec, model: torch.nn.Module, path: Path, opset: int = DEFAULT_OPSET, exporter: str = "dynamo"
) -> None:
    """Write ``model`` as one self-contained ONNX file with input ``input`` (dynamic batch)."""
    _check_options(opset, exporter)
    # Batch of 2: torch.export specialises a dimension of size 1 to a constant.
    example = torch.zeros((2, *spec.input.shape), dtype=getattr(torch, getattr(spec.input, "dtype", "float32")))
    out = output_name(spec)
    noise = io.StringIO()
    try:
        with _quiet(), contextlib.redirect_stdout(noise), contextlib.redirect_stderr(noise), torch.no_grad():
            if exporter == "dynamo":
                program = torch.onnx.export(
                    model,
                    (example,),
                    dynamo=True,
                    opset_version=opset,
                    input_names=[INPUT_NAME],
                    output_names=[out],
                    dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
                    external_data=False,
                    optimize=True,
                    verbose=False,
                    report=False,
                )
                if program is None:  # only with dynamo=False, which this branch does not pass
                    raise RuntimeError("torch.onnx.export returned no program")
                program.save(str(path), external_data=False)
            else:
                torch.onnx.export(
                    model,
                    (example,),
                    str(path),
                    dynamo=False,
                    opset_version=opset,
                    input_names=[INPUT_NAME],
                    output_names=[out],
                    dynamic_axes={INPUT_NAME: {0: "batch"}, out: {0: "batch"}},
                    do_constant_folding=True,
                )
    except Exception as exc:  # the exporter's errors are many and long: one line that says which
        cause = _root_cause(exc)
        raise ExportFailed(
            f"model {spec.name} cannot be exported to ONNX ({exporter} exporter, opset {opset}): "
            f"{type(cause).__name__}: {first_line(cause)}"
        ) from exc


def _root_cause(exc: BaseException) -> BaseException:
    """The exporter wraps the real reason (a torch.export error, an unsupported op) in its own."""
    seen = {id(exc)}
    while (inner := exc.__cause__ or exc.__context__) is not None and id(inner) not in seen:
        exc = inner
        seen.add(id(exc))
    return exc


def _check_options(opset: int, exporter: str) -> None:
    if exporter not in EXPORTERS:
        raise InvalidInput(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if exporter == "dynamo" and opset < DEFAULT_OPSET:
        raise InvalidInput(
            f"opset {opset}: the dynamo exporter writes opset {DEFAULT_OPSET} or newer "
            "(use --exporter torchscript for an older opset)"
        )


@contextlib.contextmanager
def _quiet():
    """The exporter logs its own chatter (optional torchvision ops, deprecations): keep the CLI readable."""
    loggers = [logging.getLogger(n) for n in ("torch", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)  # the exporter's failures come back as its exception, said in one line
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def bundle_metadata(spec: ModelSpec, onnx_path: Path, opset: int, exporter: str, results) -> dict:
    import onnx

    from .. import __version__

    proto = onnx.load(str(onnx_path), load_external_data=False)

    def dims(value_info):
        return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]

    data = onnx_path.read_bytes()
    return {
        "format": BUNDLE_FORMAT,
        "format_version": 1,
        "name": spec.name,
        "version": spec.version,
        "task": spec.task,
        "description": spec.description,
        "labels": list(spec.labels),
        "input": spec.input.to_json(),
        "onnx": {
            "file": "model.onnx",
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "opset": opset,
            "exporter": exporter,
            "input_name": proto.graph.input[0].name,
            "output_name": proto.graph.output[0].name,
            "input_shape": dims(proto.graph.input[0]),
            "output_shape": dims(proto.graph.output[0]),
        },
        "created_from": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "marcelle_torch": __version__,
            "weights": spec.weights.describe,
            # Which weights made this bundle: a client or a test can tell a stale bundle.
            "weights_sha256": _weights_sha256(spec),
        },
        "checks": {r.name: r.to_json() for r in results},
    }


def _weights_sha256(spec: ModelSpec) -> str | None:
    from ..models.weights import resolve_weights, sha256_of

    path = resolve_weights(spec, train_if_missing=False)
    return sha256_of(path) if path is not None else None


def default_out_dir(name: str) -> Path:
    if not Path("services/frontend").is_dir():
        raise InvalidInput(
            "no services/frontend/ in the current directory: run from the project root or pass --out DIR"
        )
    return DEFAULT_BUNDLE_ROOT / name


def export_bundle(
    ref: str,
    out_dir: Path | None = None,
    opset: int = DEFAULT_OPSET,
    max_mb: float = C.DEFAULT_MAX_MB,
    check: bool = True,
    exporter: str | None = None,
    parity_inputs: torch.Tensor | None = None,
    on_step: Callable[[str], None] = lambda _msg: None,
    on_check: Callable[[C.CheckResult], None] = lambda _r: None,
) -> BundleResult:
    """Export ``ref`` (built-in name, model folder or ``package.module:factory``), check it, write
    the bundle; ``exporter`` None is the one the model needs (``ModelSpec.onnx_exporter``).

    Raises ExportRefused (nothing written) when a blocking check fails.
    """
    steps = 5 if check else 3
    n = iter(range(1, steps + 1))

    def step(msg):
        on_step(f"[{next(n)}/{steps}] {msg}")

    spec = get_spec(ref).require("onnx")
    exporter = exporter or spec.onnx_exporter
    _check_options(opset, exporter)
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(spec.name)
    _check_writable(out_dir)
    step(f"load {spec.name} v{spec.version} (weights: {spec.weights.describe})")
    model = load_model(spec, progress=True)

    workdir = Path(_mkdtemp_beside(out_dir))
    try:
        onnx_path = workdir / "model.onnx"
        step(
            f"export to ONNX ({exporter} exporter, opset {opset}, dynamic batch, "
            f"input '{INPUT_NAME}', output '{output_name(spec)}')"
        )
        export_onnx(spec, model, onnx_path, opset=opset, exporter=exporter)

        results = []
        if check:
            step("check web compatibility (onnxruntime-web WASM operators)")
            results.append(C.check_web_compat(onnx_path))
            on_check(results[-1])
            step("check numerical parity (PyTorch vs onnxruntime)")
            if results[-1].passed:
                inputs = parity_inputs if parity_inputs is not None else C.parity_inputs(spec)
                results.append(C.check_parity(model, onnx_path, inputs, labels=spec.task == "classification"))
            else:
                results.append(
                    C.CheckResult("numerical parity", False, "skipped: the model does not load in onnxruntime-web")
                )
            on_check(results[-1])
        step("check size")
        results.append(C.check_size(onnx_path, max_mb))
        on_check(results[-1])

        metadata = bundle_metadata(spec, onnx_path, opset, exporter, results)
        blocking = [r for r in results if r.blocks]
        if blocking:
            raise ExportRefused(
                f"{spec.name}: not published to {out_dir}: "
                + "; ".join(f"{r.name} failed: {r.summary}" for r in blocking)
            )
        (workdir / "model.json").write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        _replace_dir(workdir, out_dir)
        return BundleResult(spec.name, out_dir, metadata, results)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _check_writable(out_dir: Path) -> None:
    """Say early, in one line, when the bundle cannot be written where asked."""
    parent = out_dir.parent
    for p in [parent, *parent.parents]:
        if p.exists():
            if not p.is_dir():
                raise InvalidInput(f"cannot write the bundle to {out_dir}: {p} is not a directory")
            if not os.access(p, os.W_OK):
                raise InvalidInput(f"cannot write the bundle to {out_dir}: {p} is not writable")
            break
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInput(f"cannot write the bundle to {out_dir}: it exists and is not a directory")


def _mkdtemp_beside(out_dir: Path) -> str:
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        path = tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".part")
        os.chmod(path, 0o755)  # mkdtemp makes it private; the web server must read the bundle
        return path
    except OSError as exc:
        raise InvalidInput(f"cannot write the bundle to {out_dir}: {exc.strerror or exc}") from None


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an existing bundle is swapped out, then removed."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
        os.replace(target, old / "bundle")
    try:
        os.replace(new, target)
    except OSError:
        if old is not None:
            os.replace(old / "bundle", target)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
