"""The [serve] extra: Ray Serve is optional so that the run worker's image can do without Ray."""

from __future__ import annotations

import importlib.util

from ..errors import MarcelleTorchError

INSTALL_HINT = "pip install 'marcelle-torch[serve]'"


class MissingExtra(MarcelleTorchError):
    code = "missing_extra"


def require_ray(command: str) -> None:
    """One clear error (no traceback) when a command that needs Ray Serve runs without it."""
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.serve") is None:
        raise MissingExtra(f"`marcelle-torch {command}` needs Ray Serve, which is not installed: {INSTALL_HINT}")
