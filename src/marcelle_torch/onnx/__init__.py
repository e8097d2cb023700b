"""Solution 2: the model in the browser. Export a ModelSpec to ONNX, check that
onnxruntime-web runs it and that it computes what PyTorch computes, write a web bundle.

Names are imported on first use (PEP 562): the CLI registers its command without torch.
"""

from importlib import import_module

_WHERE = {
    "CheckResult": "checks",
    "check_parity": "checks",
    "check_size": "checks",
    "check_web_compat": "checks",
    "parity_inputs": "checks",
    "BundleResult": "export",
    "ExportFailed": "export",
    "ExportRefused": "export",
    "export_bundle": "export",
    "export_onnx": "export",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_WHERE[name]}", __name__), name)
