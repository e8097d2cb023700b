"""Solution 1: the models over HTTP with Ray Serve (app, config, local runner, CLI)."""

from .config import DEFAULT_CONFIG, load_serve_config

__all__ = ["DEFAULT_CONFIG", "load_serve_config"]
