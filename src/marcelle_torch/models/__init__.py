"""One model definition (ModelSpec), the registry, and the built-in models."""

from .inputs import decode_instances, postprocess
from .registry import builtin_names, get_spec
from .spec import ImageInput, ModelSpec, TensorInput, Weights
from .weights import cache_dir, load_model, resolve_weights

__all__ = [
    "ImageInput", "ModelSpec", "TensorInput", "Weights", "builtin_names", "cache_dir", "decode_instances",
    "get_spec", "load_model", "postprocess", "resolve_weights",
]
