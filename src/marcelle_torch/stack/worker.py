"""The run worker (``marcelle-torch worker``) as a local child process, started in one place
for the stack, the tests and the benchmarks.

A worker is ready when it can take runs: connected to the backend and, with authentication
on, logged in. Its process being alive, or its metrics port answering, says neither (the
worker serves its metrics before it loads its models, and goes on retrying a backend that is
not there). So readiness is read from the worker's own gauge, ``marcelle_torch_worker_up``,
which it sets to 1 once connected (and logged in) and back to 0 when the link drops: the
metrics are always served, on ``metrics_port`` or a free one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import httpx

from ..processes import ManagedProcess, cli_argv, free_port
from ..worker.metrics import PREFIX

UP_GAUGE = f"{PREFIX}_up"
READY_TIMEOUT_S = 300.0  # loading torch and the models on a busy machine, then connecting


class WorkerProcess(ManagedProcess):
    """A running ``marcelle-torch worker``: its log, ``metrics_url``, ``up()``, ``wait_ready()``,
    ``stop()`` (SIGTERM: the worker finishes or releases its run, then exits)."""

    def __init__(
        self,
        argv: list[str],
        log_path: Path,
        *,
        worker_name: str | None,
        backend_url: str,
        metrics_url: str,
        env: dict | None = None,
        cwd: str | Path | None = None,
        die_with_parent: bool = False,
    ):
        label = f"worker {worker_name}" if worker_name else "worker"
        super().__init__(label, argv, log_path, env=env, cwd=cwd, die_with_parent=die_with_parent)
        self.worker_name = worker_name
        self.backend_url = backend_url
        self.metrics_url = metrics_url

    def up(self) -> bool:
        """Whether the worker says it is connected (and logged in) now; False while its metrics
        do not answer."""
        try:
            text = httpx.get(self.metrics_url, timeout=2.0).text
        except httpx.HTTPError:
            return False
        return any(
            line.split()[0] == UP_GAUGE and float(line.split()[1]) == 1.0
            for line in text.splitlines()
            if line.startswith(UP_GAUGE)
        )

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Wait until ``up()``; a StartupError with the log's last lines if the worker exits
        first or ``timeout`` passes (it is left running then: the caller stops it)."""
        self.wait_until(self.up, timeout, f"connect to {self.backend_url}", interval=0.25)


def start_worker(
    backend_url: str,
    *,
    log_path: str | Path,
    name: str | None = None,
    models: Sequence[str] | None = None,
    metrics_port: int = 0,
    host: str = "127.0.0.1",
    email: str | None = None,
    password: str | None = None,
    threads: int | None = None,
    args: Sequence[str] = (),
    env: dict | None = None,
    command: Sequence[str] | None = None,
    cwd: str | Path | None = None,
    die_with_parent: bool = False,
    wait: bool = True,
    ready_timeout: float = READY_TIMEOUT_S,
) -> WorkerProcess:
    """Start ``marcelle-torch worker`` on ``backend_url`` and, with ``wait``, return once it is
    connected (its ``up`` gauge reads 1); if it exits first or ``ready_timeout`` passes, it is
    stopped and a StartupError names its log's last lines.

    ``name``: its readable name (``--name``); ``models``: built-in names, folders or
    ``package.module:factory`` (default: the worker's); ``metrics_port`` (0: a free one) and
    ``host``: where its metrics listen (``metrics_url``); ``email``/``password``: its account,
    passed in the environment (never on the command line), as are the variables of ``env``;
    ``threads``: torch threads; ``args``: any other worker flags (``--heartbeat 1`` ...);
    ``command``: the ``marcelle-torch`` to run (default: this Python's); ``die_with_parent``:
    SIGTERMed if this process dies. With ``wait=False`` the caller waits (``wait_ready()``)
    or watches its log. What is not given keeps the worker's own default (worker/cli.py,
    worker/options.py).
    """
    # A port given is the worker's to take (a restart takes its predecessor's again, which a
    # check here could find in TIME_WAIT); one it cannot take, it names in its log and exits.
    port = metrics_port or free_port(host)
    # One of the two alone: the worker refuses to start, and says so in its log.
    credentials = (
        {"MARCELLE_WORKER_EMAIL": email or "", "MARCELLE_WORKER_PASSWORD": password or ""} if email or password else {}
    )
    worker = WorkerProcess(
        [
            *(command or cli_argv()),
            "worker",
            "--backend",
            backend_url,
            *(["--name", name] if name else []),
            *(["--models", ",".join(models)] if models else []),
            "--metrics-port",
            str(port),
            "--metrics-host",
            host,
            *(["--threads", str(threads)] if threads else []),
            *args,
        ],
        Path(log_path),
        worker_name=name,
        backend_url=backend_url,
        metrics_url=f"http://{host}:{port}/metrics",
        env={**(env or {}), **credentials},
        cwd=cwd,
        die_with_parent=die_with_parent,
    )
    if wait:
        try:
            worker.wait_ready(ready_timeout)
        except BaseException:
            worker.stop(timeout=10)
            raise
    return worker
