"""The worker's Prometheus metrics (prometheus_client), served on ``--metrics-port``."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

PREFIX = "marcelle_torch_worker"
# Runs last from a fraction of a second (a classification) to minutes (a long generation).
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class WorkerMetrics:
    """One registry per worker, so several workers can live in one process (tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.runs = Counter(
            f"{PREFIX}_runs",
            "Runs this worker ended, by model and outcome (succeeded, failed, canceled, lost, released)",
            ["model", "outcome"],
            registry=r,
        )
        self.duration = Histogram(
            f"{PREFIX}_run_duration_seconds",
            "Time from claim to outcome",
            ["model"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.pending = Gauge(f"{PREFIX}_pending_runs", "Pending runs of this worker's models, as last seen", registry=r)
        self.running = Gauge(f"{PREFIX}_running_runs", "Runs this worker is running now", registry=r)
        self.progress_updates = Counter(f"{PREFIX}_progress_updates", "Progress patches sent", registry=r)
        self.reconnects = Counter(f"{PREFIX}_reconnects", "Reconnections to the backend", registry=r)
        self.up = Gauge(f"{PREFIX}_up", "1 while connected (and logged in) to the backend", registry=r)

    def serve(self, port: int, host: str) -> object:
        """Expose /metrics on ``host:port`` (a daemon thread); the caller says where to listen."""
        return start_http_server(port, addr=host, registry=self.registry)
