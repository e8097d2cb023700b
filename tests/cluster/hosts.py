"""Hosts for the rendered Pods: one Linux network namespace per Pod on a bridge, addresses only
from 198.18.0.0/15 (RFC 2544's benchmark range), a dnsmasq answering the Services' names, and
the Pod's containers started in the Pod's own PID/UTS namespaces, each container in its own
mount namespace with its volumes bind-mounted at their mount paths.

Killing a Pod's first process ends every process of the Pod (the kernel kills a PID
namespace's processes with its init), so a "node loss" leaves nothing behind.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

BENCHMARK_NET = ipaddress.ip_network("198.18.0.0/15")
REPO = Path(__file__).resolve().parents[2]
PATH_DEFAULT = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def run(*cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {result.stderr.strip() or result.stdout.strip()}")
    return result


def netns_refusal() -> str | None:
    """Why this machine cannot run the tier (None when it can)."""
    for tool in ("ip", "unshare", "nsenter", "dnsmasq", "nginx", "wget"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} is not installed (make system-deps)"
    probe = f"mtcprobe{os.getpid() % 100000}"
    result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if result.returncode != 0:
        return f"`ip netns add` refused: {result.stderr.strip() or 'not permitted'} (the tier needs root)"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class Network:
    """A bridge with a /24 of 198.18.0.0/15, the test process at .1 (the "node")."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        used = run("ip", "-4", "-o", "addr").stdout
        for n in range(64, 255):
            subnet = ipaddress.ip_network(f"198.18.{n}.0/24")
            if f" 198.18.{n}." not in used and not Path(f"/sys/class/net/mtc{n}").exists():
                break
        else:
            raise RuntimeError("no free /24 in 198.18.0.0/15")
        assert subnet.subnet_of(BENCHMARK_NET)
        self.subnet, self.n = subnet, n
        self.bridge = f"mtc{n}"
        self.gateway = str(subnet.network_address + 1)
        self._next = 10
        self._next_vip = 200
        self.namespaces: list[str] = []
        self.links: list[str] = []
        run("ip", "link", "add", self.bridge, "type", "bridge")
        self.links.append(self.bridge)
        run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")

    def address(self) -> str:
        ip = str(self.subnet.network_address + self._next)
        self._next += 1
        return ip

    def virtual_ip(self) -> str:
        ip = str(self.subnet.network_address + self._next_vip)
        self._next_vip += 1
        return ip

    def add_netns(self, name: str, addresses: list[str]) -> str:
        """A network namespace with eth0 on the bridge holding `addresses` (all from the /24)."""
        ns = f"mtc{self.n}-{name}"[:60]
        self._veths = getattr(self, "_veths", 0) + 1
        veth = f"mtc{self.n}v{self._veths}"
        run("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self.links.append(veth)
        run("ip", "link", "set", veth, "master", self.bridge, "up")
        for ip in addresses:
            assert ipaddress.ip_address(ip) in self.subnet, ip
            run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        # No default route: nothing can leave the /24 (and so the machine).
        return ns

    def del_netns(self, ns: str) -> None:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        if ns in self.namespaces:
            self.namespaces.remove(ns)

    def teardown(self) -> None:
        for ns in list(self.namespaces):
            self.del_netns(ns)
        for link in reversed(self.links):
            subprocess.run(["ip", "link", "del", link], capture_output=True)


class DNS:
    """dnsmasq on the bridge: the render's Service names (short, .ns, .ns.svc, .ns.svc.<domain>)
    to their addresses; no upstream servers, so no query leaves the machine."""

    def __init__(self, network: Network, workdir: Path, domain: str):
        self.hosts = workdir / "dns-hosts"
        self.hosts.write_text("")
        self.records: dict[str, list[str]] = {}
        self.log = open(workdir / "dnsmasq.log", "ab")
        self.proc = subprocess.Popen(
            [
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--bind-interfaces",
                f"--listen-address={network.gateway}",
                "--except-interface=lo",
                "--port=53",
                f"--addn-hosts={self.hosts}",
                "--local-ttl=1",
                "--log-facility=-",
                "--pid-file=",
                "--user=root",
                # Authoritative for the cluster domain, as CoreDNS is: an unknown name is NXDOMAIN, so
                # resolvers walking the search path (ndots:5) go on to the next candidate.
                f"--local=/{domain}/",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        time.sleep(0.3)
        if self.proc.poll() is not None:
            raise RuntimeError(f"dnsmasq exited: {(workdir / 'dnsmasq.log').read_text()[-500:]}")

    @staticmethod
    def names(service: str, namespace: str, domain: str) -> list[str]:
        return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.{domain}"]

    def set(self, service: str, namespace: str, domain: str, addresses: list[str]) -> None:
        for name in self.names(service, namespace, domain):
            self.records[name] = list(addresses)
        lines = [f"{ip} {name}" for name, ips in sorted(self.records.items()) for ip in ips]
        self.hosts.write_text("\n".join(lines) + "\n")
        self.proc.send_signal(signal.SIGHUP)  # dnsmasq re-reads --addn-hosts and clears its cache

    def lookup(self, name: str) -> list[str]:
        return self.records.get(name.rstrip("."), [])

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self.log.close()


def _q(words) -> str:
    return " ".join(shlex.quote(str(w)) for w in words)


class Pod:
    """One Pod as a host. `containers` are dicts with the resolved `argv`, `env`, `workdir` and
    `mounts` ([(source, target, kind)] with kind bind|tmpfs|file)."""

    def __init__(
        self,
        network: Network,
        dns_ip: str,
        workdir: Path,
        name: str,
        namespace: str,
        domain: str,
        labels: dict,
        spec: dict,
        created_dirs: list[Path],
    ):
        self.network, self.name, self.namespace, self.labels, self.spec = network, name, namespace, labels, spec
        self.ip = network.address()
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.created_dirs = created_dirs
        self.ns = network.add_netns(name.split("-")[-1] + str(network._next), [self.ip])
        self.ready = False
        self.proc: subprocess.Popen | None = None
        self.init_pid: int | None = None
        self.started_at = None
        # Written by the kubelet into every container: /etc/hosts with the Pod's own name, and
        # /etc/resolv.conf with the cluster DNS and the namespace's search path.
        (self.dir / "hosts").write_text(
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            f"{self.ip}\t{name}\n"
        )
        (self.dir / "resolv.conf").write_text(
            f"search {namespace}.svc.{domain} svc.{domain} {domain}\nnameserver {dns_ip}\noptions ndots:5\n"
        )

    def _ensure(self, target: str, is_file: bool, binds: list[tuple[str, str]]) -> None:
        """Create a missing mount point: inside an earlier bind's source when the target lies
        under it (so it exists in the mount namespace), else on this machine (removed at teardown)."""
        for source, bound in sorted(binds, key=lambda b: len(b[1]), reverse=True):
            if target.startswith(bound.rstrip("/") + "/"):
                path = Path(source) / target[len(bound) :].lstrip("/")
                if not path.exists():
                    missing = path
                    while not missing.parent.exists():
                        missing = missing.parent
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.touch() if is_file else path.mkdir(parents=True, exist_ok=True)
                    # Made inside a bound source (maybe the checkout): removed at teardown too.
                    if missing not in self.created_dirs:
                        self.created_dirs.append(missing)
                return
        path = Path(target)
        if path.exists():
            return
        top = path if not is_file else path.parent
        missing = top
        while not missing.parent.exists():
            missing = missing.parent
        top.mkdir(parents=True, exist_ok=True)
        if missing not in self.created_dirs and not str(missing).startswith(str(self.dir)):
            self.created_dirs.append(missing)
        if is_file:
            path.touch()

    def _container_script(self, c: dict) -> Path:
        lines = ["set -e"]
        # The checkout and the venv stand in for the image; a volume mounted over a folder that
        # holds them (an emptyDir at /tmp, with the checkout under /tmp) would hide them. Each is
        # held by a file descriptor before the mounts and bound back at its path after them.
        keep = sorted({str(REPO), str(Path(sys.prefix).resolve())})
        for fd, path in enumerate(keep, start=7):
            lines.append(f"exec {fd}<{shlex.quote(path)}")
        binds: list[tuple[str, str]] = []
        for source, target, kind in c["mounts"]:
            self._ensure(target, kind == "file", binds)
            if kind == "bind":
                binds.append((source, target))
            if kind == "tmpfs":
                lines.append(_q(["mount", "-t", "tmpfs", "-o", f"size={source}", "tmpfs", target]))
            else:
                lines.append(_q(["mount", "--bind", source, target]))
        for fd, path in enumerate(keep, start=7):
            covered = any(path == t or path.startswith(t.rstrip("/") + "/") for _, t, _ in c["mounts"])
            if covered:  # util-linux mount would resolve the /proc link's text, not the fd, unless told
                lines.append(f"mkdir -p {shlex.quote(path)}")
                lines.append(f"mount --no-canonicalize --bind /proc/self/fd/{fd} {shlex.quote(path)}")
        lines.append(_q(["cd", c["workdir"]]) if Path(c["workdir"]).exists() else "cd /")
        env = {"PATH": PATH_DEFAULT, "HOSTNAME": self.name, **c["env"]}
        lines.append("exec " + _q(["env", "-i", *[f"{k}={v}" for k, v in env.items()], *c["argv"]]))
        path = self.dir / f"{c['name']}.sh"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, init_containers: list[dict], containers: list[dict]) -> None:
        lines = [
            "hostname " + shlex.quote(self.name),
            _q(["mount", "--bind", self.dir / "hosts", "/etc/hosts"]),
            _q(["mount", "--bind", self.dir / "resolv.conf", "/etc/resolv.conf"]),
        ]
        for c in init_containers:
            script = self._container_script(c)
            log = self.dir / f"{c['name']}.log"
            lines.append(
                f"unshare --mount --propagation private bash {shlex.quote(str(script))} "
                f">>{shlex.quote(str(log))} 2>&1 || exit 1"
            )
        for c in containers:
            script = self._container_script(c)
            log = self.dir / f"{c['name']}.log"
            lines.append(
                f"unshare --mount --propagation private bash {shlex.quote(str(script))} "
                f">>{shlex.quote(str(log))} 2>&1 &"
            )
        lines.append("wait")
        (self.dir / "pod.sh").write_text("\n".join(lines) + "\n")
        self.containers = [c["name"] for c in containers]
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.ns,
                "unshare",
                "--mount",
                "--uts",
                "--pid",
                "--fork",
                "--mount-proc",
                "--propagation",
                "private",
                "bash",
                str(self.dir / "pod.sh"),
            ],
            stdout=open(self.dir / "pod.log", "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started_at = time.monotonic()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.init_pid is None and self.proc.poll() is None:
            try:
                children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
                if children:
                    self.init_pid = int(children[0])
            except OSError:
                pass
            time.sleep(0.05)
        assert self.init_pid, f"pod {self.name} did not start: {(self.dir / 'pod.log').read_text()[-500:]}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exec(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        """Like `kubectl exec`: in the Pod's network, UTS, PID and mount namespaces."""
        return subprocess.run(
            [
                "nsenter",
                "-t",
                str(self.init_pid),
                "-n",
                "-m",
                "-u",
                "-p",
                "--",
                "env",
                "-i",
                f"PATH={PATH_DEFAULT}",
                *argv,
            ],
            capture_output=True,
            text=True,
            timeout=timeout + 5,
        )

    def kill(self) -> None:
        """Every process of the Pod, at once (SIGKILL to the PID namespace's init)."""
        if self.init_pid:
            try:
                os.kill(self.init_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc:
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.ready = False

    def delete(self) -> None:
        self.kill()
        self.network.del_netns(self.ns)

    def log(self, container: str, lines: int = 30) -> str:
        path = self.dir / f"{container}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def selector_matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def start_proxy(network: Network, workdir: Path, vips: list[str]) -> tuple[subprocess.Popen, str, Path]:
    """The Services' virtual IPs in one network namespace, served by svcproxy.py."""
    ns = network.add_netns("svc", vips)
    endpoints = workdir / "endpoints.json"
    endpoints.write_text("{}")
    log = open(workdir / "svcproxy.log", "ab")
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, str(Path(__file__).with_name("svcproxy.py")), str(endpoints)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, ns, endpoints


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
