"""`marcelle-torch`: the command line.

Each part of the project registers its own commands (``register(subparsers)`` in its
``cli`` module), so this file only assembles them and turns errors into one clear line.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import MarcelleTorchError, cli_error_line

# One module per part; each has register(subparsers). Heavy imports stay inside commands.
COMMAND_MODULES = (
    "marcelle_torch.models.cli",
    "marcelle_torch.serving.cli",
    "marcelle_torch.stack.cli",
    "marcelle_torch.onnx.cli",
    "marcelle_torch.worker.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="marcelle-torch",
        description="PyTorch models in Marcelle web apps: Ray Serve, ONNX in the browser, "
        "and runs through the Marcelle backend.",
    )
    parser.add_argument("--version", action="version", version=f"marcelle-torch {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MarcelleTorchError as exc:
        print(cli_error_line(args.command, exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"marcelle-torch {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
