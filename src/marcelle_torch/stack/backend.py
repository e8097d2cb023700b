"""The Marcelle backend (``services/backend``: @marcellejs/backend from npm, started by its
``start.js``) as a local child process: NeDB files in a data directory, authentication
on or off, waited for until it answers, stopped and restarted on the same port and data."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..hosts import local_host_names
from ..processes import ManagedProcess, StartupError, port_or_free

SETUP_HINT = "run `npm ci` in services/backend (or `make setup`)"


def default_package_dir() -> Path:
    """``services/backend`` of the checkout this package runs from (or below the cwd)."""
    for base in (Path(__file__).resolve(), Path.cwd().resolve()):
        for candidate in (base, *base.parents):
            if (candidate / "services" / "backend" / "start.js").is_file():
                return candidate / "services" / "backend"
    raise StartupError("cannot find services/backend/start.js: run from the project checkout or pass package_dir")


@dataclass
class BackendHandle:
    """A running backend: ``url``, ``stop()``, ``restart()`` (same port, same data)."""

    url: str
    port: int
    data_dir: Path
    log_path: Path
    argv: list[str]
    env: dict
    cwd: Path
    ready_timeout: float
    process: ManagedProcess | None = field(default=None, repr=False)

    def _start(self) -> None:
        self.process = ManagedProcess("Marcelle backend", self.argv, self.log_path, env=self.env, cwd=self.cwd)
        # /info answers without authentication once the services are up.
        self.process.wait_http(f"{self.url}/info", self.ready_timeout)

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=10)

    def kill(self) -> None:
        """Stop without a chance to clean up (as a crash would)."""
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.stop(timeout=5)

    def restart(self, down_for: float = 0.0) -> None:
        """Stop, stay away ``down_for`` seconds (an outage), start again on the same data."""
        self.stop()
        time.sleep(down_for)
        self._start()


def start_backend(
    data_dir: str | Path,
    port: int = 0,
    host: str = "127.0.0.1",
    auth: bool = False,
    secret: str | None = None,
    worker_email: str | None = None,
    worker_password: str | None = None,
    admin_email: str | None = None,
    admin_password: str | None = None,
    allow_signup: bool = False,
    keep_finished_runs_s: int = 0,
    pending_timeout_s: float | None = None,
    cors_origins: Sequence[str] | None = None,
    allowed_hosts: Sequence[str] | None = None,
    mongodb_url: str | None = None,
    log_path: str | Path | None = None,
    package_dir: str | Path | None = None,
    ready_timeout: float = 90.0,
    extra_env: dict | None = None,
) -> BackendHandle:
    """Start ``node start.js`` in ``package_dir`` and wait until it answers.

    ``data_dir`` holds the NeDB files (unless ``mongodb_url`` is given); ``port`` 0 picks a
    free one. With ``auth`` a ``secret`` (16+ characters) is required, as in a deployment;
    ``worker_email``/``worker_password`` create the worker account, ``admin_email``/
    ``admin_password`` the app's admin account (start.js creates or resets both at each start);
    ``allow_signup`` lets clients create their own (role ``editor``) accounts;
    ``keep_finished_runs_s`` > 0 removes finished runs that much after their last change;
    ``pending_timeout_s`` fails a run left pending that long (0: never; None: the backend's
    default, services/backend/backend/config/default.yaml);
    ``cors_origins`` are the web pages that may call it (the web app's origin), and
    ``allowed_hosts`` the names its Host header may carry (by default the loopback names and
    ``host``); anything else is refused (403).
    """
    node = shutil.which("node")
    if node is None:
        raise StartupError("`node` is not on PATH: install Node.js 18+ to run the Marcelle backend")
    package_dir = Path(package_dir) if package_dir else default_package_dir()
    if not (package_dir / "node_modules" / "@marcellejs" / "backend").is_dir():
        raise StartupError(f"@marcellejs/backend is not installed in {package_dir}: {SETUP_HINT}")
    if auth and not secret:
        raise StartupError("authentication on needs a JWT secret (secret=...)")
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port_or_free(port, host)
    env = {
        "NODE_ENV": "production",
        "MARCELLE_BACKEND_HOST": host,
        "PORT": str(port),
        "MARCELLE_BACKEND_DATA": str(data_dir),
        "MARCELLE_BACKEND_UPLOADS": str(data_dir / "uploads"),
        "MARCELLE_BACKEND_DATABASE": "mongodb" if mongodb_url else "nedb",
        "MARCELLE_BACKEND_AUTH": "true" if auth else "false",
        "MARCELLE_BACKEND_ALLOW_SIGNUP": "true" if allow_signup else "false",
        "MARCELLE_RUNS_KEEP_FINISHED_S": str(keep_finished_runs_s),
        **({"MARCELLE_RUNS_PENDING_TIMEOUT_S": f"{pending_timeout_s:g}"} if pending_timeout_s is not None else {}),
        "MARCELLE_BACKEND_ALLOWED_HOSTS": json.dumps(list(allowed_hosts or local_host_names(host))),
        **({"MARCELLE_BACKEND_CORS_ORIGINS": json.dumps(list(cors_origins))} if cors_origins is not None else {}),
        **({"MONGODB_URL": mongodb_url} if mongodb_url else {}),
        **({"MARCELLE_BACKEND_SECRET": secret} if secret else {}),
        **(
            {"MARCELLE_WORKER_EMAIL": worker_email, "MARCELLE_WORKER_PASSWORD": worker_password} if worker_email else {}
        ),
        **({"MARCELLE_ADMIN_EMAIL": admin_email, "MARCELLE_ADMIN_PASSWORD": admin_password} if admin_email else {}),
        **(extra_env or {}),
    }
    handle = BackendHandle(
        url=f"http://{host}:{port}",
        port=port,
        data_dir=data_dir,
        log_path=Path(log_path) if log_path else data_dir / "backend.log",
        argv=[node, str(package_dir / "start.js")],
        env=env,
        cwd=package_dir,
        ready_timeout=ready_timeout,
    )
    handle._start()
    return handle
