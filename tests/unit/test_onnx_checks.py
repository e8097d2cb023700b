"""The checks behind `export-onnx`: web compatibility, numerical parity, size; and the shipped
list of operators onnxruntime-web's WASM backend runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from marcelle_torch.models import ImageInput, ModelSpec, TensorInput
from marcelle_torch.onnx import check_parity, check_size, check_web_compat, export_onnx, parity_inputs, webops

REPO = Path(__file__).resolve().parents[2]


def graph_model(nodes, opsets=(("", 18),), functions=()):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph(nodes, "g", [x], [y])
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets], functions=list(functions)
    )


# --- the operator list --------------------------------------------------------------------


def test_allowlist_names_its_source_and_matches_ort_kernel_table():
    data = webops.load_allowlist()
    assert "OperatorKernels.md" in data["source"] and "CPUExecutionProvider" in data["source"]
    assert data["onnxruntime_version"]
    ops = data["domains"]["ai.onnx"]
    # Rows of docs/OperatorKernels.md (CPUExecutionProvider): "Abs 13+ / [6, 12]", "Col2Im 18+".
    assert webops.kernel_ranges("ai.onnx", "Abs") == [(6, 12), (13, None)]
    assert webops.kernel_ranges("ai.onnx", "Col2Im") == [(18, None)]
    assert {"Conv", "Gemm", "Softmax", "MaxPool", "GatherElements"} <= set(ops)
    # Contrib ops with CUDA kernels only are not there.
    assert "Rfft" not in data["domains"]["com.microsoft"]
    assert "FusedConv" in data["domains"]["com.microsoft"]
    assert "ai.onnx.ml" not in data["domains"]


def test_allowlist_is_the_one_of_the_onnxruntime_web_the_app_ships():
    """The page runs the onnxruntime-web its lock file names: the list must be that release's
    (regenerate it with `python -m marcelle_torch.onnx.webops` after changing the web app's)."""
    lock = json.loads((REPO / "package-lock.json").read_text())  # the npm workspace's one lock
    shipped = lock["packages"]["node_modules/onnxruntime-web"]["version"]
    assert webops.load_allowlist()["onnxruntime_version"] == shipped, (
        f"wasm_ops.json lists onnxruntime {webops.load_allowlist()['onnxruntime_version']}'s operators, the web app "
        f"ships onnxruntime-web {shipped}: run `python -m marcelle_torch.onnx.webops`"
    )
    assert webops.locked_web_version() == shipped


def test_covers_open_and_closed_ranges():
    assert webops.covers([(6, 12), (13, None)], 13)
    assert webops.covers([(6, 12), (13, None)], 99)
    assert webops.covers([(6, 12)], 6)
    assert not webops.covers([(6, 12)], 5)
    assert not webops.covers([], 1)


# --- web compatibility ----------------------------------------------------------------------


def test_supported_graph_passes():
    model = graph_model(
        [
            helper.make_node("Relu", ["input"], ["r"], name="relu"),
            helper.make_node("Softmax", ["r"], ["y"], name="softmax", axis=1),
        ]
    )
    result = check_web_compat(model)
    assert result.passed, result.lines()
    assert result.data["nodes"] == 2
    assert "2 nodes" in result.summary


def test_unsupported_contrib_op_is_named_with_its_node():
    model = graph_model(
        [
            helper.make_node("Relu", ["input"], ["r"], name="relu"),
            helper.make_node("Rfft", ["r"], ["y"], name="spectrum/rfft", domain="com.microsoft", signal_ndim=1),
        ],
        opsets=(("", 18), ("com.microsoft", 1)),
    )
    result = check_web_compat(model)
    assert not result.passed and result.blocks
    assert "com.microsoft::Rfft" in result.summary
    assert any("com.microsoft::Rfft" in d and "'spectrum/rfft'" in d for d in result.details), result.details
    assert result.data["unsupported"] == [
        {"domain": "com.microsoft", "op_type": "Rfft", "version": 1, "nodes": ["spectrum/rfft"]}
    ]


def test_op_version_too_old_for_ort_is_refused():
    # ORT has no kernels for ai.onnx opsets below 7: Relu at opset 5 resolves to Relu-1.
    model = graph_model([helper.make_node("Relu", ["input"], ["y"], name="old_relu")], opsets=(("", 5),))
    result = check_web_compat(model)
    assert not result.passed
    assert "ai.onnx::Relu (version 1) used by node 'old_relu'" in result.details[0]


def test_unknown_op_is_refused():
    model = graph_model([helper.make_node("NoSuchOp", ["input"], ["y"], name="mystery")])
    result = check_web_compat(model)
    assert not result.passed and "ai.onnx::NoSuchOp" in result.summary


def test_function_op_without_kernel_runs_as_its_expansion():
    # Mish (opset 18) has no CPU kernel before 22 but is an ONNX function ORT inlines.
    assert not webops.covers(webops.kernel_ranges("ai.onnx", "Mish"), 18)
    model = graph_model([helper.make_node("Mish", ["input"], ["y"], name="mish")])
    result = check_web_compat(model)
    assert result.passed, result.lines()
    assert "ai.onnx::Mish" in result.summary


def test_nodes_in_subgraphs_and_local_functions_are_checked():
    then_branch = helper.make_graph(
        [helper.make_node("Rfft", ["input"], ["t"], name="inner_rfft", domain="com.microsoft")],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["e"], name="inner_id")],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)],
    )
    cond = helper.make_node(
        "Constant", [], ["c"], name="cond", value=helper.make_tensor("c", TensorProto.BOOL, [], [True])
    )
    if_node = helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then_branch, else_branch=else_branch)
    result = check_web_compat(graph_model([cond, if_node], opsets=(("", 18), ("com.microsoft", 1))))
    assert not result.passed
    assert "'branch/inner_rfft'" in result.details[0]

    local = helper.make_function(
        "my.fns",
        "Block",
        ["a"],
        ["b"],
        [helper.make_node("GemmFloat8", ["a"], ["b"], name="fp8", domain="com.microsoft")],
        [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)],
    )
    model = graph_model(
        [helper.make_node("Block", ["input"], ["y"], name="block0", domain="my.fns")],
        opsets=(("", 18), ("com.microsoft", 1), ("my.fns", 1)),
        functions=[local],
    )
    result = check_web_compat(model)
    assert not result.passed
    assert "com.microsoft::GemmFloat8" in result.summary and "'block0/fp8'" in result.details[0]


def test_check_reads_a_file(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(graph_model([helper.make_node("Relu", ["input"], ["y"], name="relu")]), str(path))
    assert check_web_compat(path).passed


# --- size -------------------------------------------------------------------------------


def test_size_warns_above_the_limit_and_recommends_ray_serve(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\0" * 3_000_000)
    small = check_size(path, max_mb=20)
    assert small.passed and "3.00 MB" in small.summary
    big = check_size(path, max_mb=2)
    assert not big.passed and big.level == "warning" and not big.blocks
    assert big.status == "WARN" and "3.00 MB is above 2 MB" in big.summary
    assert "Ray Serve" in " ".join(big.details)


# --- parity -----------------------------------------------------------------------------


class Tiny(torch.nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = torch.nn.Linear(6, 3)

    def forward(self, x):
        return torch.softmax(self.fc(x), dim=1)


def tiny_spec(build=Tiny):
    return ModelSpec(
        name="tiny",
        task="classification",
        build=build,
        input=TensorInput(shape=(6,), value_range=(0, 1)),
        labels=("a", "b", "c"),
    )


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "model.onnx"
    model = Tiny().eval()
    export_onnx(tiny_spec(), model, path)
    return model, path


def test_exported_graph_has_the_bundle_names_and_a_dynamic_batch(tiny_onnx):
    _, path = tiny_onnx
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["probabilities"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    assert {(i.domain or "ai.onnx"): i.version for i in proto.opset_import}["ai.onnx"] == 18
    assert not any(t.data_location == TensorProto.EXTERNAL for t in proto.graph.initializer)


def test_parity_passes_for_the_exported_model(tiny_onnx):
    model, path = tiny_onnx
    inputs = parity_inputs(tiny_spec(), n_random=100, n_examples=0)
    result = check_parity(model, path, inputs)
    assert result.passed, result.lines()
    assert result.data["inputs"] == 100 and result.data["label_agreement"] == 1.0
    assert result.data["max_abs_diff"] < 1e-5


def test_parity_fails_when_the_runtimes_disagree(tiny_onnx):
    _, path = tiny_onnx
    other = Tiny(seed=1).eval()  # other weights: another function than the exported one
    result = check_parity(other, path, parity_inputs(tiny_spec(), n_random=50, n_examples=0))
    assert not result.passed and result.blocks
    assert "disagree" in result.summary
    assert any("outside atol" in d for d in result.details)


def test_parity_reports_a_model_onnxruntime_cannot_load(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not an onnx file")
    result = check_parity(Tiny().eval(), path, torch.zeros(2, 6))
    assert not result.passed and "onnxruntime cannot load the model" in result.summary


def test_parity_inputs_add_the_specs_own_examples():
    def examples(n, seed):
        return np.full((n, 1, 32, 32), 0.5, dtype=np.float32)

    spec = ModelSpec(
        name="img", task="classification", build=Tiny, input=ImageInput(size=32), labels=("a",), examples=examples
    )
    inputs = parity_inputs(spec, n_random=4, n_examples=6)
    assert inputs.shape == (10, 1, 32, 32) and inputs.dtype == torch.float32
    assert bool((inputs[4:] == 0.5).all())
    # Without examples, random inputs only: the checks know no dataset.
    assert parity_inputs(tiny_spec(), n_random=3).shape[0] == 3


def test_parity_inputs_refuse_examples_of_the_wrong_shape():
    spec = ModelSpec(
        name="img",
        task="classification",
        build=Tiny,
        input=ImageInput(size=32),
        labels=("a",),
        examples=lambda n, seed: np.zeros((n, 1, 8, 8), np.float32),
    )
    with pytest.raises(ValueError, match="examples"):
        parity_inputs(spec, n_random=1, n_examples=2)


def test_digits_examples_are_drawn_sketches_in_both_polarities():
    from marcelle_torch.models.digits import CANVAS, drawn_examples

    drawn = drawn_examples(6, seed=0)
    assert drawn.shape == (6, 1, CANVAS, CANVAS) and drawn.dtype == np.float32
    assert set(np.unique(drawn).tolist()) <= {0.0, 1.0}  # binary sketches, both polarities
    assert drawn[0].mean() < 0.5 < drawn[1].mean()
