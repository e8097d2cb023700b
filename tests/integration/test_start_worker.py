"""stack.worker.start_worker: a worker is reported ready once it is connected to its backend
(and logged in), not when its process or its metrics are up; one that exits, or does not
connect in time, is reported with its log's last lines. Real workers, a real backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from marcelle_torch.processes import StartupError, free_port
from marcelle_torch.stack.worker import start_worker

pytestmark = pytest.mark.backend

SUPPORT = Path(__file__).with_name("support")
ENV = {"PYTHONPATH": str(SUPPORT)}
STEADY = ["steady_model:spec"]  # loads in no time: no weights, no training


def running(name: str) -> list[int]:
    """PIDs of the workers started with ``--name name``."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"worker" in argv and (b"--name", name.encode()) in zip(argv, argv[1:], strict=False):
            pids.append(int(cmdline.parent.name))
    return pids


def test_a_worker_is_ready_once_a_backend_answers_at_its_url_not_before(make_backend, wait_until, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"  # nothing listens here yet
    worker = start_worker(url, name="early", models=STEADY, env=ENV, log_path=tmp_path / "early.log", wait=False)
    try:
        # Up and serving its metrics, trying to connect: not ready.
        wait_until(lambda: "retrying in" in worker.log_text(), 120, "the worker to try the backend")
        with pytest.raises(StartupError) as early:
            worker.wait_ready(timeout=2)
        message = early.value.message
        assert message.startswith(f"worker early did not connect to {url} within 2s; last lines of "), message
        assert "retrying in" in message.splitlines()[-1], message
        assert worker.alive() and not worker.up()

        backend = make_backend(port=port)
        worker.wait_ready(timeout=120)
        assert worker.up()
        assert worker.backend_url == backend.url
    finally:
        worker.stop(timeout=10)


def test_a_worker_that_does_not_connect_in_time_is_stopped_and_reported(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    log = tmp_path / "late.log"
    with pytest.raises(StartupError) as late:
        start_worker(url, name="late", models=STEADY, env=ENV, log_path=log, ready_timeout=3)
    assert late.value.message.startswith(f"worker late did not connect to {url} within 3s; last lines of {log}")
    assert running("late") == [], "the worker was left running"


def test_a_worker_that_exits_at_once_is_reported_with_its_last_log_line(tmp_path):
    with pytest.raises(StartupError) as failed:
        start_worker(
            f"http://127.0.0.1:{free_port()}", name="bad", models=["no-such-model"], log_path=tmp_path / "bad.log"
        )
    message = failed.value.message
    assert message.startswith("worker bad exited with code 2 while starting; last lines of "), message
    assert message.splitlines()[-1].startswith("marcelle-torch worker: error: unknown model 'no-such-model'"), message


def test_with_authentication_on_a_worker_is_ready_once_logged_in_and_its_password_stays_off_argv(
    make_backend, tmp_path
):
    account = ("worker@marcelle.test", "pw-0123456789")
    backend = make_backend(
        auth=True, secret="start-worker-test-secret-0123", worker_email=account[0], worker_password=account[1]
    )

    def start(name: str, password: str):
        return start_worker(
            backend.url,
            name=name,
            models=STEADY,
            env=ENV,
            email=account[0],
            password=password,
            log_path=tmp_path / f"{name}.log",
        )

    worker = start("authed", account[1])
    try:
        assert worker.up()
        assert f"logged in as {account[0]}" in worker.log_text()
        assert account[1] not in " ".join(worker.argv)
    finally:
        worker.stop(timeout=10)

    with pytest.raises(StartupError) as refused:
        start("refused", "wrong-password")
    assert "exited with code 2 while starting" in refused.value.message
    assert f"cannot log in to the backend as {account[0]}" in refused.value.message.splitlines()[-1]
