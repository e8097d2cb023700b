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
from pathlib import Path

import pytest

from marcelle_torch.processes import ManagedProcess, cli_argv, free_port

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("MARCELLE_TORCH_CACHE", str(REPO / ".cache" / "models"))

# Origins the shared Serve fixture allows (any port on loopback: web apps under test bind port 0).
SERVE_TEST_ORIGINS = ["http://allowed.test", "http://127.0.0.1:*", "http://localhost:*"]
SERVE_START_TIMEOUT_S = 900  # training (first session) + Ray start on a busy 2-core machine


@pytest.fixture(scope="session")
def trained_digits():
    """The built-in ``digits`` spec, its weights trained into the session cache."""
    from marcelle_torch.models import get_spec, resolve_weights

    spec = get_spec("digits")
    resolve_weights(spec, train_if_missing=True, progress=False)
    return spec


def digit_canvas(
    index: int = 0,
    size: int = 128,
    seed: int = 0,
    light_background: bool = False,
    scale: tuple[float, float] = (0.5, 0.9),
):
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


class ServeProcess(ManagedProcess):
    """A ``marcelle-torch serve`` subprocess (its own session), on free ports."""

    def __init__(self, log_path: Path, extra_args: list[str] = (), env: dict | None = None):
        self.port = free_port()
        self.metrics_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        args = [
            *cli_argv(),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--metrics-port",
            str(self.metrics_port),
        ]
        for origin in SERVE_TEST_ORIGINS:
            args += ["--cors-origin", origin]
        super().__init__("marcelle-torch serve", args + list(extra_args), log_path, env=env)

    def wait_ready(self, timeout_s: float = SERVE_START_TIMEOUT_S) -> None:
        self.wait_http(self.url + "/readyz", timeout_s)

    def stop(self, timeout_s: float = 180) -> list[int]:
        """SIGTERM and wait for a clean exit; returns the orphans that had to be killed."""
        return super().stop(timeout=timeout_s)


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
    assert server.proc.returncode == 0, f"serve exited {server.proc.returncode}:\n{server.log_tail(40)}"
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
