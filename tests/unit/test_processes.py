"""The local stack's process handling: port checks, start-up failures, whole-group stop."""

import os
import socket
import subprocess
import sys
import time

import pytest

from marcelle_torch.processes import ManagedProcess, StartupError, port_or_free


def test_taken_port_is_a_clear_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        with pytest.raises(StartupError, match=f"port {taken} .* already in use"):
            port_or_free(taken)


def test_zero_means_any_free_port():
    port = port_or_free(0)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # really free


def test_a_child_that_dies_while_starting_is_reported_with_its_log(tmp_path):
    proc = ManagedProcess(
        "broken", [sys.executable, "-c", "print('bad config: nope'); raise SystemExit(3)"], tmp_path / "broken.log"
    )
    with pytest.raises(StartupError) as err:
        proc.wait_http("http://127.0.0.1:9/never", timeout=30)
    assert "exited with code 3" in err.value.message
    assert "bad config: nope" in err.value.message
    proc.stop()


def test_stop_ends_the_whole_process_tree(tmp_path):
    # The child starts a grandchild in a process group of its own that ignores SIGTERM, as a
    # stuck Ray worker might.
    script = (
        "import subprocess, sys, time\n"
        "g = subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'], "
        "process_group=0)\n"
        "print(g.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = ManagedProcess("tree", [sys.executable, "-c", script], tmp_path / "tree.log")
    deadline = time.monotonic() + 60
    while not proc.log_path.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.1)
    grandchild = int(proc.log_path.read_text().split()[0])
    leftovers = proc.stop(timeout=5, settle=2)
    assert not proc.alive()
    assert grandchild in leftovers, "a process that outlived its parent must be reported"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)  # killed, not yet reaped by init
    else:
        with open(f"/proc/{grandchild}/status") as status:
            assert "zombie" in status.read()


def test_a_clean_exit_leaves_nothing_to_report(tmp_path):
    proc = ManagedProcess("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"], tmp_path / "s.log")
    assert proc.stop(timeout=10, settle=2) == []


@pytest.mark.parametrize("cpus", [1, 2])
def test_processes_sharing_the_cpus_split_them(cpus):
    # `up --workers N` and the flood bench size each worker's torch threads this way.
    allowed = sorted(os.sched_getaffinity(0))[:cpus]
    if len(allowed) < cpus:
        pytest.skip(f"this machine lets the tests use {len(allowed)} CPU(s)")
    code = (
        f"import os; os.sched_setaffinity(0, {set(allowed)!r}); "
        "from marcelle_torch.processes import threads_per_process as t; print(t(1), t(2), t(4))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(cpus), str(max(1, cpus // 2)), "1"]
