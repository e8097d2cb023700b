"""The model registry: built-in models by name, user models by folder or import path.

A user model is a model folder (``models/folder.py``: a manifest beside the weights, no code;
or an archive of one, local or at a URL), or any ``package.module:factory`` where
``factory()`` returns a ModelSpec; either is used without editing this project
(``marcelle-torch info ./shapes``, ``marcelle-torch info mypkg.models:my_model``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from ..errors import InvalidSpec, ModelNotFound
from .spec import ModelSpec

# name -> "module:factory", imported only when asked for (keeps start-up light).
BUILTINS: dict[str, str] = {
    "digits": "marcelle_torch.models.digits:spec",
    "digits-generator": "marcelle_torch.models.digits_generator:spec",
}


def builtin_names() -> list[str]:
    return sorted(BUILTINS)


def load_attribute(
    import_path: str,
    what: str = "model reference",
    expected: str = "a built-in name or 'package.module:factory' (or a model folder)",
) -> Callable:
    """The callable at ``package.module:name`` (a spec factory, a module class)."""
    module_name, sep, attr = import_path.partition(":")
    if not sep or not module_name or not attr:
        raise InvalidSpec(f"{what} {import_path!r}: expected {expected}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidSpec(f"{what} {import_path!r}: cannot import {module_name}: {exc}") from exc
    try:
        factory = getattr(module, attr)
    except AttributeError:
        raise InvalidSpec(f"{what} {import_path!r}: {module_name} has no {attr!r}") from None
    if not callable(factory):
        raise InvalidSpec(f"{what} {import_path!r}: {attr} is not callable")
    return factory


def get_spec(ref: str) -> ModelSpec:
    """A ModelSpec from a built-in name, a model folder (or archive, or ``URL#sha256=...``), or
    a ``package.module:factory`` import path."""
    if not isinstance(ref, str) or not ref:
        raise InvalidSpec("model reference must be a non-empty string")
    if ref not in BUILTINS:
        from .folder import is_folder_ref, spec_from_ref

        if is_folder_ref(ref):
            return spec_from_ref(ref)
    if ":" not in ref and ref not in BUILTINS:
        raise ModelNotFound(
            f"unknown model {ref!r}; built-in models: {', '.join(builtin_names())} "
            "(or a model folder, an archive of one, or package.module:factory)"
        )
    factory = load_attribute(BUILTINS.get(ref, ref))
    spec = factory()
    if not isinstance(spec, ModelSpec):
        raise InvalidSpec(f"model reference {ref!r}: factory returned {type(spec).__name__}, not ModelSpec")
    return spec
