"""Local monitoring: Debian's Prometheus scraping the local stack, with the chart's alert rules.

`start_prometheus` writes a scrape config for the given targets, starts `/usr/bin/prometheus`
on it (scrape interval 2 s, so dashboards fill quickly on one machine), loads the same rule
files the Helm chart ships (`charts/marcelle-torch/rules/*.yaml`), waits until it is ready and
returns a handle whose ``stop()`` ends it.

Components without a metrics endpoint (the Marcelle backend, the static web app) are watched
by the health probe (`marcelle_torch.probe`, the same one the chart runs as a sidecar), scraped
as job ``probe``. The Grafana dashboard helpers read the chart's dashboards for the tests and
bench/dashboard_render.py. This is local development tooling: nothing here ships in a Pod.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from ..errors import MarcelleTorchError
from ..files import atomic_write_text
from ..probe import HealthProbe
from ..processes import ManagedProcess, StartupError, free_port

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
