"""The local stack's process handling: port checks, start-up failures, whole-group stop."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from marcelle_torch.processes import ManagedProcess, StartupError, cgroup_cpu_limit, port_or_free


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


def _cgroup_tree(tmp_path, proc_lines: str, files: dict[str, str]):
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    proc = tmp_path / "proc-cgroup"
    proc.write_text(proc_lines)
    return proc, tmp_path


@pytest.mark.parametrize(
    ("proc_lines", "files", "limit"),
    [
        # cgroup v2, as a Kubernetes pod with limits.cpu: "2" sees it (its own cgroup is the root).
        ("0::/\n", {"cpu.max": "200000 100000\n"}, 2.0),
        ("0::/\n", {"cpu.max": "max 100000\n"}, None),
        # v2 with the limit on a parent (the pod) and none on the container's own cgroup.
        (
            "0::/pod/ctr\n",
            {"cpu.max": "max 100000\n", "pod/cpu.max": "150000 100000\n", "pod/ctr/cpu.max": "max 100000\n"},
            1.5,
        ),
        # cgroup v1, the cpu controller mounted beside cpuacct.
        (
            "4:memory:/x\n1:cpu,cpuacct:/ctr\n",
            {"cpu,cpuacct/ctr/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/ctr/cpu.cfs_period_us": "100000\n"},
            0.5,
        ),
        ("1:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        # Nothing readable: no limit, not an error.
        ("0::/\n", {}, None),
    ],
)
def test_the_cgroup_cpu_limit_is_read_from_v1_and_v2(tmp_path, proc_lines, files, limit):
    proc, root = _cgroup_tree(tmp_path, proc_lines, files)
    assert cgroup_cpu_limit(proc, root) == limit


def test_a_process_in_a_cgroup_limited_to_one_cpu_gives_torch_one_thread():
    # A real cgroup (v1 here, as root): what a container with `limits.cpu: 1` looks like from inside.
    cpu = Path("/sys/fs/cgroup/cpu")
    if os.geteuid() != 0 or not (cpu / "cpu.cfs_quota_us").exists() or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs root, a cgroup v1 cpu hierarchy and 2 CPUs")
    group = cpu / f"marcelle-torch-test-{os.getpid()}"
    group.mkdir()
    try:
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text("100000")
        code = (
            f"import os; open({str(group / 'cgroup.procs')!r}, 'w').write(str(os.getpid())); "
            "from marcelle_torch.processes import usable_cpus, threads_per_process; "
            "print(usable_cpus(), threads_per_process(1), len(os.sched_getaffinity(0)))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
        assert out == ["1", "1", str(len(os.sched_getaffinity(0)))]
    finally:
        group.rmdir()
