"""Shared test fixtures.

- Every test session uses the repo's weights cache (``.cache/models``, as `make` does), so the
  built-in models are trained once and reused by every module and every later session.
- ``serve_url``: a real ``marcelle-torch serve`` (real local Ray) on free ports, once per session.
- ``make_digit``: a drawn digit from scikit-learn's held-out split, as a PNG instance.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("MARCELLE_TORCH_CACHE", str(REPO / ".cache" / "models"))

# Origins the shared Serve fixture allows (any port on loopback: web apps under test bind port 0).
SERVE_TEST_ORIGINS = ["http://allowed.test", "http://127.0.0.1:*", "http://localhost:*"]
SERVE_START_TIMEOUT_S = 900  # training (first session) + Ray start on a busy 2-core machine


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def trained_digits():
    """The built-in ``digits`` spec, its weights trained into the session cache."""
    from marcelle_torch.models import get_spec, resolve_weights

    spec = get_spec("digits")
    resolve_weights(spec, train_if_missing=True, progress=False)
    return spec


def digit_canvas(index: int = 0, size: int = 128, seed: int = 0, light_background: bool = False,
                 scale: tuple[float, float] = (0.5, 0.9)):
    """(canvas in [0,1] of shape (size, size), true label) for the held-out digit ``index``."""
    import numpy as np

    from marcelle_torch.models.optdigits import load_split, render_canvas

    _, x_test, _, y_test = load_split()
    rng = np.random.default_rng(seed)
    canvas = render_canvas(x_test[index], size, rng, scale=scale, light_background=light_background)
    return canvas, str(int(y_test[index]))


def png_b64(canvas) -> str:
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.asarray(canvas) * 255).round().astype("uint8"), mode="L").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def make_digit_instance(index: int = 0, size: int = 128, seed: int = 0, light_background: bool = False):
    """({"b64": PNG}, true label) for the held-out digit ``index`` drawn on a ``size`` canvas."""
    canvas, label = digit_canvas(index, size, seed, light_background)
    return {"b64": png_b64(canvas)}, label


@pytest.fixture(scope="session")
def make_digit():
    return make_digit_instance


def session_processes(sid: int) -> list[str]:
    """Processes in session ``sid``: the serve process and every Ray process it started."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,args="], capture_output=True, text=True).stdout
    rows = (line.split(None, 2) for line in out.splitlines())
    return [" ".join(r) for r in rows if len(r) == 3 and r[1] == str(sid)]


class ServeProcess:
    """A ``marcelle-torch serve`` subprocess in its own process group."""

    def __init__(self, log_path: Path, extra_args: list[str] = (), env: dict | None = None):
        self.port = free_port()
        self.metrics_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.log_path = log_path
        cli = Path(sys.executable).with_name("marcelle-torch")
        args = [str(cli), "serve", "--host", "127.0.0.1", "--port", str(self.port),
                "--metrics-port", str(self.metrics_port)]
        for origin in SERVE_TEST_ORIGINS:
            args += ["--cors-origin", origin]
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(args + list(extra_args), stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True, env={**os.environ, **(env or {})})

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = SERVE_START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"marcelle-torch serve exited {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            if "serving on " in self.log_text():
                try:
                    with urllib.request.urlopen(self.url + "/readyz", timeout=10) as resp:
                        if resp.status == 200:
                            return
                except OSError:
                    pass
            time.sleep(1)
        raise RuntimeError(f"marcelle-torch serve not ready in {timeout_s}s:\n{self.log_text()[-3000:]}")

    def stop(self, timeout_s: float = 180) -> list[str]:
        """SIGTERM, wait for a clean exit; returns the orphaned processes left behind (if any)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        orphans = []
        deadline = time.monotonic() + 30  # Ray's workers exit a moment after their raylet
        while time.monotonic() < deadline:
            # Ray's workers get process groups of their own, but stay in the session we started.
            orphans = session_processes(self.proc.pid)
            if not orphans:
                break
            time.sleep(1)
        for line in orphans:  # do not leave them running for the next test
            try:
                os.kill(int(line.split()[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()
        return orphans


@pytest.fixture(scope="session")
def serve_process(tmp_path_factory, trained_digits):
    server = ServeProcess(tmp_path_factory.mktemp("serve") / "serve.log")
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    yield server
    orphans = server.stop()
    assert server.proc.returncode == 0, f"serve exited {server.proc.returncode}:\n{server.log_text()[-3000:]}"
    assert not orphans, f"processes left after serve stopped: {orphans}"


@pytest.fixture(scope="session")
def serve_url(serve_process) -> str:
    """Base URL of a ready ``marcelle-torch serve`` (digits model, trained cache)."""
    return serve_process.url


@pytest.fixture(scope="session")
def start_serve():
    """Start another ``marcelle-torch serve`` (e.g. with a config of its own): returns a ServeProcess."""
    def start(log_path: Path, extra_args: list[str] = (), env: dict | None = None) -> ServeProcess:
        server = ServeProcess(log_path, extra_args, env)
        try:
            server.wait_ready()
        except BaseException:
            server.stop()
            raise
        return server
    return start
