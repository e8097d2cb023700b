"""Solution 2: the model in the browser. Export a ModelSpec to ONNX, check that
onnxruntime-web runs it and that it computes what PyTorch computes, write a web bundle."""

from .checks import CheckResult, check_parity, check_size, check_web_compat, parity_inputs
from .export import BundleResult, ExportFailed, ExportRefused, export_bundle, export_onnx

__all__ = [
    "BundleResult", "CheckResult", "ExportFailed", "ExportRefused", "check_parity", "check_size",
    "check_web_compat", "export_bundle", "export_onnx", "parity_inputs",
]
