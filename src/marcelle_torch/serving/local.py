"""Running the Serve application on a private local Ray cluster (``marcelle-torch serve``).

The cluster gets its own temp dir (so ``ray stop`` elsewhere, or another local cluster,
never meets it) and no dashboard; Ray picks free ports for its own processes. Serve's
ingress options are environment variables that Ray reads when its processes start, so
they are set before ``ray.init`` (Kubernetes: the container env of the Ray pods).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from ..errors import MarcelleTorchError
from ..hosts import is_loopback
from ..processes import free_port
from .config import our_applications
from .haproxy_edge import DEFAULT_REQUEST_TIMEOUT_S, REQUEST_TIMEOUT_ENV, launcher_script
from .modes import DEFAULT_SERVE_MODE, SERVE_MODES

# On stop, how long the processes left under the Ray temp dir get between SIGTERM and SIGKILL.
STOP_TIMEOUT_S = 1.0


class ServeStartError(MarcelleTorchError):
    status = 500
    code = "serve_start"


def ray_host_env(host: str) -> dict[str, str]:
    """Environment that keeps Ray's own servers on loopback when Serve is asked to listen there.

    ray 2.60.0 _private/ray_constants.py: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 turns multi-node
    clustering off (ENABLE_RAY_CLUSTER), so _private/services.py get_node_ip_address() answers the
    loopback address and Ray's processes listen there (GCS, raylet, object manager, core workers,
    dashboard and runtime-env agents, metrics export) instead of on every interface. This cluster
    is one private node, so nothing is lost. Ray reads it when ``ray`` is imported: set it before
    (``use_ray_host_env``). For any other host Ray keeps its defaults (docs/security.md).
    """
    return {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"} if is_loopback(host) else {}


def use_ray_host_env(host: str) -> None:
    """Put ``ray_host_env(host)`` into this process's environment, before Ray is imported."""
    for key, value in ray_host_env(host).items():
        os.environ.setdefault(key, value)


def mode_env(mode: str, workdir: str, host: str = "127.0.0.1") -> dict[str, str]:
    """Environment for ``mode`` serving on ``host``.

    HAProxy's files and ports are made private to this run, and it runs through the project's
    launcher (haproxy_edge.py): its stats page and Prometheus frontend bind ``host`` like Serve's
    HTTP frontend, its admin socket is its owner's only, and a request must arrive whole within
    MARCELLE_TORCH_HTTP_REQUEST_TIMEOUT_S seconds. On a loopback ``host``, Ray's own servers
    listen on loopback too.
    """
    if mode not in SERVE_MODES:
        raise ServeStartError(f"unknown serve mode {mode!r}; choose from {', '.join(SERVE_MODES)}")
    env = dict(SERVE_MODES[mode]) | ray_host_env(host)
    if env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
        # Ray's defaults are fixed paths under /tmp and fixed ports (HAProxy metrics 9101, stats
        # 8404, fallback proxy 8500/9500): two clusters on one machine would collide.
        hap = os.path.join(workdir, "haproxy")
        os.makedirs(hap, exist_ok=True)
        env |= {
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": os.path.join(hap, "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": os.path.join(hap, "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": hap,
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": os.path.join(hap, "server-state"),
        }
        for key in (
            "RAY_SERVE_HAPROXY_METRICS_PORT",
            "RAY_SERVE_HAPROXY_STATS_PORT",
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
            "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",
        ):
            env[key] = os.environ.get(key) or str(free_port())
        env["RAY_SERVE_HAPROXY_BINARY_PATH"] = launcher_script(hap)
        env[REQUEST_TIMEOUT_ENV] = os.environ.get(REQUEST_TIMEOUT_ENV) or str(DEFAULT_REQUEST_TIMEOUT_S)
        # Ray's default log target is UDP syslog at 127.0.0.1:514 (ray 2.60.0 constants.py
        # RAY_SERVE_HAPROXY_LOG_TARGET): sending there leaves HAProxy an unconnected UDP socket bound
        # to 0.0.0.0. HAProxy's stdout is a file in this run's private HAProxy directory (ray 2.60.0
        # haproxy.py _start_and_wait_for_haproxy), so its access log lands there, off the network.
        env["RAY_SERVE_HAPROXY_LOG_TARGET"] = os.environ.get("RAY_SERVE_HAPROXY_LOG_TARGET") or "stdout"
        # A prediction is a pure function of its body, so HAProxy may send it again when the replica
        # it went to died before answering (empty or broken response, 502), not only when the
        # connection failed (Ray's default, ray 2.60.0 serve/_private/constants.py
        # RAY_SERVE_HAPROXY_RETRY_ON = "conn-failure"): it goes to another replica, or to the
        # fallback proxy, which holds it until a replica is back. The body is buffered (edge
        # settings), which HAProxy needs to replay it.
        env["RAY_SERVE_HAPROXY_RETRY_ON"] = (
            os.environ.get("RAY_SERVE_HAPROXY_RETRY_ON") or "conn-failure empty-response junk-response 502"
        )
    return env


def display_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{shown}:{port}"


def http_status(url: str, timeout: float = 5.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


class LocalServe:
    """Start a private Ray, deploy ``config`` (a validated serveConfigV2 dict), stop it all."""

    def __init__(
        self,
        config: dict,
        *,
        mode: str = DEFAULT_SERVE_MODE,
        metrics_port: int | None = None,
        num_cpus: int | None = None,
        num_gpus: float | None = None,
        log=print,
    ):
        self.config = config
        self.mode = mode
        self.metrics_port = metrics_port
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.log = log
        self.workdir: str | None = None
        self.start_failed = False  # then stop() keeps Ray's logs, which the error points to
        self._ray_started = False
        self._saved_env: dict[str, str | None] = {}
        http = config.get("http_options") or {}
        self.host = http.get("host", "127.0.0.1")
        self.port = int(http.get("port", 8000))
        self.url = display_url(self.host, self.port)

    def start(self, ready_timeout_s: float = 600.0) -> str:
        self._check_port_free()
        # Short: Ray's unix socket paths under it must stay below ~107 characters.
        self.workdir = tempfile.mkdtemp(prefix="mt-ray-")
        try:
            return self._start(self.workdir, ready_timeout_s)
        except Exception:
            self.start_failed = True
            raise

    def _start(self, workdir: str, ready_timeout_s: float) -> str:
        import ray
        from ray import serve
        from ray.serve._private.api import serve_start
        from ray.serve.config import ProxyLocation, gRPCOptions
        from ray.serve.schema import ServeDeploySchema

        env = mode_env(self.mode, workdir, self.host)
        for key, value in env.items():
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = value
        self.log(
            f"starting Ray (serve mode {self.mode}, temp dir {workdir}"
            + (f", metrics on port {self.metrics_port}" if self.metrics_port else "")
            + ")"
        )
        init_kwargs: dict[str, Any] = dict(
            address="local",
            _temp_dir=workdir,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=True,
            logging_level="warning",
            num_cpus=self.num_cpus,
            runtime_env={"env_vars": env},
        )
        if self.num_gpus is not None:
            init_kwargs["num_gpus"] = self.num_gpus
        if self.metrics_port:
            init_kwargs["_metrics_export_port"] = self.metrics_port
        ray.init(**init_kwargs)
        self._ray_started = True
        node_ip = ray.util.get_node_ip_address()
        if is_loopback(self.host) and not is_loopback(node_ip):
            self.log(
                f"warning: Ray's own servers listen on {node_ip} and all interfaces, not only "
                f"{self.host}: set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before Ray is imported"
            )

        schema = ServeDeploySchema.model_validate(self.config)
        serve_start(
            http_options=schema.http_options.model_dump(),
            proxy_location=schema.proxy_location or ProxyLocation.EveryNode,
            grpc_options=gRPCOptions(**schema.grpc_options.model_dump()),
        ).deploy_apps(schema, _blocking=False)
        self.log("deploying " + ", ".join(a["name"] for a in self.config["applications"]))
        self._wait_ready(serve, ready_timeout_s)
        return self.url

    def _check_port_free(self) -> None:
        with socket.socket() as s:
            try:
                s.bind((self.host, self.port))
            except OSError as exc:
                raise ServeStartError(f"cannot listen on {self.host}:{self.port}: {exc.strerror}") from None

    def _wait_ready(self, serve, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last = None
        ready_urls = [
            self.url + (a.get("route_prefix") or "/").rstrip("/") + "/readyz" for a in our_applications(self.config)
        ]
        while time.monotonic() < deadline:
            status = serve.status()
            apps = status.applications
            line = "; ".join(
                f"{name}: {app.status.value}"
                + "".join(f", {d}={ds.status.value}" for d, ds in sorted(app.deployments.items()))
                for name, app in sorted(apps.items())
            )
            if line and line != last:
                self.log(f"  {line}")
                last = line
            failed = [(n, a) for n, a in apps.items() if a.status.value == "DEPLOY_FAILED"]
            if failed:
                name, app = failed[0]
                message = (app.message or "").strip().splitlines()
                raise ServeStartError(
                    f"application {name} failed to deploy: "
                    f"{message[-1] if message else f'see the Ray logs in {self.workdir}'}"
                )
            running = apps and all(a.status.value == "RUNNING" for a in apps.values())
            if running and all(http_status(u) == 200 for u in ready_urls):
                return
            time.sleep(0.2)  # serve.status() is one call to the controller: polling costs little
        raise ServeStartError(f"not ready after {timeout_s:.0f}s; Ray logs are in {self.workdir}")

    def stop(self) -> None:
        import ray

        if self._ray_started:
            # This private cluster goes away whole, so it is ended here, not asked to wind down:
            # - serve.shutdown() waits for Serve's controller to delete each application and
            #   replica, up to 30 s before it gives up (ray 2.60.0, serve/_private/client.py:
            #   ServeControllerClient.shutdown(timeout_s=30.0), "Controller failed to shut down
            #   within 30.0s"): stops took ~40 s;
            # - ray.shutdown() in this driver then waits 5-8 s on calls to a GCS that is gone
            #   (measured; under `marcelle-torch up` the GCS and raylet get the same SIGTERM as
            #   this process, being in its process group).
            # Every process of the cluster names its temp dir (GCS, raylet, workers and actors,
            # Serve's HAProxy): SIGTERM, then SIGKILL what is left after STOP_TIMEOUT_S.
            if self.workdir:
                stop_processes_naming(self.workdir, timeout_s=STOP_TIMEOUT_S)
            # Ray's exit hook would make the same wait when this interpreter exits (ray 2.60.0,
            # _private/worker.py: atexit.register(shutdown, _exiting_interpreter=True)).
            atexit.unregister(ray.shutdown)
            self._ray_started = False
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()
        if self.workdir:
            stop_processes_naming(self.workdir, timeout_s=STOP_TIMEOUT_S)
            if self.start_failed:
                self.log(f"Ray's logs are kept in {os.path.join(self.workdir, 'session_latest', 'logs')}")
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


def stop_processes_naming(path: str, timeout_s: float = 10.0) -> None:
    """Stop the processes whose command line names ``path``.

    Serve's HAProxy (started by its proxy actor, with its config under our private Ray dir)
    outlives ``ray.shutdown()``; left alone it would keep the port and run without a config.
    """

    def pids() -> list[int]:
        found = []
        for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
            if entry.isdigit() and int(entry) != os.getpid():
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        if path.encode() in f.read():
                            found.append(int(entry))
                except OSError:  # gone meanwhile
                    pass
        return found

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout_s
        while pids() and time.monotonic() < deadline:
            time.sleep(0.2)


def wait_for_signal() -> int:
    """Block until SIGINT or SIGTERM; returns the signal number."""
    got = {}
    stop = threading.Event()

    def handler(signum, _frame):
        got["signal"] = signum
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return got["signal"]
