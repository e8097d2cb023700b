"""`marcelle-torch worker`: claim and run the Marcelle backend's runs."""

from __future__ import annotations

import argparse
import os

from .options import RUN_KINDS, WorkerOptions

DEFAULT_MODELS = "digits,digits-generator"
DEFAULTS = WorkerOptions()


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "worker",
        help="claim runs in the Marcelle backend and run the models (Solution 3)",
        description="Connects to the Marcelle backend as a websocket client (it exposes no endpoint but "
        "its metrics), claims pending runs of its models, and streams progress and results "
        "into them. Credentials, when the backend has authentication on, come from "
        "MARCELLE_WORKER_EMAIL / MARCELLE_WORKER_PASSWORD (or --email/--password).",
    )
    p.add_argument("--backend", required=True, metavar="URL", help="the backend, e.g. http://127.0.0.1:3030")
    p.add_argument(
        "--models",
        default=DEFAULT_MODELS,
        help=f"comma-separated built-in names or package.module:factory (default {DEFAULT_MODELS})",
    )
    p.add_argument(
        "--name", default=None, help="a readable worker name (default: the host name); a random suffix makes it unique"
    )
    p.add_argument("--email", default=os.environ.get("MARCELLE_WORKER_EMAIL") or None)
    p.add_argument(
        "--password",
        default=os.environ.get("MARCELLE_WORKER_PASSWORD") or None,
        help="prefer the MARCELLE_WORKER_PASSWORD variable (a command line is visible to others)",
    )
    p.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics here (0 = off)")
    p.add_argument(
        "--metrics-host",
        default="0.0.0.0",
        help="address the metrics listen on (default %(default)s, for a container; "
        "`marcelle-torch up` passes its --host)",
    )
    p.add_argument(
        "--heartbeat",
        type=float,
        default=DEFAULTS.heartbeat,
        help=f"seconds between lease renewals (default {DEFAULTS.heartbeat:g})",
    )
    p.add_argument(
        "--lease-timeout",
        type=float,
        default=DEFAULTS.lease_timeout,
        help="seconds this worker's lease on a run lasts without a renewal: then the backend puts the run "
        f"back to pending for another worker (default {DEFAULTS.lease_timeout:g})",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=DEFAULTS.grace,
        help=f"on SIGTERM, seconds the current run may take before it is released (default {DEFAULTS.grace:g})",
    )
    p.add_argument(
        "--max-updates-per-second",
        type=float,
        default=DEFAULTS.max_updates_per_second,
        help="progress updates per run, at most; sent from a background thread, the newest only "
        f"(default {DEFAULTS.max_updates_per_second:g})",
    )
    p.add_argument(
        "--store",
        default=None,
        metavar="DIR",
        help="the model store: training runs write new model versions to DIR/<model>/<version>/ "
        "(default: the cache's versions/; share it between workers so a taken-back training resumes)",
    )
    p.add_argument(
        "--runs",
        choices=RUN_KINDS,
        default=DEFAULTS.runs,
        help="which runs to take: all (default), train (training and publish runs: a trainer) or "
        "infer (the others: a run worker beside a trainer)",
    )
    p.add_argument(
        "--max-training-seconds",
        type=float,
        default=DEFAULTS.max_training_s,
        help=f"a training run that takes longer fails with the reason (default {DEFAULTS.max_training_s:g})",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (default: torch's choice, at most the CPUs the worker may use, a "
        "container's CPU limit included)",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    import logging

    from ..errors import InvalidInput

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "DEBUG":  # the Socket.IO client logs every packet at INFO
        for noisy in ("socketio", "engineio"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.backend.startswith(("http://", "https://")):
        raise InvalidInput(f"--backend must be an http(s) URL, got {args.backend!r}")
    from ..models.folder import canonical_ref

    models = [canonical_ref(m.strip()) for m in args.models.split(",") if m.strip()]
    if not models:
        raise InvalidInput("--models is empty")
    if bool(args.email) != bool(args.password):
        raise InvalidInput("give both the worker's email and password (or neither)")
    for name in ("heartbeat", "lease_timeout", "max_updates_per_second", "max_training_seconds"):
        if getattr(args, name) <= 0:
            raise InvalidInput(f"--{name.replace('_', '-')} must be positive")
    if args.threads < 0:
        raise InvalidInput("--threads must be 0 (the default) or more")
    if args.lease_timeout <= 2 * args.heartbeat:
        raise InvalidInput("--lease-timeout must be more than twice --heartbeat, or live runs would be taken back")

    import torch

    from ..processes import usable_cpus

    # torch's default is one thread per core of the machine, even in a container limited to fewer.
    torch.set_num_threads(args.threads or min(torch.get_num_threads(), usable_cpus()))
    logging.getLogger(__name__).info("torch threads: %d", torch.get_num_threads())

    from .metrics import WorkerMetrics
    from .worker import Worker, default_name

    metrics = WorkerMetrics()
    if args.metrics_port:
        try:
            metrics.serve(args.metrics_port, args.metrics_host)
        except OSError as exc:
            raise InvalidInput(f"cannot serve metrics on port {args.metrics_port}: {exc.strerror}") from None
    options = WorkerOptions(
        heartbeat=args.heartbeat,
        lease_timeout=args.lease_timeout,
        grace=args.grace,
        max_updates_per_second=args.max_updates_per_second,
        store=args.store,
        runs=args.runs,
        max_training_s=args.max_training_seconds,
    )
    worker = Worker(
        args.backend,
        models,
        name=args.name or default_name(),
        email=args.email,
        password=args.password,
        options=options,
        metrics=metrics,
    )
    worker.load_models(progress=True)
    return worker.serve()
