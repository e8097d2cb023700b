"""The local stack's supervision, on real child processes: a dead child is restarted with
backoff, said on the console and counted; a launcher killed outright leaves no child behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from prometheus_client import generate_latest

from marcelle_torch.processes import ManagedProcess
from marcelle_torch.stack.supervise import Supervisor

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def wait_for(fn, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_dead_child_is_restarted_with_backoff_said_and_counted(tmp_path):
    said = []
    supervisor = Supervisor(say=said.append, interval=0.1)
    entry = supervisor.add("sleeper", lambda: ManagedProcess("sleeper", SLEEPER, tmp_path / "sleeper.log"))
    supervisor.watch()
    try:
        for restart in (1, 2):
            before = entry.child
            before.signal(signal.SIGKILL)
            wait_for(
                lambda before=before: entry.child is not None and entry.child is not before and entry.child.alive(),
                what=f"restart {restart}",
            )
        # The second failure came quickly after the first restart: it waited twice as long.
        assert said == [
            "sleeper exited with code -9; restarting it in 1s",
            "sleeper restarted",
            "sleeper exited with code -9; restarting it in 2s",
            "sleeper restarted",
        ]
        exposition = generate_latest(supervisor.registry).decode()
        assert 'marcelle_torch_stack_restarts_total{component="sleeper"} 2.0' in exposition
    finally:
        supervisor.stop()
        entry.child.stop(settle=5)


def test_a_stopped_supervisor_restarts_nothing(tmp_path):
    said = []
    supervisor = Supervisor(say=said.append, interval=0.1)
    entry = supervisor.add("sleeper", lambda: ManagedProcess("sleeper", SLEEPER, tmp_path / "sleeper.log"))
    supervisor.watch()
    supervisor.stop()
    entry.child.stop(settle=5)
    time.sleep(1.0)
    assert said == [] and not entry.child.alive()


def test_children_die_with_a_launcher_killed_outright(tmp_path):
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from marcelle_torch.processes import ManagedProcess
        child = ManagedProcess("sleeper", {SLEEPER!r}, Path({str(tmp_path / "child.log")!r}), die_with_parent=True)
        print(child.pid, flush=True)
        time.sleep(600)
    """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    child_pid = int(launcher.stdout.readline())
    assert os.path.exists(f"/proc/{child_pid}")
    launcher.kill()  # SIGKILL: the launcher cannot clean up
    launcher.wait(10)
    wait_for(
        lambda: not os.path.exists(f"/proc/{child_pid}") or _zombie(child_pid),
        timeout=30,
        what="the child to end with its launcher",
    )


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_child_launched_beforehand_is_watched_and_restarted_with_start(tmp_path):
    # `up` launches Ray Serve first and waits for it last; the supervisor takes that child as is.
    starts = []

    def start():
        starts.append(ManagedProcess("sleeper", SLEEPER, tmp_path / f"sleeper-{len(starts)}.log"))
        return starts[-1]

    first = ManagedProcess("sleeper", SLEEPER, tmp_path / "first.log")
    supervisor = Supervisor(interval=0.1)
    entry = supervisor.add("sleeper", start, first=first)
    assert entry.child is first and starts == []
    supervisor.watch()
    try:
        first.signal(signal.SIGKILL)
        wait_for(lambda: starts and entry.child is starts[0] and entry.child.alive(), what="the restart")
    finally:
        supervisor.stop()
        entry.child.stop(settle=5)
