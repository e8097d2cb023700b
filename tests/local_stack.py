"""The local stack (``marcelle-torch up``'s start_stack) as the tests start it: every port picked free."""

from __future__ import annotations

from pathlib import Path


def stack_options(workdir: Path, **options):
    """StackOptions for ``workdir`` with every port 0 (free), plus ``options``."""
    from marcelle_torch.stack.up import StackOptions

    ports = (
        "webapp_port",
        "serve_port",
        "backend_port",
        "serve_metrics_port",
        "worker_metrics_port",
        "prometheus_port",
    )
    return StackOptions(workdir=workdir, **dict.fromkeys(ports, 0), **options)
