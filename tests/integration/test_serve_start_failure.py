"""A ``marcelle-torch serve`` that cannot become ready: it exits with a clear error, leaves no
process behind, and keeps the Ray logs its error points to (they are removed after a
normal stop)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from marcelle_torch.processes import ManagedProcess, cli_argv, free_port
from marcelle_torch.serving.local import stop_processes_naming

pytestmark = pytest.mark.ray


def test_a_failed_start_keeps_rays_logs_and_leaves_no_process(trained_digits, tmp_path):
    # No replica loads torch and a model within a second of its deployment.
    server = ManagedProcess(
        "marcelle-torch serve",
        [*cli_argv(), "serve", "--port", str(free_port()), "--metrics-port", str(free_port()), "--ready-timeout", "1"],
        tmp_path / "serve.log",
    )
    try:
        assert server.proc.wait(300) == 2, server.log_tail(40)
        log = server.log_text()
        found = re.search(r"error: not ready after 1s; Ray logs are in (\S+)", log)
        assert found, log[-3000:]
        workdir = Path(found.group(1))
        kept = re.search(r"Ray's logs are kept in (\S+)", log)
        assert kept and Path(kept.group(1)) == workdir / "session_latest" / "logs", log[-3000:]
        logs = {p.name for p in (workdir / "session_latest" / "logs").iterdir()}
        assert {"gcs_server.out", "raylet.out"} <= logs, sorted(logs)
        assert not server.stop(timeout=30), "processes left after a failed start"
    finally:
        server.stop(timeout=30)
        # Whatever failed: the temp dir is named when Ray starts.
        started = re.search(r"temp dir (/[^,)\s]+)", server.log_text())
        if started:
            stop_processes_naming(started.group(1), timeout_s=5)
            shutil.rmtree(started.group(1), ignore_errors=True)
