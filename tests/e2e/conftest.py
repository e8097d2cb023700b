"""Targets of the end-to-end scenarios (scenarios.py).

- ``local``: the whole stack on this machine (``marcelle_torch.stack.up.start_stack``).
- ``kind``: a throw-away kind cluster: images built and `kind load`ed, the pinned KubeRay
  operator, the chart (authentication on, as shipped), RayService Ready, then everything
  through ONE port-forward of the web app (plus the metrics ports), as a user would. Runs when
  docker (with a daemon), kind, helm and kubectl are there (`make e2e-kind`); otherwise skips
  with one line naming what is missing. The cluster is read through the `kubernetes` client
  (kube.py); when a kind test fails, the failing pods' events and logs are added to its report.
"""

from __future__ import annotations

import base64
import importlib.util
import json
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

IMAGES = {
    "ray": "services/ray/Dockerfile",
    "worker": "services/worker/Dockerfile",
    "backend": "services/backend/Dockerfile",
    "webapp": "services/frontend/Dockerfile",
}
from kube import E2E_TAG, NAMESPACE, RELEASE, Kube, fullname  # noqa: E402
from model_folder import make_folder  # noqa: E402


@dataclass
class Target:
    name: str
    webapp: str
    serve: str
    backend: str
    socketio_path: str
    metrics: dict[str, str]
    # (email, password) of a backend user when the backend's authentication is on.
    credentials: tuple[str, str] | None = None
    # The local stack itself (its supervised children); None on a cluster.
    stack: object | None = None
    # A model added beside the built-ins (a model folder made by the tests), by its name.
    user_model: str | None = None


# Module-scoped: only test_e2e.py uses it, and the stack (its own Ray) is stopped once those
# scenarios are done instead of loading the machine under every later test.
@pytest.fixture(scope="module", params=["local", "kind"])
def target(request, tmp_path_factory):
    if request.param == "local":
        yield from _local_target(tmp_path_factory.mktemp("stack"))
    else:
        yield request.getfixturevalue("kind_cluster").target


# ---------------------------------------------------------------------------------- local


USER_MODEL = "e2e-shapes"


def _local_target(workdir: Path):
    from local_stack import stack_options

    from marcelle_torch.stack.up import WebappNotBuilt, start_stack

    workdir.mkdir(parents=True, exist_ok=True)
    options = stack_options(workdir, models=(str(make_folder(workdir, USER_MODEL)),))
    try:
        stack = start_stack(options, say=lambda msg: print(f"[stack] {msg}", flush=True))
    except WebappNotBuilt as exc:
        pytest.fail(f"local target: {exc.message}")
    try:
        urls = stack.urls
        yield Target(
            "local",
            webapp=urls["webapp"].rstrip("/"),
            serve=urls["serve"].rstrip("/"),
            backend=urls["backend"].rstrip("/"),
            socketio_path="/socket.io",
            metrics={"serve": urls["serve_metrics"], "worker": urls["worker_metrics"]},
            stack=stack,
            user_model=USER_MODEL,
        )
    finally:
        stack.stop(say=lambda msg: print(f"[stack] {msg}", flush=True))


# ----------------------------------------------------------------------------------- kind

# Sized for a 4-core CI runner building everything from scratch.
BUILD_TIMEOUT_S = 3600
RAYSERVICE_READY_S = 1800
OPERATOR_NAMESPACE = "kuberay-system"


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
    if importlib.util.find_spec("kubernetes") is None:
        missing.append("the kubernetes Python client (pip install -e '.[test]')")
    return missing


def versions() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in (REPO / "operator-config" / "versions.env").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    return dict(pairs)


class Kind:
    def __init__(self, workdir: Path):
        self.name = f"mt-e2e-{os.getpid()}"
        self.kubeconfig = workdir / "kubeconfig"
        self.env = dict(os.environ, KUBECONFIG=str(self.kubeconfig))
        self.helm, self.kubectl = find_tool("helm"), find_tool("kubectl")
        self.forwards: list[subprocess.Popen] = []
        self.kube = None  # kube.Kube, once the cluster exists
        self.target: Target | None = None
        self.install_args: list[str] = []
        self.image_sets: list[str] = []

    @property
    def namespaces(self) -> list[str]:
        return [NAMESPACE, OPERATOR_NAMESPACE]

    def run(self, *cmd: str, timeout: float = 1800, capture: bool = False) -> str:
        print("+", " ".join(cmd), flush=True)
        result = subprocess.run(
            cmd, env=self.env, timeout=timeout, text=True, stdout=subprocess.PIPE if capture else None, stderr=None
        )
        if result.returncode != 0:
            raise AssertionError(f"`{' '.join(cmd[:4])} ...` failed with exit {result.returncode}")
        return result.stdout or ""

    def helm_upgrade(self, *extra: str, timeout: str = "15m") -> None:
        self.run(
            self.helm,
            "upgrade",
            "--install",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--create-namespace",
            "-f",
            str(HERE / "kind-values.yaml"),
            *self.image_sets,
            *self.install_args,
            *extra,
            "--wait",
            "--timeout",
            timeout,
        )

    def port_forward_cmd(self, cmd: list[str]) -> str:
        """Start a `kubectl port-forward` command line; return the local base URL."""
        proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.forwards.append(proc)
        deadline = time.monotonic() + 120
        line = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            match = re.search(r"Forwarding from 127\.0\.0\.1:(\d+)", line or "")
            if match:
                return f"http://127.0.0.1:{match.group(1)}"
            if proc.poll() is not None:
                break
        raise AssertionError(f"`{' '.join(cmd)}` did not start: {line!r}")

    def port_forward(self, resource: str, remote: int, namespace: str = NAMESPACE) -> str:
        return self.port_forward_cmd(
            [self.kubectl, "-n", namespace, "port-forward", "--address", "127.0.0.1", resource, f":{remote}"]
        )

    def secret_data(self) -> dict:
        return self.kube.core.read_namespaced_secret(f"{fullname()}-secrets", NAMESPACE).data

    def load_image(self, image: str) -> None:
        self.run("kind", "load", "docker-image", image, "--name", self.name, timeout=1800)

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


@pytest.fixture(scope="session")
def kind_cluster(tmp_path_factory):
    """The kind cluster with the operator and the chart installed and Ready (skips here)."""
    missing = kind_missing()
    if missing:
        pytest.skip(f"kind target needs: {', '.join(missing)}")
    pins = versions()
    cluster = Kind(tmp_path_factory.mktemp("kind"))
    try:
        cluster.run(
            "kind",
            "create",
            "cluster",
            "--name",
            cluster.name,
            "--config",
            str(REPO / "k8s" / "kind-config.yaml"),
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--wait",
            "300s",
        )
        cluster.kube = Kube(cluster.kubeconfig)
        # The weights image first: the others copy its weights (trained once).
        weights = f"marcelle-torch/weights:{E2E_TAG}"
        cluster.run(
            "docker",
            "build",
            "-f",
            str(REPO / "services/weights/Dockerfile"),
            "-t",
            weights,
            str(REPO),
            timeout=BUILD_TIMEOUT_S,
        )
        for component, dockerfile in IMAGES.items():
            image = f"marcelle-torch/{component}:{E2E_TAG}"
            args = [] if component == "backend" else ["--build-arg", f"WEIGHTS_IMAGE={weights}"]
            cluster.run(
                "docker", "build", "-f", str(REPO / dockerfile), *args, "-t", image, str(REPO), timeout=BUILD_TIMEOUT_S
            )
            cluster.load_image(image)
            cluster.image_sets += ["--set", f"{component}.image.tag={E2E_TAG}"]

        cluster.run(
            cluster.helm,
            "upgrade",
            "--install",
            "kuberay-operator",
            "kuberay-operator",
            "--repo",
            pins["KUBERAY_HELM_REPO"],
            "--version",
            pins["KUBERAY_OPERATOR_CHART_VERSION"],
            "--namespace",
            OPERATOR_NAMESPACE,
            "--create-namespace",
            "-f",
            str(REPO / "operator-config" / "kuberay-operator-values.yaml"),
            "--wait",
            "--timeout",
            "10m",
        )
        # A user's model given as a chart value (`models`), from a model store beside the release.
        import model_store

        user_model = model_store.build(tmp_path_factory.mktemp("user-model"))
        store = tmp_path_factory.mktemp("model-store") / "objects.json"
        objects = model_store.kubernetes_objects(user_model, NAMESPACE, f"marcelle-torch/ray:{E2E_TAG}")
        store.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
        cluster.run(cluster.kubectl, "create", "namespace", NAMESPACE)
        cluster.run(cluster.kubectl, "apply", "-f", str(store))
        cluster.run(
            cluster.kubectl, "-n", NAMESPACE, "rollout", "status", f"deployment/{model_store.NAME}", "--timeout=300s"
        )
        for item in model_store.helm_sets(model_store.chart_value(user_model, NAMESPACE)):
            cluster.install_args += ["--set", item]

        cluster.helm_upgrade()
        cluster.kube.wait_rayservice(NAMESPACE, fullname(), RAYSERVICE_READY_S)
        # The generated secrets must survive an upgrade (the chart looks them up).
        before = cluster.secret_data()
        cluster.helm_upgrade()
        assert before == cluster.secret_data(), "helm upgrade regenerated the chart's secrets"
        credentials = None
        if "admin-email" in before and "admin-password" in before:
            credentials = (
                base64.b64decode(before["admin-email"]).decode(),
                base64.b64decode(before["admin-password"]).decode(),
            )

        webapp = cluster.port_forward(f"svc/{fullname()}-webapp", 80)
        ray_worker = cluster.kube.wait_pods(NAMESPACE, "ray.io/node-type=worker", 1, 300, "Ray worker pods")[0]
        serve_metrics = cluster.port_forward(f"pod/{ray_worker.metadata.name}", 8080)
        worker_metrics = cluster.port_forward(f"deployment/{fullname()}-worker", 9100)
        cluster.target = Target(
            "kind",
            webapp=webapp,
            serve=f"{webapp}/serve",
            backend=f"{webapp}/backend",
            socketio_path="/backend/socket.io",
            metrics={"serve": f"{serve_metrics}/metrics", "worker": f"{worker_metrics}/metrics"},
            credentials=credentials,
            user_model=user_model.name,
        )
        yield cluster
    except BaseException:
        if cluster.kube is not None:
            print(cluster.kube.diagnose(cluster.namespaces), flush=True)
        raise
    finally:
        cluster.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed kind test's report carries the failing pods' events and container logs."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    cluster = item.funcargs.get("kind_cluster")
    target = item.funcargs.get("target")
    if cluster is None and getattr(target, "name", None) == "kind":
        cluster = item._request.getfixturevalue("kind_cluster")
    if cluster is not None and cluster.kube is not None:
        try:
            report.sections.append(("kind cluster state", cluster.kube.diagnose(cluster.namespaces)))
        except Exception as exc:  # noqa: BLE001 (a dead cluster must not hide the failure)
            report.sections.append(("kind cluster state", f"could not read the cluster: {exc}"))
