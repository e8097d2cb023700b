"""Solution 1: the models over HTTP with Ray Serve (app, config, local runner, CLI).

Names are imported on first use (PEP 562): the CLI registers its command without yaml or Ray.
"""

from importlib import import_module

_WHERE = {"DEFAULT_CONFIG": "config", "load_serve_config": "config"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_WHERE[name]}", __name__), name)
