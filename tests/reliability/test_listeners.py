"""Every listener of `marcelle-torch up --host 127.0.0.1` binds to 127.0.0.1, nothing beyond it.

A real stack (`marcelle-torch up` with Ray Serve behind Ray's HAProxy, the Marcelle backend, a run
worker, the web app and, where Debian's prometheus is installed, Prometheus) runs on free ports.
The listening sockets come from `ss` (iproute2) and are attributed to the stack by process: the
`up` process and every descendant (Ray's processes, its workers, HAProxy), plus the sessions they
run in (Ray's workers leave their parent's group but not its session). The test fails on:

- any TCP socket listening on an address other than 127.0.0.1 (0.0.0.0, ::, a LAN address),
  but for one that Ray 2.60 binds to all interfaces with no setting (REPLICA below, with why);
- any unbound (listening) UDP socket on such an address;
- HAProxy's admin socket (`stats socket ... level admin`) writable by other users.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import subprocess
import time
from pathlib import Path

import pytest

from marcelle_torch.processes import ManagedProcess, cli_argv

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 900  # first session trains the models; a busy 2-core machine starts Ray slowly
pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc to attribute sockets")


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                # "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses.
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kids.setdefault(int(fields[1]), []).append(int(entry))
    return kids


def _sessions() -> dict[int, int]:
    out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True, check=True).stdout
    return {int(p): int(s) for p, s in (line.split() for line in out.splitlines() if line.strip())}


def stack_pids(root: int) -> set[int]:
    """``root``, its descendants, and every process in one of their sessions."""
    kids = _children()
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(kids.get(pid, []))
    sessions = _sessions()
    ours = {sessions[p] for p in found if p in sessions}
    ours.discard(sessions.get(os.getpid()))  # never this test's own session
    return found | {p for p, s in sessions.items() if s in ours}


USERS = re.compile(r'\("([^"]*)",pid=(\d+),fd=\d+\)')


def listening(kind: str) -> list[dict]:
    """Listening sockets from `ss -H -l{kind}np`: local address, port or path, and owning processes."""
    out = subprocess.run(["ss", "-H", f"-l{kind}np"], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        cols = line.split()
        # tcp/udp: State Recv-Q Send-Q Local:Port Peer:Port users:(...)
        # unix:    Netid State Recv-Q Send-Q Path Inode Peer Inode users:(...)
        local = cols[4] if kind == "x" else cols[3]
        users = [(name, int(pid)) for name, pid in USERS.findall(line)]
        if kind == "x":
            rows.append({"path": local, "users": users, "line": line})
        else:
            host, _, port = local.rpartition(":")
            host = host.strip("[]").split("%")[0]  # "[::]", "*", "0.0.0.0%lo" -> address
            rows.append({"host": host, "port": int(port), "users": users, "line": line})
    return rows


def _web_dist(tmp_path: Path) -> Path:
    """The built web app (what `make test` builds); a stand-in page when it is not built.

    Only the web app server's socket matters here, not what it serves.
    """
    built = ROOT / "services" / "frontend" / "dist"
    if (built / "index.html").is_file() and (built / "onnx" / "digits" / "model.onnx").is_file():
        return built
    dist = tmp_path / "dist"
    (dist / "onnx" / "digits").mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html><title>marcelle-torch</title>\n")
    (dist / "onnx" / "digits" / "model.onnx").write_bytes(b"")
    return dist


@pytest.fixture(scope="module")
def stack(tmp_path_factory, trained_digits):
    from marcelle_torch.stack.monitoring import prometheus_available

    tmp = tmp_path_factory.mktemp("listeners")
    args = [
        *cli_argv(),
        "up",
        "--host",
        HOST,
        "--port",
        "0",
        "--serve-port",
        "0",
        "--backend-port",
        "0",
        "--prometheus-port",
        "0",
        "--workdir",
        str(tmp / "stack"),
        "--dist",
        str(_web_dist(tmp)),
    ]
    if prometheus_available():
        args.append("--monitoring")
    proc = ManagedProcess("marcelle-torch up", args, tmp / "up.log")
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "marcelle-torch is up" not in proc.log_text():
            assert proc.alive(), f"`marcelle-torch up` exited {proc.proc.returncode}:\n{proc.log_tail(40)}"
            assert time.monotonic() < deadline, f"stack not up after {START_TIMEOUT_S}s:\n{proc.log_tail(40)}"
            time.sleep(1)
        time.sleep(3)  # let HAProxy finish its first reload (Ray starts it, then reloads with the routes)
        yield proc
    finally:
        orphans = proc.stop(timeout=180)
    assert not orphans, f"processes left after the stack stopped: {orphans}"


def on_host(address: str) -> bool:
    """``address`` is HOST, also as gRPC's IPv4-mapped form (``[::ffff:127.0.0.1]``)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip) == HOST


# The one listener that cannot follow the host: ray 2.60.0 serve/_private/replica.py
# (ReplicaBase._on_initialized) starts every replica's inter-deployment gRPC server on "[::]:0",
# a literal with no setting. Its calls need the cluster's authentication token (replica.py builds
# the server with ray/_private/grpc_utils.py create_grpc_server_with_interceptors; Ray 2.60 turns
# token authentication on by default). Allowed: one all-interfaces socket per Serve replica.
REPLICA = "ray::ServeRepli"  # ss shows the first 15 characters of the process name


def replica_grpc_allowed(row: dict, beyond: list[dict]) -> bool:
    if row["host"] not in ("*", "::") or len(row["users"]) != 1:
        return False
    name, pid = row["users"][0]
    same_process = [r for r in beyond if r["users"] == row["users"]]
    return name.startswith(REPLICA) and len(same_process) == 1


def _describe(rows: list[dict], pids: set[int]) -> str:
    cmd = {}
    for pid in {p for r in rows for _, p in r["users"]}:
        try:
            cmd[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:160]
        except OSError:
            cmd[pid] = "?"
    return "\n".join(f"  {r['line']}\n    " + "; ".join(cmd[p] for _, p in r["users"] if p in pids) for r in rows)


def test_every_socket_of_the_stack_listens_on_the_host_asked(stack):
    pids = stack_pids(stack.pid)
    tcp = [r for r in listening("t") if any(p in pids for _, p in r["users"])]
    udp = [r for r in listening("u") if any(p in pids for _, p in r["users"])]
    # The stack really is running behind these: Ray, HAProxy, the backend (node), worker, web app.
    names = {name for r in tcp for name, p in r["users"] if p in pids}
    assert {"haproxy", "node", "raylet", "gcs_server"} <= names, f"unexpected stack: {sorted(names)}"
    beyond = [r for r in tcp + udp if not on_host(r["host"])]
    allowed = [r for r in beyond if replica_grpc_allowed(r, beyond)]
    beyond = [r for r in beyond if r not in allowed]
    assert not beyond, f"{len(beyond)} socket(s) of the stack listen beyond {HOST}:\n" + _describe(beyond, pids)
    # The allowance stays what it says: one socket per Serve replica, no more.
    replicas = {p for r in tcp for name, p in r["users"] if name.startswith(REPLICA)}
    assert len(allowed) <= len(replicas), _describe(allowed, pids)


def haproxy_admin_sockets(pids: set[int]) -> list[str]:
    """``stats socket`` paths in the configs the stack's HAProxy processes run (``-f <config>``)."""
    paths = []
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv[0].endswith(b"haproxy") or b"-f" not in argv:
            continue
        config = Path(argv[argv.index(b"-f") + 1].decode())
        for line in config.read_text().splitlines():
            words = line.split()
            if words[:2] == ["stats", "socket"]:
                paths.append(words[2])
    return sorted(set(paths))


def test_haproxy_admin_socket_is_not_writable_by_others(stack):
    sockets = haproxy_admin_sockets(stack_pids(stack.pid))
    assert sockets, "no HAProxy admin socket found: is Serve running behind HAProxy?"
    for path in sockets:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert not mode & (stat.S_IWOTH | stat.S_IWGRP), (
            f"HAProxy admin socket {path} is mode {mode:o}: other users may send it admin commands"
        )
