"""Child processes of the local stack: started in their own process group, logged to a
file, waited for over HTTP, and stopped with their whole group (Ray spawns many)."""

from __future__ import annotations

import ctypes
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from .errors import MarcelleTorchError


class StartupError(MarcelleTorchError):
    status = 500
    code = "startup_failed"


def cli_argv(*args: str) -> list[str]:
    """The command line that runs ``marcelle-torch ARGS`` in a child process, with this Python."""
    return [sys.executable, "-m", "marcelle_torch.cli", *args]


def cgroup_cpu_limit(
    proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")
) -> float | None:
    """The CPU limit of this process's cgroup and its parents, in CPUs (a container's
    ``resources.limits.cpu``), or None when there is none. cgroup v2 writes it in ``cpu.max``
    as "<quota> <period>" ("max" for none); v1 in ``cpu.cfs_quota_us`` (-1 for none) and
    ``cpu.cfs_period_us``, under the ``cpu`` hierarchy."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: the unified hierarchy
            files = {(root / "unified", "cpu.max"), (root, "cpu.max")}
        elif "cpu" in controllers.split(","):
            # Mounted as `cpu` or as the controllers' joint name (`cpu,cpuacct`): each read once.
            files = {(root / "cpu", "cpu.cfs_quota_us"), (root / controllers, "cpu.cfs_quota_us")}
        else:
            continue
        for base, name in files:
            folder = base / path.lstrip("/")
            # A limit may sit on any parent; a container sees its own cgroup as the root.
            while True:
                limit = _read_cpu_limit(folder / name)
                if limit is not None:
                    limits.append(limit)
                if folder == base or base not in folder.parents:
                    break
                folder = folder.parent
    return min(limits) if limits else None


def _read_cpu_limit(path: Path) -> float | None:
    try:
        text = path.read_text().split()
        if path.name == "cpu.max":
            quota, period = text
        else:
            quota, period = text[0], (path.parent / "cpu.cfs_period_us").read_text().strip()
    except (OSError, ValueError, IndexError):
        return None
    if quota in ("max", "-1") or int(period) <= 0:
        return None
    return int(quota) / int(period)


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity, capped by its cgroup's CPU limit, which
    ``os.cpu_count()`` and torch do not see (torch in a 2-CPU pod on a 64-core node would
    start 64 threads, throttled to 2 CPUs' worth)."""
    cpus = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit()
    return cpus if limit is None else max(1, min(cpus, math.ceil(limit)))


def threads_per_process(processes: int) -> int:
    """Torch threads for each of ``processes`` processes that share the CPUs this process may
    use: each torch would otherwise start one thread per core, and N workers would fight over
    them (measured: 2 workers drained runs 4-10x slower than one)."""
    return max(1, usable_cpus() // max(1, processes))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_or_free(port: int, host: str = "127.0.0.1") -> int:
    """0 means "any free port"; a fixed port that is taken is a clear error, not a crash later."""
    if port == 0:
        return free_port(host)
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            raise StartupError(f"port {port} on {host} is already in use (choose another, or 0 for any)") from None
    return port


class ManagedProcess:
    """One child process (and its process group) with its output in ``log_path``."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        env: dict | None = None,
        cwd: str | Path | None = None,
        die_with_parent: bool = False,
    ):
        self.name = name
        self.argv = argv
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_sigterm_when_parent_dies if die_with_parent else None,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the child's whole process group."""
        _signal_group(self.proc.pid, sig)

    def wait_until(
        self,
        ready: Callable[[], bool],
        timeout: float,
        what: str,
        on_wait: Callable[[], object] | None = None,
        interval: float = 0.2,
    ) -> None:
        """Call ``ready`` until it is true; fail early, with the log's last lines, if the process
        dies, and with them too once ``timeout`` has passed ("NAME did not WHAT within ...")."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise StartupError(
                    f"{self.name} exited with code {self.proc.returncode} while starting; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            if ready():
                return
            if on_wait:
                on_wait()
            time.sleep(interval)
        raise StartupError(
            f"{self.name} did not {what} within {timeout:.0f}s; last lines of {self.log_path}:\n{self.log_tail()}"
        )

    def wait_http(
        self,
        url: str,
        timeout: float,
        expect: tuple[int, ...] = (200,),
        on_wait: Callable[[], object] | None = None,
    ) -> None:
        """Poll ``url`` until it answers one of ``expect``; fail early if the process died."""

        def answers() -> bool:
            try:
                return httpx.get(url, timeout=2.0).status_code in expect
            except httpx.HTTPError:
                return False

        self.wait_until(answers, timeout, f"become ready at {url}", on_wait)

    def stop(self, timeout: float = 60.0, settle: float = 30.0) -> list[int]:
        """SIGTERM the group (the child shuts down what it started), then SIGKILL what is left.

        Returns the PIDs that were still alive ``settle`` seconds after the child exited and had
        to be killed: processes that made groups of their own but stayed in its session (Ray's
        workers do, and exit a moment after their raylet). Empty after a clean shutdown.
        """
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.signal(signal.SIGKILL)
        deadline = time.monotonic() + settle
        while (leftovers := session_processes(self.proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()
        return leftovers


def session_processes(sid: int) -> list[int]:
    """PIDs of the live processes in session ``sid`` (a child started with start_new_session)."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,stat="], capture_output=True, text=True).stdout
    rows = (line.split() for line in out.splitlines())
    return [int(r[0]) for r in rows if len(r) == 3 and r[1] == str(sid) and not r[2].startswith("Z")]


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB, from /proc (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _sigterm_when_parent_dies() -> None:
    """In the child, before exec: SIGTERM it when its parent dies, even by SIGKILL, so a
    killed launcher leaves no orphans (each child then stops what it started itself)."""
    PR_SET_PDEATHSIG = 1  # linux/prctl.h
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
