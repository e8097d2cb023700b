"""One model definition (ModelSpec), the registry, and the built-in models.

Names are imported on first use (PEP 562), so that importing a submodule, e.g. the CLI's,
does not load torch.
"""

from importlib import import_module
from typing import Any

_WHERE = {
    "decode_instances": "inputs",
    "postprocess": "inputs",
    "builtin_names": "registry",
    "get_spec": "registry",
    "ImageInput": "spec",
    "ModelSpec": "spec",
    "TensorInput": "spec",
    "Weights": "spec",
    "cache_dir": "weights",
    "load_model": "weights",
    "resolve_weights": "weights",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_WHERE[name]}", __name__), name)
