"""The embedded default: the whole stack on one machine, without Kubernetes.

`marcelle-torch up` (and `make demo`) trains what is not cached, starts Ray Serve with the
project's serve config, the Marcelle backend (NeDB files on disk), a run worker, the built
web app, and optionally a local Prometheus; waits until each answers; prints the URL; and
stops everything, in reverse order, on Ctrl-C or SIGTERM.

The backend is open by default (a laptop demo). With ``auth`` it runs with authentication on,
as the chart does: a JWT secret and a worker account generated at each start, and a first
user, the app's admin, from ``admin_email``/``admin_password`` (or admin@marcelle-torch.local
with a generated password, which only ``Stack.login`` holds: ``up`` prints it once).
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from ..models.store import ENV as STORE_ENV
from ..processes import ManagedProcess, StartupError, cli_argv, port_or_free, threads_per_process
from .supervise import Child, Supervisor
from .webapp import WebappNotBuilt, start_webapp
from .worker import WorkerProcess, start_worker

CLASSIFIER = "digits"
GENERATOR = "digits-generator"
# A supervised child (a backend, a worker, Serve): supervise() returns what start() made.
C = TypeVar("C", bound=Child)
ADMIN_EMAIL = "admin@marcelle-torch.local"  # the chart's default backend.auth.adminEmail too
WORKER_EMAIL = "worker@marcelle-torch.local"


@dataclass
class StackOptions:
    workdir: Path
    host: str = "127.0.0.1"
    webapp_port: int = 8080
    serve_port: int = 8000
    backend_port: int = 3030
    serve_metrics_port: int = 0
    worker_metrics_port: int = 0
    prometheus_port: int = 9090
    monitoring: bool = False
    workers: int = 1
    dist_dir: Path | None = None
    backend_dir: Path | None = None
    ready_timeout: float = 600.0
    auth: bool = False
    admin_email: str | None = None
    admin_password: str | None = None
    keep_finished_runs_s: int = 0
    # Models added to the built-ins (folders, archives, URL#sha256, package.module:factory): each
    # is served by Ray Serve, exported into the web app's ONNX bundles, and run by the workers.
    models: tuple[str, ...] = ()


BACKEND = "Marcelle backend"


def _serialized(say: Callable[[str], None], lock: threading.Lock) -> Callable[[str], None]:
    def said(msg: str) -> None:
        with lock:
            say(msg)

    return said


@dataclass
class Stack:
    """A running local stack: its URLs and how to stop it."""

    urls: dict[str, str] = field(default_factory=dict)
    logs: Path | None = None
    # With authentication on: the admin's {"email", "password", "generated"} ("generated": the
    # password was made here, so it is nowhere else to be read).
    login: dict | None = None
    supervisor: Supervisor = field(default_factory=Supervisor)
    _stops: list[tuple[str, Callable[[], None]]] = field(default_factory=list)

    def add(self, name: str, stop: Callable[[], None]) -> None:
        self._stops.append((name, stop))

    def supervise(self, name: str, start: Callable[[], C], first: C | None = None) -> C:
        """Start a child process (or take ``first``, launched already) and restart it (with
        backoff) whenever it dies; the first child."""
        entry = self.supervisor.add(name, start, first)

        def stop_child() -> None:
            if entry.child is not None:
                entry.child.stop()

        self.add(name, stop_child)
        # Supervisor.add started it; the entry keeps children as the Child protocol, this is a C.
        return cast(C, entry.child)

    def stop(self, say=lambda msg: None) -> None:
        """Stop every part at once (each waits on its own processes), then the backend, which
        the workers still need while they stop (to release the runs they hold)."""
        self.supervisor.stop()  # nothing is restarted while the stack stops
        stops, self._stops = self._stops[::-1], []
        lock = threading.Lock()  # one line at a time from the stopping threads
        say = _serialized(say, lock)
        last = [(name, stop) for name, stop in stops if name == BACKEND]
        for wave in ([(n, s) for n, s in stops if n != BACKEND], last):
            threads = [
                threading.Thread(target=self._stop_one, args=(name, stop, say), name=f"stop {name}")
                for name, stop in wave
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

    @staticmethod
    def _stop_one(name: str, stop: Callable[[], None], say) -> None:
        say(f"stopping {name}")
        try:
            stop()
        except Exception as exc:  # keep stopping the rest
            say(f"  {name}: {exc}")


def project_root(start: Path | None = None) -> Path:
    """The checkout that holds services/ (the web app build and the backend package)."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "services" / "frontend" / "package.json").is_file():
            return candidate
    here = Path(__file__).resolve()
    for candidate in here.parents:
        if (candidate / "services" / "frontend" / "package.json").is_file():
            return candidate
    raise WebappNotBuilt("cannot find the project checkout (services/frontend); run from it or pass --dist")


def webapp_origins(host: str, port: int) -> list[str]:
    """The web app's origin as a browser writes it (first: the one the stack prints); a loopback
    page may be opened as localhost or 127.0.0.1, and the backend must accept both."""
    first = f"http://{host}:{port}"
    if host in ("127.0.0.1", "localhost"):
        return [first, *(f"http://{name}:{port}" for name in ("localhost", "127.0.0.1") if name != host)]
    return [first]


def _auth_settings(options: StackOptions) -> tuple[dict, dict] | None:
    """(start_backend's auth arguments, the admin's login) when ``options.auth``, else None."""
    if not options.auth:
        return None
    password = options.admin_password or secrets.token_urlsafe(12)
    login = {"email": options.admin_email or ADMIN_EMAIL, "password": password, "generated": not options.admin_password}
    backend = {
        "auth": True,
        "secret": secrets.token_urlsafe(32),
        "worker_email": WORKER_EMAIL,
        "worker_password": secrets.token_urlsafe(24),
        "admin_email": login["email"],
        "admin_password": password,
    }
    return backend, login


def _user_models(refs: tuple[str, ...], workdir: Path, say: Callable[[str], None]) -> tuple[list[str], dict[str, Path]]:
    """The added models, checked and resolved (absolute paths), and their ONNX bundles, exported
    now under ``workdir/onnx`` (``{name: folder}``, served at ``/onnx/<name>/``)."""
    from ..errors import InvalidInput
    from ..models import get_spec
    from ..models.folder import canonical_ref
    from ..onnx.export import export_bundle

    resolved: list[str] = []
    bundles: dict[str, Path] = {}
    for ref in map(canonical_ref, refs):
        spec = get_spec(ref).require("serve")
        if spec.name in (CLASSIFIER, GENERATOR, *bundles):
            raise InvalidInput(f"--model {ref}: the name {spec.name!r} is taken (rename it in its manifest)")
        say(f"      {spec.name} v{spec.version}: {ref}; its ONNX bundle for the web app:")
        bundles[spec.name] = workdir / "onnx" / spec.name
        export_bundle(ref, out_dir=bundles[spec.name], on_step=lambda msg: say(f"        {msg}"))
        resolved.append(ref)
    return resolved, bundles


def start_stack(options: StackOptions, say: Callable[[str], None] = lambda msg: None) -> Stack:
    from ..models import get_spec, resolve_weights
    from .backend import start_backend

    root = None
    dist = options.dist_dir
    if dist is None:
        root = project_root()
        dist = root / "services" / "frontend" / "dist"
    if not (dist / "index.html").is_file():
        raise WebappNotBuilt(f"the web app is not built ({dist}); run `make webapp` first")
    if not (dist / "onnx" / CLASSIFIER / "model.onnx").is_file():
        raise WebappNotBuilt(f"the web app has no ONNX bundle ({dist}/onnx/{CLASSIFIER}); run `make webapp` first")

    workdir = options.workdir
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # The model store beside the backend's data (unless the environment names one): what the Teach
    # page trains is kept with its dataset, and Serve, the workers and the web app follow its
    # published versions (models/store.py). Each part is given it; this process's environment is
    # left as it is.
    store = Path(os.environ.get(STORE_ENV) or workdir / "store")
    store_env = {STORE_ENV: str(store)}
    host = options.host
    total = 6 if options.monitoring else 5

    say(f"[1/{total}] models: {CLASSIFIER}, {GENERATOR} (trained once, then cached)")
    for name in (CLASSIFIER, GENERATOR):
        resolve_weights(get_spec(name), train_if_missing=True, progress=True)
    extra, bundles = _user_models(options.models, workdir, say)

    webapp_port = port_or_free(options.webapp_port, host)
    serve_port = port_or_free(options.serve_port, host)
    serve_metrics_port = port_or_free(options.serve_metrics_port, host)
    worker_metrics_port = port_or_free(options.worker_metrics_port, host)
    origins = webapp_origins(host, webapp_port)

    stack = Stack(logs=logs, supervisor=Supervisor(say))
    auth = _auth_settings(options)
    backend_auth: dict[str, Any]
    backend_auth, stack.login = auth if auth else ({}, None)
    try:
        say(f"[2/{total}] Ray Serve on port {serve_port}, starting while the rest does (log: {logs / 'serve.log'})")
        serve_url = f"http://{host}:{serve_port}"

        def launch_serve() -> ManagedProcess:
            return ManagedProcess(
                "ray serve",
                cli_argv(
                    "serve",
                    "--host",
                    host,
                    "--port",
                    str(serve_port),
                    "--cors-origin",
                    origins[0],
                    "--metrics-port",
                    str(serve_metrics_port),
                    *(arg for ref in ([CLASSIFIER, *extra] if extra else []) for arg in ("--model", ref)),
                ),
                logs / "serve.log",
                env=store_env,
                die_with_parent=True,
            )

        def serve_ready(serve: ManagedProcess) -> ManagedProcess:
            try:
                serve.wait_http(f"{serve_url}/readyz", options.ready_timeout)
            except BaseException:
                serve.stop()
                raise
            return serve

        # Ray Serve takes the longest to come up (Ray, then the model replicas): launched first,
        # it starts while the other parts do, and is waited for last. A restart waits for it.
        serve = stack.supervise("Ray Serve", lambda: serve_ready(launch_serve()), first=launch_serve())
        stack.urls["serve"] = serve_url
        stack.urls["serve_metrics"] = f"http://{host}:{serve_metrics_port}/metrics"

        backend_port = port_or_free(options.backend_port, host)
        say(
            f"[3/{total}] Marcelle backend on port {backend_port} (data: {workdir / 'backend'}, "
            f"authentication {'on' if auth else 'off'})"
        )
        backend = stack.supervise(
            BACKEND,
            lambda: start_backend(
                workdir / "backend",
                port=backend_port,
                host=host,
                log_path=logs / "backend.log",
                **backend_auth,
                keep_finished_runs_s=options.keep_finished_runs_s,
                cors_origins=origins,
                package_dir=options.backend_dir,
            ),
        )
        stack.urls["backend"] = backend.url

        say(f"[4/{total}] run worker{'s' if options.workers > 1 else ''} ({options.workers})")
        worker_ports = []
        threads = threads_per_process(options.workers)
        workers = []
        for i in range(options.workers):
            port = worker_metrics_port if i == 0 else port_or_free(0, host)

            # Never waits for the connection: a restart must not hold up the supervisor (which
            # restarts one child at a time: the backend a worker waits for, say).
            def launch_worker(i=i, port=port) -> WorkerProcess:
                return start_worker(
                    backend.url,
                    name=f"local-{i + 1}",
                    models=[CLASSIFIER, GENERATOR, *extra],
                    metrics_port=port,
                    host=host,
                    threads=threads,
                    log_path=logs / f"worker-{i + 1}.log",
                    # Its account, with authentication on (start_worker passes it by environment).
                    email=backend_auth.get("worker_email"),
                    password=backend_auth.get("worker_password"),
                    env=store_env,
                    die_with_parent=True,
                    wait=False,
                )

            # All launched at once (each loads torch and its models), then waited for together.
            workers.append(stack.supervise(f"worker {i + 1}", launch_worker))
            worker_ports.append(port)
        for worker in workers:
            worker.wait_ready(options.ready_timeout)
        stack.urls["worker_metrics"] = workers[0].metrics_url

        say(f"[5/{total}] web app on port {webapp_port}")
        config = {
            "serveUrl": serve_url,
            "backendUrl": backend.url,
            "model": CLASSIFIER,
            "generatorModel": GENERATOR,
            "onnxBundle": f"onnx/{CLASSIFIER}/",
            "onnxBundles": [f"onnx/{name}/" for name in bundles],
        }
        url, stop_webapp = start_webapp(dist, config, host=host, port=webapp_port, bundles=bundles, store=store)
        stack.add("web app", stop_webapp)
        stack.urls["webapp"] = url
        for name in bundles:  # the added models: where each path reaches them (runs: model NAME)
            stack.urls[f"{name} (Serve)"] = f"{serve_url}/v1/models/{name}:predict"
            stack.urls[f"{name} (ONNX)"] = f"{url.rstrip('/')}/onnx/{name}/model.json"

        if options.monitoring:
            from .monitoring import prometheus_available, start_prometheus

            if not prometheus_available():
                say(
                    f"[6/{total}] monitoring skipped: Debian's prometheus is not installed (apt-get install prometheus)"
                )
            else:
                say(f"[6/{total}] Prometheus on port {options.prometheus_port}")
                targets = {
                    "ray": [f"{host}:{serve_metrics_port}"],
                    "marcelle-torch-worker": [f"{host}:{p}" for p in worker_ports],
                }
                prom = start_prometheus(
                    targets,
                    workdir / "prometheus",
                    host=host,
                    port=port_or_free(options.prometheus_port, host),
                    health={"backend": backend.url, "webapp": url},
                    registry=stack.supervisor.registry,
                )
                stack.add("Prometheus", prom.stop)
                stack.urls["prometheus"] = prom.url

        say("waiting for Ray Serve to be ready")
        serve_ready(serve)
    except BaseException:
        stack.stop(say)
        raise
    stack.supervisor.watch()
    return stack


__all__ = ["Stack", "StackOptions", "StartupError", "WebappNotBuilt", "start_stack", "project_root"]
