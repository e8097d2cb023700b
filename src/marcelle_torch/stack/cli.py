"""`marcelle-torch up`: the whole stack on one machine (what `make demo` runs)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "up",
        help="run the whole stack locally (Ray Serve, backend, worker, web app) until Ctrl-C",
        description="Train what is not cached, start Ray Serve, the Marcelle backend, a run worker and the "
        "built web app, print the URL, and stop everything on Ctrl-C.",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=8080, help="web app port; 0 = any free (default: %(default)s)")
    p.add_argument("--serve-port", type=int, default=8000, help="Ray Serve HTTP port (default: %(default)s)")
    p.add_argument("--backend-port", type=int, default=3030, help="Marcelle backend port (default: %(default)s)")
    p.add_argument("--workers", type=int, default=1, help="number of run workers (default: %(default)s)")
    p.add_argument(
        "--auth",
        action="store_true",
        help="turn the backend's authentication on: the app asks to log in; the first user (admin) is "
        "MARCELLE_ADMIN_EMAIL / MARCELLE_ADMIN_PASSWORD, else admin@marcelle-torch.local with a "
        "generated password printed once",
    )
    p.add_argument(
        "--monitoring",
        action="store_true",
        help="also start a local Prometheus (Debian's prometheus) scraping the stack",
    )
    p.add_argument(
        "--keep-runs",
        type=int,
        default=0,
        metavar="SECONDS",
        help="remove finished runs this long after their last change; 0 keeps every run (default: %(default)s)",
    )
    p.add_argument("--prometheus-port", type=int, default=9090, help="Prometheus port (default: %(default)s)")
    p.add_argument(
        "--workdir", type=Path, default=Path("var/stack"), help="logs and backend data (default: %(default)s)"
    )
    p.add_argument("--dist", type=Path, default=None, help="built web app (default: services/frontend/dist)")
    p.add_argument(
        "--model",
        action="append",
        dest="models",
        default=[],
        metavar="MODEL",
        help="add your model beside the built-ins (repeatable): a model folder, an archive, URL#sha256=<hex> or "
        "package.module:factory; served by Ray Serve, exported to the web app's ONNX bundles, run by the workers",
    )
    p.set_defaults(func=cmd_up)


def cmd_up(args) -> int:
    from ..errors import InvalidInput
    from ..serving.extra import require_ray

    require_ray("up")
    from .up import StackOptions, start_stack

    if args.workers < 1:
        raise InvalidInput("--workers must be at least 1")
    if args.keep_runs < 0:
        raise InvalidInput("--keep-runs must be 0 (keep every run) or a number of seconds")
    options = StackOptions(
        workdir=args.workdir.resolve(),
        host=args.host,
        webapp_port=args.port,
        serve_port=args.serve_port,
        backend_port=args.backend_port,
        prometheus_port=args.prometheus_port,
        monitoring=args.monitoring,
        workers=args.workers,
        dist_dir=args.dist,
        auth=args.auth,
        admin_email=os.environ.get("MARCELLE_ADMIN_EMAIL") or None,
        admin_password=os.environ.get("MARCELLE_ADMIN_PASSWORD") or None,
        keep_finished_runs_s=args.keep_runs,
        models=tuple(args.models),
    )
    stop = threading.Event()
    # SIGTERM stops as cleanly as Ctrl-C (e.g. from a process manager).
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stack = start_stack(options, say=lambda msg: print(msg, flush=True))
    try:
        width = max(len(k) for k in stack.urls)
        print("\nmarcelle-torch is up:", flush=True)
        for name, url in stack.urls.items():
            print(f"  {name:{width}s}  {url}")
        print(f"  {'logs':{width}s}  {stack.logs}")
        if stack.login:
            password = (
                stack.login["password"] + "   (generated at this start; shown only here)"
                if stack.login["generated"]
                else "(MARCELLE_ADMIN_PASSWORD)"
            )
            print(f"\nAuthentication is on. Log in to the web app as {stack.login['email']}", flush=True)
            print(f"  password: {password}", flush=True)
        print(f"\nOpen {stack.urls['webapp']} ; Ctrl-C to stop.", flush=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        print("\nshutting down", flush=True)
        stack.stop(say=lambda msg: print(f"  {msg}", flush=True))
        print("stopped", flush=True)
    return 0
