"""`marcelle-torch serve`: the Ray Serve application on a private local Ray, in the foreground."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def register(subparsers) -> None:
    from .modes import DEFAULT_SERVE_MODE, SERVE_MODES

    p = subparsers.add_parser(
        "serve",
        help="serve models over HTTP with Ray Serve (local Ray, foreground, Ctrl-C stops)",
        description="Train missing weights, start a private local Ray, deploy the serve config and "
        "serve until SIGINT/SIGTERM.",
    )
    p.add_argument(
        "--config", type=Path, default=None, help="serveConfigV2 YAML (default: the packaged serving/serve_config.yaml)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000; 0 picks a free one)")
    p.add_argument(
        "--cors-origin",
        action="append",
        dest="cors_origins",
        metavar="ORIGIN",
        help="allow this browser origin (repeatable; replaces the config's list; '*' for any)",
    )
    p.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="MODEL",
        help="serve this model (repeatable; replaces the config's list)",
    )
    p.add_argument(
        "--num-gpus",
        type=float,
        default=None,
        help="GPUs per model replica (and for the local Ray); default: the config's (0)",
    )
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs the local Ray may use (default: all)")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="port where Ray exports Prometheus metrics (default: a free port)",
    )
    p.add_argument(
        "--serve-mode",
        choices=sorted(SERVE_MODES),
        default=DEFAULT_SERVE_MODE,
        help=f"how HTTP reaches the app (default {DEFAULT_SERVE_MODE}, the benchmarked one; others for diagnosis)",
    )
    p.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for readiness")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from ..errors import InvalidInput, MarcelleTorchError, cli_error_line
    from .extra import require_ray
    from .local import LocalServe, free_port, use_ray_host_env, wait_for_signal

    use_ray_host_env(args.host)  # before anything imports Ray (finding ray.serve below does)
    require_ray("serve")
    from ..models import get_spec, resolve_weights
    from .config import load_serve_config, our_applications

    if not 0 <= args.port < 65536:
        raise InvalidInput(f"--port must be 0..65535, got {args.port}")
    if args.port == 0:
        args.port = free_port(args.host)
    config = load_serve_config(
        args.config,
        host=args.host,
        port=args.port,
        cors_origins=args.cors_origins,
        num_gpus=args.num_gpus,
        models=args.models,
    )
    # Train (or download) first, with progress here, rather than silently inside a replica.
    for app in our_applications(config):
        for ref in app["args"]["models"]:
            spec = get_spec(ref).require("serve")
            path = resolve_weights(spec, train_if_missing=True, progress=True)
            print(f"model {spec.name}: weights {path or 'none (built as initialised)'}", flush=True)

    metrics_port = args.metrics_port or free_port()
    server = LocalServe(
        config,
        mode=args.serve_mode,
        metrics_port=metrics_port,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        log=lambda m: print(m, flush=True),
    )
    status = 0
    try:
        url = server.start(ready_timeout_s=args.ready_timeout)
        print(f"Ray metrics on http://127.0.0.1:{metrics_port}/metrics", flush=True)
        print(f"serving on {url}", flush=True)
        signum = wait_for_signal()
        print(f"signal {signum}: shutting down", flush=True)
    except KeyboardInterrupt:
        print("interrupted: shutting down", flush=True)
    except MarcelleTorchError as exc:
        # Reported here, not by cli.main: the exit below does not return there.
        print(cli_error_line("serve", exc), file=sys.stderr, flush=True)
        status = 2
    finally:
        server.stop()
    print("stopped", flush=True)
    # Ray's driver (its C++ core worker) takes ~20 s to wind down at interpreter exit once its
    # cluster is gone (measured with ray 2.60.0 after a SIGTERM to this process alone), or
    # crashes (SIGSEGV, seen after a failed start); the cluster was ended by server.stop(),
    # so nothing is left to wind down: exit now.
    sys.stderr.flush()
    os._exit(status)
