"""Checks an exported model must pass before it is published as a web bundle.

Each check returns a ``CheckResult``: passed or not, a one-line summary, and the reasons
(every unsupported operator with the node that uses it, every disagreeing input...).
A failed ``error`` check stops the export; a ``warning`` (size) is printed and the bundle
is still written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import first_line
from ..models.spec import ModelSpec
from . import webops
from .settings import DEFAULT_MAX_MB

# Float32 through two runtimes with different kernels (fused conv, other summation order).
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3


@dataclass
class CheckResult:
    name: str
    passed: bool
    summary: str
    level: str = "error"  # "error": failing blocks publishing; "warning": reported only
    details: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.passed:
            return "PASS"
        return "FAIL" if self.level == "error" else "WARN"

    @property
    def blocks(self) -> bool:
        return not self.passed and self.level == "error"

    def lines(self) -> list[str]:
        return [f"{self.status} {self.name}: {self.summary}"] + [f"    - {d}" for d in self.details]

    def to_json(self) -> dict:
        return {
            "passed": self.passed,
            "level": self.level,
            "summary": self.summary,
            "details": self.details,
            **self.data,
        }


# --- web compatibility --------------------------------------------------------------------


def check_web_compat(model) -> CheckResult:
    """Every node's (domain, op_type, version) must have a kernel in onnxruntime-web's WASM backend.

    ``model`` is an ``onnx.ModelProto`` or a path. Nodes inside subgraphs (If/Loop/Scan) and
    model-local functions are checked too.
    """
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    opsets = {(imp.domain or "ai.onnx"): imp.version for imp in model.opset_import}
    local_functions = {(f.domain, f.name): f for f in model.functions}
    unsupported: dict[tuple, list[str]] = {}
    expanded: set[str] = set()
    count = 0

    def visit(nodes, where: str):
        nonlocal count
        for node in nodes:
            count += 1
            domain = node.domain or "ai.onnx"
            name = node.name or f"#{count} ({node.op_type})"
            if (node.domain, node.op_type) in local_functions:
                visit(local_functions[(node.domain, node.op_type)].node, f"{where}{name}/")
                continue
            version = _op_version(domain, node.op_type, opsets.get(domain))
            verdict = _supported(domain, node.op_type, version)
            if verdict == "function":
                expanded.add(f"{domain}::{node.op_type}")
            elif not verdict:
                unsupported.setdefault((domain, node.op_type, version), []).append(f"{where}{name}")
            for attr in node.attribute:  # control flow: If/Loop/Scan bodies
                graphs = [attr.g] if attr.HasField("g") else list(attr.graphs)
                for graph in graphs:
                    visit(graph.node, f"{where}{name}/")

    visit(model.graph.node, "")
    source = webops.load_allowlist()
    data = {"nodes": count, "opsets": opsets, "allowlist_onnxruntime": source["onnxruntime_version"]}
    if unsupported:
        details = [
            f"{domain}::{op} (version {version if version is not None else '?'}) used by node"
            f"{'s' if len(nodes) > 1 else ''} {', '.join(repr(n) for n in nodes[:5])}"
            f"{f' and {len(nodes) - 5} more' if len(nodes) > 5 else ''}"
            for (domain, op, version), nodes in sorted(unsupported.items())
        ]
        ops = ", ".join(sorted({f"{d}::{o}" for d, o, _ in unsupported}))
        data["unsupported"] = [
            {"domain": d, "op_type": o, "version": v, "nodes": n} for (d, o, v), n in sorted(unsupported.items())
        ]
        return CheckResult(
            "web compatibility",
            False,
            f"{len(unsupported)} operator(s) not supported by onnxruntime-web's WASM backend: {ops}",
            details=details,
            data=data,
        )
    note = f"; runs as ONNX functions: {', '.join(sorted(expanded))}" if expanded else ""
    return CheckResult(
        "web compatibility",
        True,
        f"all {count} nodes use operators onnxruntime-web's WASM backend runs "
        f"(opsets {', '.join(f'{d} {v}' for d, v in sorted(opsets.items()))}){note}",
        data=data,
    )


def _op_version(domain: str, op_type: str, opset: int | None) -> int | None:
    """The operator version a node resolves to: the newest schema at or below the model's opset."""
    if opset is None:
        return None
    if domain == "ai.onnx":
        import onnx

        try:
            return onnx.defs.get_schema(op_type, opset, "").since_version
        except onnx.defs.SchemaError:
            return None
    return opset  # contrib ops are versioned by their domain's opset (all 1 today)


def _supported(domain: str, op_type: str, version: int | None):
    if version is None:
        return False
    if webops.covers(webops.kernel_ranges(domain, op_type), version):
        return True
    if domain == "ai.onnx":
        if op_type == "Constant":
            return True  # ORT folds constants into initializers; there is no kernel to run
        import onnx

        # ORT inlines an operator defined as an ONNX function when no kernel is registered.
        schema = onnx.defs.get_schema(op_type, version, "")
        # onnx's stubs (onnx_cpp2py_export/defs.pyi) omit these two OpSchema properties.
        if schema.has_function or schema.has_context_dependent_function:  # type: ignore[attr-defined]
            return "function"
    return False


# --- numerical parity ---------------------------------------------------------------------


def parity_inputs(spec: ModelSpec, n_random: int = 64, n_examples: int = 200, seed: int = 0) -> torch.Tensor:
    """Inputs for the parity check: random tensors in the input's range, then up to
    ``n_examples`` of the spec's own representative inputs (``spec.examples``), if it has any."""
    rng = np.random.default_rng(seed)
    shape = tuple(spec.input.shape)
    lo, hi = spec.input.value_range or (0.0, 1.0)
    batches = [rng.uniform(lo, hi, size=(n_random, *shape)).astype(np.float32)]
    if spec.examples is not None and n_examples:
        examples = np.asarray(spec.examples(n_examples, seed), dtype=np.float32)
        if examples.shape[1:] != shape:
            expected = ["n", *shape]
            raise ValueError(f"model {spec.name}: examples() gave shape {list(examples.shape)}, expected {expected}")
        batches.append(examples[:n_examples])
    return torch.from_numpy(np.concatenate(batches))


def ort_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: ORT's warnings are not the user's business here
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_parity(
    model: torch.nn.Module,
    onnx_path: Path,
    inputs: torch.Tensor,
    labels: bool = True,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    batch_size: int = 64,
) -> CheckResult:
    """The same inputs through PyTorch and onnxruntime (Python, CPU EP) must agree within
    atol/rtol and (for a classifier) give the same argmax. A PyTorch top-2 margin below
    ``atol`` is a tie, not a disagreement, and is counted separately."""
    try:
        session = ort_session(onnx_path)
    except Exception as exc:  # onnxruntime's own errors: an op without a kernel, a bad graph
        return CheckResult("numerical parity", False, f"onnxruntime cannot load the model: {first_line(exc)}")
    input_name = session.get_inputs()[0].name
    max_abs, max_rel_excess, bad_rows, label_mismatch, ties = 0.0, 0.0, [], [], 0
    offset = 0
    for batch in inputs.split(batch_size):
        with torch.no_grad():
            expected = model(batch).float().numpy()
        try:
            got = session.run(None, {input_name: batch.numpy()})[0]
        except Exception as exc:
            return CheckResult("numerical parity", False, f"onnxruntime failed to run the model: {first_line(exc)}")
        if got.shape != expected.shape:
            return CheckResult(
                "numerical parity",
                False,
                f"output shape differs: PyTorch {list(expected.shape)}, ONNX {list(got.shape)}",
            )
        diff = np.abs(got - expected)
        max_abs = max(max_abs, float(diff.max(initial=0.0)))
        excess = diff - (atol + rtol * np.abs(expected))
        max_rel_excess = max(max_rel_excess, float(excess.max(initial=0.0)))
        rows = np.nonzero((excess > 0).reshape(len(batch), -1).any(axis=1))[0]
        bad_rows += [offset + int(r) for r in rows]
        if labels and expected.ndim == 2:
            top2 = np.sort(expected, axis=1)[:, -2:] if expected.shape[1] > 1 else None
            tie = (top2[:, 1] - top2[:, 0] < atol) if top2 is not None else np.zeros(len(batch), bool)
            ties += int(tie.sum())
            differ = (expected.argmax(1) != got.argmax(1)) & ~tie
            label_mismatch += [offset + int(r) for r in np.nonzero(differ)[0]]
        offset += len(batch)
    n = offset
    data = {
        "inputs": n,
        "max_abs_diff": max_abs,
        "atol": atol,
        "rtol": rtol,
        "label_agreement": (n - len(label_mismatch)) / n if labels else None,
        "ties": ties,
    }
    tolerance = f"atol {atol:g}, rtol {rtol:g}"
    if bad_rows or label_mismatch:
        details = []
        if bad_rows:
            details.append(
                f"{len(bad_rows)}/{n} inputs outside {tolerance} (first: {bad_rows[:5]}), max abs diff {max_abs:.3g}"
            )
        if label_mismatch:
            details.append(f"{len(label_mismatch)}/{n} inputs get another label (first: {label_mismatch[:5]})")
        return CheckResult(
            "numerical parity",
            False,
            f"PyTorch and onnxruntime disagree on {len(set(bad_rows) | set(label_mismatch))}/{n} inputs",
            details=details,
            data=data,
        )
    label_note = f", same label on all{f' ({ties} ties)' if ties else ''}" if labels else ""
    return CheckResult(
        "numerical parity",
        True,
        f"{n} inputs agree within {tolerance} (max abs diff {max_abs:.2g}){label_note}",
        data=data,
    )


# --- size -----------------------------------------------------------------------------------


def check_size(path: Path, max_mb: float = DEFAULT_MAX_MB) -> CheckResult:
    size = Path(path).stat().st_size
    mb = size / 1e6
    data = {"bytes": size, "max_mb": max_mb}
    if mb > max_mb:
        return CheckResult(
            "size",
            False,
            f"{mb:.2f} MB is above {max_mb:g} MB",
            level="warning",
            details=[
                "every visitor downloads the whole model before the first prediction; for a model "
                "this big prefer server-side inference with Ray Serve (Solution 1)"
            ],
            data=data,
        )
    return CheckResult("size", True, f"{mb:.2f} MB (limit {max_mb:g} MB)", data=data)
