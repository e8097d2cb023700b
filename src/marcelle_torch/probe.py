"""The health probe: a small blackbox exporter for components without a metrics endpoint.

On each scrape it sends one HTTP GET to each target and exports blackbox-exporter-style gauges
``probe_success{target,url}``, ``probe_duration_seconds`` and ``probe_http_status_code``. It runs
in the worker image as the chart's probe sidecar (charts/marcelle-torch/templates/
worker-deployment.yaml)::

    python -m marcelle_torch.probe --port 9115 backend=http://backend:3030/ webapp=http://webapp/

and inside ``marcelle-torch up --monitoring`` (stack/monitoring.py). It needs only httpx and
prometheus_client, both in the base install.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

GAUGES = (
    ("probe_success", "1 if the target answered its HTTP probe with a status below 500."),
    ("probe_duration_seconds", "How long the HTTP probe took."),
    ("probe_http_status_code", "HTTP status of the probe's answer (0: no answer)."),
)


def probe_url(url: str, timeout: float) -> tuple[int, float, int]:
    """(success, seconds, status) of one GET. Up means a status below 500: a 404 from a backend
    root still proves the server is alive and serving; a refused connection, a timeout or a 5xx
    does not."""
    start = time.perf_counter()
    try:
        status = httpx.get(url, timeout=timeout, follow_redirects=True).status_code
    except httpx.HTTPError:
        status = 0
    return int(0 < status < 500), time.perf_counter() - start, status


class ProbeCollector(Collector):
    """Probes every target when collected (so each scrape sees fresh results)."""

    def __init__(self, targets: dict[str, str], timeout: float = 3.0):
        if not targets:
            raise ValueError("the probe needs at least one target")
        self.targets = dict(targets)
        self.timeout = timeout

    def results(self) -> dict[str, tuple[int, float, int]]:
        # A hard deadline on top of httpx's timeouts: name resolution is not bounded by them,
        # and a probe slower than the scrape timeout would fail the whole scrape.
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(self.targets))
        futures = {name: pool.submit(probe_url, url, self.timeout) for name, url in self.targets.items()}
        concurrent.futures.wait(futures.values(), timeout=self.timeout)
        pool.shutdown(wait=False, cancel_futures=True)
        return {name: f.result() if f.done() else (0, self.timeout, 0) for name, f in futures.items()}

    def collect(self) -> Iterator[Metric]:
        results = self.results()
        for index, (metric, help_text) in enumerate(GAUGES):
            family = GaugeMetricFamily(metric, help_text, labels=["target", "url"])
            for name, result in results.items():
                family.add_metric([name, self.targets[name]], result[index])
            yield family


class _Forward(Collector):
    """Another registry's metrics, exported beside the probes (e.g. the launcher's restarts)."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()


class HealthProbe:
    """The probe's /metrics over HTTP, in a background thread; ``stop()`` ends it."""

    def __init__(
        self,
        targets: dict[str, str],
        host: str = "127.0.0.1",
        port: int = 0,
        timeout: float = 3.0,
        registry: CollectorRegistry | None = None,
    ):
        self.collector = ProbeCollector(targets, timeout)
        self.targets = self.collector.targets
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        if registry is not None:
            self.registry.register(_Forward(registry))
        exported = self.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = generate_latest(exported)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # scrapes every 2 s would flood the log
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.address = f"{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="health-probe", daemon=True)
        self._thread.start()

    def render(self) -> str:
        return generate_latest(self.registry).decode()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m marcelle_torch.probe",
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
    raise SystemExit(main())
