"""ModelSpec validation and the registry's import-path errors."""

from __future__ import annotations

import sys
import textwrap

import pytest
from torch import nn

from marcelle_torch.errors import InvalidSpec, ModelNotFound
from marcelle_torch.models import ImageInput, ModelSpec, TensorInput, Weights, builtin_names, get_spec

SHA = "0" * 64


def make(**overrides):
    fields = dict(
        name="toy", task="classification", build=lambda: nn.Linear(2, 2), input=TensorInput((2,)), labels=("a", "b")
    )
    return ModelSpec(**(fields | overrides))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"name": "Bad Name"}, "use lowercase letters"),
        ({"name": ""}, "use lowercase letters"),
        ({"task": "regression"}, "task must be one of"),
        ({"build": "not callable"}, "build must be callable"),
        ({"input": (1, 2)}, "input must be ImageInput or TensorInput"),
        ({"labels": ()}, "needs labels"),
        ({"labels": ("a", "a")}, "labels must be unique"),
        ({"weights": Weights(path="/no/such/weights.pt")}, "weights path not found"),
        ({"task": "generation"}, "a generation model needs run"),
        ({"task": "generation", "run": "not callable"}, "a generation model needs run"),
        ({"run": lambda *a: {}}, "run is for generation models"),
    ],
)
def test_spec_validation_errors(overrides, message):
    with pytest.raises(InvalidSpec, match=message):
        make(**overrides)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"path": "a.pt", "url": "https://x/a.pt", "sha256": SHA}, "give one of path, url, train"),
        ({"url": "ftp://x/a.pt", "sha256": SHA}, "must be http"),
        ({"url": "https://x/a.pt"}, "needs sha256"),
        ({"url": "https://x/a.pt", "sha256": "ABC"}, "needs sha256"),
    ],
)
def test_weights_validation_errors(kwargs, message):
    with pytest.raises(InvalidSpec, match=message):
        Weights(**kwargs)


@pytest.mark.parametrize("target, where", [("serve", "Ray Serve"), ("onnx", "an ONNX export")])
def test_each_target_refuses_what_it_cannot_run_in_one_line(target, where):
    generator = get_spec("digits-generator")
    with pytest.raises(InvalidSpec) as refused:
        generator.require(target)
    assert str(refused.value) == (
        f"model digits-generator is a generation model: {where} takes classification "
        "models only (one forward pass per request); run it through the backend worker"
    )
    assert generator.require("worker") is generator
    assert get_spec("digits").require(target).name == "digits"


def test_metadata_is_json_ready():
    spec = make(input=ImageInput(size=28), labels=("x", "y"))
    meta = spec.metadata()
    assert meta["input"]["shape"] == [1, 28, 28]
    assert meta["labels"] == ["x", "y"]


def test_builtins_are_listed_and_unknown_names_are_404():
    assert "digits" in builtin_names()
    with pytest.raises(ModelNotFound) as info:
        get_spec("no-such-model")
    assert info.value.status == 404
    assert "digits" in info.value.message


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "user_models_for_test.py").write_text(
        textwrap.dedent("""
        from torch import nn
        from marcelle_torch.models import ModelSpec, TensorInput

        def good():
            return ModelSpec(name="user-toy", task="classification", build=lambda: nn.Linear(3, 2),
                             input=TensorInput((3,)), labels=("no", "yes"))

        def not_a_spec():
            return {"name": "x"}

        NOT_CALLABLE = 3
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_models_for_test"
    sys.modules.pop("user_models_for_test", None)


def test_user_model_by_import_path(user_module):
    spec = get_spec(f"{user_module}:good")
    assert spec.name == "user-toy"


@pytest.mark.parametrize(
    "ref, message",
    [
        ("no_such_module_xyz:spec", "cannot import no_such_module_xyz"),
        ("{mod}:missing", "has no 'missing'"),
        ("{mod}:NOT_CALLABLE", "is not callable"),
        ("{mod}:not_a_spec", "returned dict, not ModelSpec"),
        (":spec", "expected a built-in name or 'package.module:factory'"),
        ("{mod}:", "expected a built-in name or 'package.module:factory'"),
    ],
)
def test_import_path_errors(user_module, ref, message):
    with pytest.raises(InvalidSpec, match=message):
        get_spec(ref.format(mod=user_module))
