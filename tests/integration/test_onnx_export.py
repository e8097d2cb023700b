"""`marcelle-torch export-onnx` end to end: the real exporter, the real onnxruntime, the CLI.

User models come from a module written to a temporary directory and named by import path,
as a user adds theirs (``package.module:factory``), without touching the project.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

CLI = str(Path(sys.executable).with_name("marcelle-torch"))

USER_MODELS = textwrap.dedent('''
    import torch
    from marcelle_torch.models import ModelSpec, TensorInput


    class SpectrumNet(torch.nn.Module):
        """Uses ORT's fused real FFT (com.microsoft::Rfft) when exported: CUDA only, not in the browser."""

        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(16, 2)

        def forward(self, x):
            if torch.onnx.is_in_onnx_export():
                spectrum = torch.onnx.ops.symbolic(
                    "com.microsoft::Rfft", (x,), dict(signal_ndim=1, onesided=1, normalized=0),
                    dtype=x.dtype, shape=(x.shape[0], 16), version=1)
            else:
                spectrum = torch.fft.rfft(x).abs()[:, :16].float()
            return torch.softmax(self.fc(spectrum), dim=1)


    class Wide(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 4096)

        def forward(self, x):
            return torch.softmax(self.fc(x), dim=1)


    class NotTraceable(torch.nn.Module):
        def forward(self, x):
            # Python control flow on the values: no single graph computes this.
            if float(x.sum()) > 0:
                return torch.softmax(x, dim=1)
            return torch.softmax(-x, dim=1)


    def spectrum():
        return ModelSpec(name="spectrum", task="classification", build=SpectrumNet,
                         input=TensorInput(shape=(30,)), labels=("low", "high"))


    def wide():
        return ModelSpec(name="wide", task="classification", build=Wide, input=TensorInput(shape=(8,)),
                         labels=tuple(f"c{i}" for i in range(4096)))


    def not_traceable():
        return ModelSpec(name="not-traceable", task="classification", build=NotTraceable,
                         input=TensorInput(shape=(2,)), labels=("a", "b"))
''')


@pytest.fixture(scope="module")
def user_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("user_models")
    (root / "onnx_user_models.py").write_text(USER_MODELS)
    return root


def run_cli(*args, cwd=None, pythonpath=None, timeout=900):
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [CLI, "export-onnx", *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
    )


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("marcelle-torch export-onnx: error: ")
    assert "Traceback" not in proc.stderr + proc.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def digits_bundle(tmp_path_factory, trained_digits):
    out = tmp_path_factory.mktemp("web") / "onnx" / "digits"
    proc = run_cli("digits", "--out", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc


def test_digits_exports_checks_and_writes_the_bundle(digits_bundle, trained_digits):
    out, proc = digits_bundle
    lines = proc.stdout.strip().splitlines()
    assert [line.split("]")[0] for line in lines if line.startswith("[")] == [f"[{i}/5" for i in range(1, 6)]
    assert "PASS web compatibility" in proc.stdout
    assert "PASS numerical parity" in proc.stdout and "same label on all" in proc.stdout
    assert "PASS size" in proc.stdout
    assert lines[-1].startswith(f"digits: wrote {out}/ (model.onnx ") and "checks passed" in lines[-1]
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.onnx"]
    assert leftovers(out.parent) == []

    meta = json.loads((out / "model.json").read_text())
    data = (out / "model.onnx").read_bytes()
    assert meta["format"] == "marcelle-torch-onnx-bundle"
    assert (
        meta["name"] == "digits"
        and meta["version"] == trained_digits.version
        and meta["labels"] == [str(i) for i in range(10)]
    )
    assert meta["input"]["shape"] == [1, 128, 128]
    onnx_meta = meta["onnx"]
    assert onnx_meta["bytes"] == len(data) and onnx_meta["sha256"] == hashlib.sha256(data).hexdigest()
    assert onnx_meta["opset"] == 18 and onnx_meta["exporter"] == "dynamo"
    assert onnx_meta["input_name"] == "input" and onnx_meta["output_name"] == "probabilities"
    assert onnx_meta["input_shape"][1:] == [1, 128, 128] and isinstance(onnx_meta["input_shape"][0], str)
    assert meta["created_from"]["torch"].startswith("2.13.0")
    from marcelle_torch.models import resolve_weights
    from marcelle_torch.models.weights import sha256_of

    assert meta["created_from"]["weights_sha256"] == sha256_of(resolve_weights(trained_digits))
    assert meta["checks"]["web compatibility"]["passed"]
    parity = meta["checks"]["numerical parity"]
    assert parity["passed"] and parity["label_agreement"] == 1.0 and parity["max_abs_diff"] < parity["atol"]


def test_bundle_runs_in_onnxruntime_with_any_batch_and_agrees_with_pytorch(digits_bundle, make_digit):
    import onnxruntime as ort
    import torch

    from marcelle_torch.models import decode_instances, get_spec, load_model

    out, _ = digits_bundle
    spec = get_spec("digits")
    model = load_model(spec)
    instances, labels = zip(*(make_digit(i, light_background=bool(i % 2)) for i in range(5)), strict=True)
    batch = decode_instances(spec, list(instances))
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["probabilities"], {"input": batch.numpy()})[0]
    with torch.no_grad():
        expected = model(batch).numpy()
    assert got.shape == (5, 10)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-3)
    assert [str(i) for i in got.argmax(1)] == list(labels)


def test_export_again_replaces_the_bundle_in_one_step(digits_bundle, tmp_path):
    out, _ = digits_bundle
    (out / "stale.txt").write_text("from an older export")
    proc = run_cli("digits", "--out", out, "--no-check")
    assert proc.returncode == 0, proc.stderr
    assert "checks skipped" in proc.stdout and "[3/3]" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.onnx"]
    assert json.loads((out / "model.json").read_text())["checks"].keys() == {"size"}
    assert leftovers(out.parent) == []


def test_unsupported_operator_is_refused_naming_op_and_node(user_models, tmp_path):
    out = tmp_path / "bundles" / "spectrum"
    proc = run_cli("onnx_user_models:spectrum", "--out", out, pythonpath=user_models)
    line = assert_one_line_error(proc, "spectrum: not published", "web compatibility failed", "com.microsoft::Rfft")
    assert "FAIL web compatibility" in proc.stdout
    detail = next(line for line in proc.stdout.splitlines() if "com.microsoft::Rfft (version 1) used by node" in line)
    assert re.search(r"used by node '[^']+'$", detail), detail  # the exporter's node name is given
    assert "numerical parity: skipped" in proc.stdout
    assert not out.exists(), line
    assert leftovers(out.parent) == []


def test_refused_export_keeps_the_previous_bundle(user_models, tmp_path):
    out = tmp_path / "spectrum"
    out.mkdir()
    (out / "model.json").write_text('{"previous": true}')
    proc = run_cli("onnx_user_models:spectrum", "--out", out, pythonpath=user_models)
    assert proc.returncode == 2
    assert json.loads((out / "model.json").read_text()) == {"previous": True}
    assert leftovers(tmp_path) == []


def test_big_model_is_published_with_a_size_warning(user_models, tmp_path):
    out = tmp_path / "wide"
    proc = run_cli("onnx_user_models:wide", "--out", out, "--max-mb", "0.1", pythonpath=user_models)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARN size:" in proc.stdout and "MB is above 0.1 MB" in proc.stdout
    assert "Ray Serve (Solution 1)" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].endswith("checks passed, warnings: size)")
    meta = json.loads((out / "model.json").read_text())
    assert meta["checks"]["size"]["passed"] is False and meta["checks"]["size"]["level"] == "warning"


def test_model_the_exporter_cannot_follow_fails_in_one_line(user_models, tmp_path):
    out = tmp_path / "nt"
    proc = run_cli("onnx_user_models:not_traceable", "--out", out, pythonpath=user_models)
    line = assert_one_line_error(proc, "model not-traceable cannot be exported to ONNX (dynamo exporter, opset 18): ")
    assert "data-dependent" in line  # the exporter's own reason, not its wrapper's
    assert proc.stderr.count("\n") == 1  # none of the exporter's graph dumps or warnings
    assert not out.exists() and leftovers(tmp_path) == []


def test_unknown_model_is_one_line(tmp_path):
    proc = run_cli("no-such-model", "--out", tmp_path / "x")
    assert_one_line_error(proc, "unknown model 'no-such-model'", "built-in models: digits")


def test_unwritable_out_dir_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    proc = run_cli("digits", "--out", blocker / "digits")
    assert_one_line_error(proc, f"cannot write the bundle to {blocker}/digits", "is not a directory")


def test_default_out_dir_needs_the_project_root(tmp_path):
    proc = run_cli("digits", cwd=tmp_path)
    assert_one_line_error(proc, "no services/frontend/ in the current directory", "--out DIR")


def test_old_opset_needs_the_torchscript_exporter(tmp_path):
    proc = run_cli("digits", "--out", tmp_path / "d", "--opset", "17")
    assert_one_line_error(proc, "opset 17", "--exporter torchscript")


def test_a_generation_model_is_refused_at_once_in_one_line(tmp_path):
    proc = run_cli("digits-generator", "--out", tmp_path / "gen")
    assert_one_line_error(
        proc, "model digits-generator is a generation model", "an ONNX export takes classification models only"
    )
    assert not (tmp_path / "gen").exists()
