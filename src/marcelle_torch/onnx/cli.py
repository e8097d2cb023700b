"""Command: export-onnx (Solution 2: the model in the browser with onnxruntime-web)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    from .settings import DEFAULT_MAX_MB, DEFAULT_OPSET, EXPORTERS

    p = subparsers.add_parser(
        "export-onnx",
        help="export a model to ONNX, check it runs in onnxruntime-web, write a web bundle",
        description="Export MODEL to ONNX, check web compatibility (onnxruntime-web WASM operators), numerical "
        "parity with PyTorch and size, then write OUT/model.onnx and OUT/model.json. A failed check "
        "publishes nothing.",
    )
    p.add_argument("model", help="built-in name or package.module:factory")
    p.add_argument(
        "--out", type=Path, default=None, help="bundle directory (default: services/frontend/public/onnx/<model>/)"
    )
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument(
        "--max-mb",
        type=float,
        default=DEFAULT_MAX_MB,
        help=f"warn above this model size in MB (default {DEFAULT_MAX_MB:g})",
    )
    p.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the web-compatibility and parity checks (default on)",
    )
    p.add_argument(
        "--exporter",
        choices=EXPORTERS,
        default="dynamo",
        help="torch's ONNX exporter (default dynamo; torchscript for models torch.export cannot trace)",
    )
    p.set_defaults(func=cmd_export_onnx)


def cmd_export_onnx(args) -> int:
    from .export import export_bundle

    def show_check(result):
        for line in result.lines():
            print(f"      {line}", flush=True)

    result = export_bundle(
        args.model,
        out_dir=args.out,
        opset=args.opset,
        max_mb=args.max_mb,
        check=args.check,
        exporter=args.exporter,
        on_step=lambda msg: print(msg, flush=True),
        on_check=show_check,
    )
    meta = result.metadata["onnx"]
    warned = [r.name for r in result.checks if not r.passed]
    state = ("checks passed" if args.check else "checks skipped") + (
        f", warnings: {', '.join(warned)}" if warned else ""
    )
    print(
        f"{result.name}: wrote {result.out_dir}/ (model.onnx {meta['bytes'] / 1e6:.2f} MB, opset {meta['opset']}, "
        f"sha256 {meta['sha256'][:12]}; {state})"
    )
    return 0
