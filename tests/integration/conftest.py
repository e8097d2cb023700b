"""Fixtures for the run tests: the real Marcelle backend (node, services/backend) and real
worker subprocesses (`marcelle-torch worker`).

- ``trained_models``: digits and digits-generator trained into the session cache;
- ``make_backend(**start_backend kwargs)``: a backend on a free port with its own data dir;
- ``make_worker(backend_url, name, *args, wait=True, env=None, **start_worker options)``: a
  worker process (stack.worker.start_worker: own process group, log file), connected unless
  ``wait=False`` (then ``worker.wait_ready()``);
- ``connect(url, email=None, password=None, serves=None)``: a FeathersClient (logged in if
  asked; ``serves``: the models it announces, as a worker does);
- ``wait_until(fn, timeout, what)``: polls ``fn`` until it returns a truthy value.
All are stopped at the end of each test.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BACKEND_DIR = ROOT / "services" / "backend"
# Generous: the machine is shared; never part of an assertion about speed.
WAIT = 180.0
WORKER_START = 300.0


@pytest.fixture(scope="session")
def trained_models():
    from marcelle_torch.models import get_spec, resolve_weights

    for name in ("digits", "digits-generator"):
        resolve_weights(get_spec(name), train_if_missing=True, progress=False)


@pytest.fixture(scope="session")
def backend_installed():
    if not (BACKEND_DIR / "node_modules" / "@marcellejs" / "backend").is_dir():
        pytest.fail("the Marcelle backend is not installed: run `npm ci` in services/backend (make setup)")
    return BACKEND_DIR


def wait_until(fn, timeout: float = WAIT, what: str = "condition", interval: float = 0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@pytest.fixture
def make_backend(backend_installed, tmp_path):
    from marcelle_torch.stack.backend import start_backend

    handles = []

    def make(**kwargs):
        n = len(handles)
        handle = start_backend(
            kwargs.pop("data_dir", tmp_path / f"backend-{n}"),
            log_path=tmp_path / f"backend-{n}.log",
            package_dir=backend_installed,
            **kwargs,
        )
        handles.append(handle)
        return handle

    yield make
    for handle in reversed(handles):
        handle.stop()


@pytest.fixture
def make_worker(trained_models, tmp_path):
    from marcelle_torch.stack.worker import start_worker

    workers = []

    def make(backend_url: str, name: str, *args, wait: bool = True, env=None, **options):
        worker = start_worker(
            backend_url, name=name, args=args, env=env, log_path=tmp_path / f"worker-{name}.log", wait=False, **options
        )
        workers.append(worker)
        if wait:
            worker.wait_ready(WORKER_START)
        return worker

    yield make
    for worker in workers:
        worker.stop()


@pytest.fixture
def connect():
    from marcelle_torch.worker.client import FeathersClient

    clients = []

    def make(url: str, email: str | None = None, password: str | None = None, serves: str | None = None):
        client = FeathersClient(url)
        client.connect(query={"serves": serves} if serves is not None else None)
        clients.append(client)
        if email:
            client.authenticate(email, password)
        return client

    yield make
    for client in clients:
        client.disconnect()


@pytest.fixture(name="wait_until")
def wait_until_fixture():
    return wait_until
