"""Local monitoring: Debian's Prometheus scraping the local stack, with the chart's alert rules.

`start_prometheus` writes a scrape config for the given targets, starts `/usr/bin/prometheus`
on it (scrape interval 2 s, so dashboards fill quickly on one machine), loads the same rule
files the Helm chart ships (`charts/marcelle-torch/rules/*.yaml`), waits until it is ready and
returns a handle whose ``stop()`` ends it.

Components without a metrics endpoint (the Marcelle backend, the static web app) are watched
by `HealthProbe`: a tiny exporter that, on each scrape, sends one HTTP GET to each target and
exports blackbox-exporter-style gauges ``probe_success{target}``, ``probe_duration_seconds``
and ``probe_http_status_code``. On Kubernetes the same probe runs as a container:

    python -m marcelle_torch.stack.monitoring probe --port 9115 backend=http://backend:3030/ webapp=http://webapp/
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import yaml

from ..errors import MarcelleTorchError
from ..files import atomic_write_text
from .processes import ManagedProcess, StartupError, free_port

PROMETHEUS_BIN = os.environ.get("MARCELLE_TORCH_PROMETHEUS", "/usr/bin/prometheus")
PROBE_JOB = "probe"
#: The chart's rule files; present in a checkout (editable install), absent from a wheel.
RULES_DIR = Path(__file__).resolve().parents[3] / "charts" / "marcelle-torch" / "rules"


class PrometheusError(MarcelleTorchError):
    status = 502
    code = "prometheus_error"


def prometheus_available() -> bool:
    """True when the Prometheus binary is installed and runs."""
    path = shutil.which(PROMETHEUS_BIN) or (PROMETHEUS_BIN if os.access(PROMETHEUS_BIN, os.X_OK) else None)
    if not path:
        return False
    try:
        return subprocess.run([path, "--version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def default_rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.yaml")) if RULES_DIR.is_dir() else []


# --------------------------------------------------------------------------- health probe


class HealthProbe:
    """An exporter that probes HTTP targets when scraped (a small blackbox exporter).

    A target is up when it answers with a status below 500: a 404 from a backend root still
    proves the server is alive and serving, while a refused connection, a timeout or a 5xx
    does not.
    """

    def __init__(
        self, targets: dict[str, str], host: str = "127.0.0.1", port: int = 0, timeout: float = 3.0, registry=None
    ):
        if not targets:
            raise ValueError("HealthProbe needs at least one target")
        self.targets = dict(targets)
        self.registry = registry  # a prometheus_client registry exported beside the probes
        self.timeout = timeout
        probe = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server API)
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = probe.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # scrapes every 2 s would flood the log
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.address = f"{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="health-probe", daemon=True)
        self._thread.start()

    def _probe(self, url: str) -> tuple[int, float, int]:
        start = time.perf_counter()
        try:
            status = httpx.get(url, timeout=self.timeout, follow_redirects=True).status_code
        except httpx.HTTPError:
            status = 0
        return int(0 < status < 500), time.perf_counter() - start, status

    def render(self) -> str:
        # A hard deadline on top of httpx's timeouts: name resolution is not bounded by them,
        # and a probe slower than the scrape timeout would fail the whole scrape.
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(self.targets))
        futures = {name: pool.submit(self._probe, url) for name, url in self.targets.items()}
        concurrent.futures.wait(futures.values(), timeout=self.timeout)
        pool.shutdown(wait=False, cancel_futures=True)
        results = {name: future.result() if future.done() else (0, self.timeout, 0) for name, future in futures.items()}
        lines = []
        for index, (metric, help_text) in enumerate(
            (
                ("probe_success", "1 if the target answered its HTTP probe with a status below 500."),
                ("probe_duration_seconds", "How long the HTTP probe took."),
                ("probe_http_status_code", "HTTP status of the probe's answer (0: no answer)."),
            )
        ):
            lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} gauge"]
            for name, result in results.items():
                url = self.targets[name].replace("\\", "\\\\").replace('"', '\\"')
                lines.append(f'{metric}{{target="{name}",url="{url}"}} {result[index]}')
        text = "\n".join(lines) + "\n"
        if self.registry is not None:
            from prometheus_client import generate_latest

            text += generate_latest(self.registry).decode()
        return text

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


# --------------------------------------------------------------------------- Prometheus


def render_config(targets: dict[str, list[str]], rule_files: list[Path], scrape_interval: str = "2s") -> dict:
    """The prometheus.yml for ``targets`` (job name -> host:port list, scraped at /metrics)."""
    return {
        "global": {
            "scrape_interval": scrape_interval,
            "evaluation_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
        },
        "rule_files": [str(Path(p).resolve()) for p in rule_files],
        "scrape_configs": [
            {"job_name": job, "metrics_path": "/metrics", "static_configs": [{"targets": list(addrs)}]}
            for job, addrs in targets.items()
        ],
    }


@dataclass
class PrometheusHandle:
    """A running local Prometheus; ``url`` is its HTTP API/UI, ``stop()`` ends it."""

    url: str
    process: ManagedProcess
    config_path: Path
    probe: HealthProbe | None = None
    _stopped: bool = field(default=False, repr=False)

    def query(self, expr: str, timeout: float = 30.0) -> list[dict]:
        return query(self.url, expr, timeout=timeout)

    def query_range(self, expr: str, start: float, end: float, step: float, timeout: float = 30.0) -> list[dict]:
        return query_range(self.url, expr, start, end, step, timeout=timeout)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        # Prometheus flushes its head block on SIGTERM; give it time before the group is killed.
        self.process.stop(timeout=30)
        if self.probe:
            self.probe.stop()


def start_prometheus(
    targets: dict[str, list[str]],
    data_dir: str | Path,
    port: int = 0,
    *,
    host: str = "127.0.0.1",
    rule_files: list[str | Path] | None = None,
    health: dict[str, str] | None = None,
    scrape_interval: str = "2s",
    retention: str = "2d",
    ready_timeout: float = 120.0,
    registry=None,
) -> PrometheusHandle:
    """Start Prometheus scraping ``targets`` ({job: ["host:port", ...]}) with data in ``data_dir``.

    ``health`` ({name: url}) adds a `HealthProbe` scraped as job ``probe``. ``rule_files``
    defaults to the chart's rules. ``port=0`` picks a free port.
    """
    if not prometheus_available():
        raise StartupError(f"Prometheus is not installed at {PROMETHEUS_BIN} (apt-get install prometheus)")
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    rules = [Path(p) for p in (default_rule_files() if rule_files is None else rule_files)]
    for path in rules:
        if not path.is_file():
            raise StartupError(f"rule file {path} does not exist")

    # Probe timeout below the scrape timeout, so a dead target reads 0 instead of a failed scrape.
    probe = HealthProbe(health, host=host, timeout=1.5, registry=registry) if health else None
    try:
        jobs = dict(targets)
        if probe:
            jobs[PROBE_JOB] = [probe.address]
        config_path = data_dir / "prometheus.yml"
        atomic_write_text(config_path, yaml.safe_dump(render_config(jobs, rules, scrape_interval), sort_keys=False))

        port = port or free_port(host)
        process = ManagedProcess(
            "prometheus",
            [
                shutil.which(PROMETHEUS_BIN) or PROMETHEUS_BIN,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={data_dir / 'tsdb'}",
                f"--storage.tsdb.retention.time={retention}",
                f"--web.listen-address={host}:{port}",
            ],
            data_dir / "prometheus.log",
        )
        handle = PrometheusHandle(url=f"http://{host}:{port}", process=process, config_path=config_path, probe=probe)
        try:
            process.wait_http(f"{handle.url}/-/ready", ready_timeout)
        except BaseException:
            handle.stop()
            raise
        return handle
    except BaseException:
        if probe:
            probe.stop()
        raise


def _api(url: str, path: str, params: dict, timeout: float) -> list[dict]:
    try:
        response = httpx.get(f"{url}{path}", params=params, timeout=timeout)
        body = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise PrometheusError(f"Prometheus at {url} did not answer {path}: {exc}") from exc
    if body.get("status") != "success":
        raise PrometheusError(f"{body.get('errorType', 'error')}: {body.get('error', body)}")
    return body["data"]["result"]


def query(url: str, expr: str, timeout: float = 30.0) -> list[dict]:
    """Instant query; raises PrometheusError with Prometheus' message if ``expr`` is invalid."""
    return _api(url, "/api/v1/query", {"query": expr}, timeout)


def query_range(url: str, expr: str, start: float, end: float, step: float, timeout: float = 30.0) -> list[dict]:
    return _api(url, "/api/v1/query_range", {"query": expr, "start": start, "end": end, "step": step}, timeout)


# --------------------------------------------------------------------------- dashboards

#: Grafana's built-in interval variables, as Grafana would set them for a short time range.
GRAFANA_INTERVALS = {"__rate_interval": "1m", "__interval": "10s", "__range": "5m"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def iter_panels(panels: list[dict]):
    """Every panel of a Grafana dashboard, including those nested in collapsed rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def dashboard_queries(dashboard: dict, intervals: dict[str, str] | None = None) -> list[tuple[str, str, str]]:
    """``(panel title, legend, PromQL)`` for every query target of a Grafana dashboard, with
    template variables replaced: intervals from ``intervals`` (default `GRAFANA_INTERVALS`),
    multi-value variables by their "All" value, others by their current value."""
    variables = dict(GRAFANA_INTERVALS if intervals is None else intervals)
    for var in dashboard.get("templating", {}).get("list", []):
        if var["type"] == "datasource":
            continue
        variables[var["name"]] = (var.get("allValue") or ".*") if var.get("includeAll") else var["current"]["value"]

    def substitute(expr: str) -> str:
        def repl(match):
            name = match.group(1) or match.group(2)
            if name not in variables:
                raise ValueError(f"unknown template variable ${name} in {expr!r}")
            return variables[name]

        return _VARIABLE.sub(repl, expr)

    return [
        (panel["title"], target.get("legendFormat", ""), substitute(target["expr"]))
        for panel in iter_panels(dashboard.get("panels", []))
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


# --------------------------------------------------------------------------- command line


def _probe_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m marcelle_torch.stack.monitoring probe",
        description="Export probe_success/probe_duration_seconds/probe_http_status_code for HTTP targets.",
    )
    parser.add_argument("targets", nargs="+", metavar="NAME=URL", help="e.g. backend=http://backend:3030/")
    parser.add_argument("--host", default="0.0.0.0", help="interface to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=9115, help="port of /metrics (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per probe (default: %(default)s)")
    args = parser.parse_args(argv)
    targets = {}
    for item in args.targets:
        name, sep, url = item.partition("=")
        if not sep or not name or not url.startswith(("http://", "https://")):
            parser.error(f"target {item!r} is not NAME=http(s)://URL")
        targets[name] = url
    probe = HealthProbe(targets, host=args.host, port=args.port, timeout=args.timeout)
    print(f"probing {', '.join(targets)}; metrics on http://{probe.address}/metrics", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        while not done.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    probe.stop()
    return 0


if __name__ == "__main__":
    import sys

    if len(sys.argv) < 2 or sys.argv[1] != "probe":
        sys.exit("usage: python -m marcelle_torch.stack.monitoring probe [--port 9115] NAME=URL ...")
    sys.exit(_probe_main(sys.argv[2:]))
