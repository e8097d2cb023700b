"""Targets of the end-to-end scenarios (scenarios.py).

- ``local``: the whole stack on this machine (``marcelle_torch.stack.up.start_stack``).
- ``kind``: a throw-away kind cluster: images built and `kind load`ed, the pinned KubeRay
  operator, the chart, RayService Ready, then everything through ONE port-forward of the web
  app (plus the metrics ports), as a user would. Runs when docker (with a daemon), kind, helm
  and kubectl are there (`make e2e-kind`); otherwise skips with one line naming what is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "chart"))

from k8s_tools import CHART, INSTALL_HINT, REPO, find_tool  # noqa: E402

IMAGES = {"ray": "services/ray/Dockerfile", "worker": "services/worker/Dockerfile",
          "backend": "services/backend/Dockerfile", "webapp": "services/frontend/Dockerfile"}
E2E_TAG = "e2e"
RELEASE, NAMESPACE = "mt", "marcelle-torch-e2e"


@dataclass
class Target:
    name: str
    webapp: str
    serve: str
    backend: str
    socketio_path: str
    metrics: dict[str, str]


@pytest.fixture(scope="session", params=["local", "kind"])
def target(request, tmp_path_factory):
    if request.param == "local":
        yield from _local_target(tmp_path_factory.mktemp("stack"))
    else:
        yield from _kind_target(tmp_path_factory.mktemp("kind"))


# ---------------------------------------------------------------------------------- local

def _local_target(workdir: Path):
    try:
        from marcelle_torch.stack.up import StackOptions, WebappNotBuilt, start_stack
    except ImportError as exc:
        pytest.skip(f"local target: marcelle_torch.stack.up is not available ({exc})")
    options = StackOptions(workdir=workdir, webapp_port=0, serve_port=0, backend_port=0,
                           serve_metrics_port=0, worker_metrics_port=0, prometheus_port=0)
    try:
        stack = start_stack(options, say=lambda msg: print(f"[stack] {msg}", flush=True))
    except WebappNotBuilt as exc:
        pytest.skip(f"local target: {exc.message}")
    try:
        urls = stack.urls
        yield Target("local", webapp=urls["webapp"].rstrip("/"), serve=urls["serve"].rstrip("/"),
                     backend=urls["backend"].rstrip("/"), socketio_path="/socket.io",
                     metrics={"serve": urls["serve_metrics"], "worker": urls["worker_metrics"]})
    finally:
        stack.stop(say=lambda msg: print(f"[stack] {msg}", flush=True))


# ----------------------------------------------------------------------------------- kind

def kind_missing() -> list[str]:
    missing = []
    docker = shutil.which("docker")
    if not docker:
        missing.append("docker")
    elif subprocess.run([docker, "info"], capture_output=True, timeout=60).returncode != 0:
        missing.append("a running Docker daemon")
    if not shutil.which("kind"):
        missing.append("kind")
    for tool in ("helm", "kubectl"):
        if not find_tool(tool):
            missing.append(f"{tool} ({INSTALL_HINT})")
    return missing


def versions() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (REPO / "operator-config" / "versions.env").read_text().splitlines()
             if line.strip() and not line.startswith("#"))
    return dict(pairs)


class Kind:
    def __init__(self, workdir: Path):
        self.name = f"mt-e2e-{os.getpid()}"
        self.kubeconfig = workdir / "kubeconfig"
        self.env = dict(os.environ, KUBECONFIG=str(self.kubeconfig))
        self.helm, self.kubectl = find_tool("helm"), find_tool("kubectl")
        self.forwards: list[subprocess.Popen] = []

    def run(self, *cmd: str, timeout: float = 1800, capture: bool = False) -> str:
        print("+", " ".join(cmd), flush=True)
        result = subprocess.run(cmd, env=self.env, timeout=timeout, text=True,
                                stdout=subprocess.PIPE if capture else None, stderr=None)
        if result.returncode != 0:
            raise AssertionError(f"`{' '.join(cmd[:4])} ...` failed with exit {result.returncode}")
        return result.stdout or ""

    def k(self, *args: str, **kw) -> str:
        return self.run(self.kubectl, *args, **kw)

    def port_forward(self, resource: str, remote: int, namespace: str = NAMESPACE) -> str:
        proc = subprocess.Popen([self.kubectl, "-n", namespace, "port-forward", "--address", "127.0.0.1",
                                 resource, f":{remote}"], env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        self.forwards.append(proc)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            match = re.search(r"Forwarding from 127\.0\.0\.1:(\d+)", line or "")
            if match:
                return f"http://127.0.0.1:{match.group(1)}"
            if proc.poll() is not None:
                break
        raise AssertionError(f"port-forward to {resource}:{remote} did not start: {line!r}")

    def secret_data(self) -> dict:
        import json

        out = self.k("-n", NAMESPACE, "get", "secret", f"{RELEASE}-marcelle-torch-secrets", "-o", "json",
                     capture=True)
        return json.loads(out)["data"]

    def stop(self) -> None:
        for proc in self.forwards:
            proc.terminate()
        for proc in self.forwards:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if os.environ.get("E2E_KEEP_CLUSTER") != "1":
            subprocess.run(["kind", "delete", "cluster", "--name", self.name], env=self.env, timeout=600)


def _kind_target(workdir: Path):
    missing = kind_missing()
    if missing:
        pytest.skip(f"kind target needs: {', '.join(missing)}")
    pins = versions()
    cluster = Kind(workdir)
    try:
        cluster.run("kind", "create", "cluster", "--name", cluster.name, "--config",
                    str(REPO / "k8s" / "kind-config.yaml"), "--kubeconfig", str(cluster.kubeconfig), "--wait", "300s")
        sets = []
        for component, dockerfile in IMAGES.items():
            image = f"marcelle-torch/{component}:{E2E_TAG}"
            cluster.run("docker", "build", "-f", str(REPO / dockerfile), "-t", image, str(REPO), timeout=3600)
            cluster.run("kind", "load", "docker-image", image, "--name", cluster.name, timeout=1800)
            sets += ["--set", f"{component}.image.tag={E2E_TAG}"]

        cluster.run(cluster.helm, "upgrade", "--install", "kuberay-operator", "kuberay-operator",
                    "--repo", pins["KUBERAY_HELM_REPO"], "--version", pins["KUBERAY_OPERATOR_CHART_VERSION"],
                    "--namespace", "kuberay-system", "--create-namespace",
                    "-f", str(REPO / "operator-config" / "kuberay-operator-values.yaml"), "--wait", "--timeout", "10m")

        install = [cluster.helm, "upgrade", "--install", RELEASE, str(CHART), "--namespace", NAMESPACE,
                   "--create-namespace", "-f", str(HERE / "kind-values.yaml"), *sets, "--wait", "--timeout", "15m"]
        cluster.run(*install)
        cluster.k("-n", NAMESPACE, "wait", f"rayservice/{RELEASE}-marcelle-torch", "--for=condition=Ready",
                  "--timeout=30m", timeout=2000)
        # The generated secrets must survive an upgrade (the chart looks them up).
        before = cluster.secret_data()
        cluster.run(*install)
        after = cluster.secret_data()
        assert before == after, "helm upgrade regenerated the chart's secrets"

        webapp = cluster.port_forward(f"svc/{RELEASE}-marcelle-torch-webapp", 80)
        ray_worker = cluster.k("-n", NAMESPACE, "get", "pods", "-l", "ray.io/node-type=worker", "-o",
                               "jsonpath={.items[0].metadata.name}", capture=True).strip()
        serve_metrics = cluster.port_forward(f"pod/{ray_worker}", 8080)
        worker_metrics = cluster.port_forward(f"deployment/{RELEASE}-marcelle-torch-worker", 9100)
        yield Target("kind", webapp=webapp, serve=f"{webapp}/serve", backend=f"{webapp}/backend",
                     socketio_path="/backend/socket.io",
                     metrics={"serve": f"{serve_metrics}/metrics", "worker": f"{worker_metrics}/metrics"})
    finally:
        cluster.stop()
