"""The cluster tier: the rendered chart run here, one host (network namespace) per Pod.

One cluster for the whole tier (session fixture `cluster`), torn down even when a test fails:
every Pod's processes killed, every namespace and link deleted. Skips with one line where
`ip netns add` is refused (the tier needs root), where helm is missing, or where the web app
is not built (`make webapp`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "e2e"))

from render import NAMESPACE, REPO, find_tool, image_of, one, render_objects  # noqa: E402

START_TIMEOUT_S = 600
# Head-node fault tolerance on (ray.gcsFaultTolerance): a Redis host beside the cluster, its
# address and password in a Secret the user manages (created here, as `kubectl create secret`).
REDIS_HOST, REDIS_PORT, REDIS_SECRET = "ray-redis", 6379, "ray-redis"
REDIS_PASSWORD = "cluster-tier-redis-password"
# The model the trainer takes (training.models): the trainable built-in.
TRAINED_MODEL = "digits"


def _why_not() -> str | None:
    from hosts import netns_refusal

    if not find_tool("helm"):
        return "helm not found: run tests/chart/install-tools.sh"
    import shutil

    if not shutil.which("redis-server") or not shutil.which("redis-cli"):
        return "redis-server not found: sudo make system-deps (apt-get install redis-server)"
    if not (REPO / "services" / "frontend" / "dist" / "index.html").exists():
        return "the web app is not built: run `make webapp`"
    return netns_refusal()


def pytest_collection_modifyitems(config, items):
    mine = [i for i in items if HERE in Path(str(i.fspath)).resolve().parents]
    if not mine:
        return
    if not find_tool("helm"):
        for item in mine:
            item.add_marker(pytest.mark.skip(reason="cluster tier: helm not found: run tests/chart/install-tools.sh"))
        return
    reason = _why_not()
    if reason:
        for item in mine:
            if getattr(item.module, "NEEDS_HOSTS", True):
                item.add_marker(pytest.mark.skip(reason=f"cluster tier: {reason}"))


@pytest.fixture(scope="session")
def user_model(tmp_path_factory):
    """A user's model given as a chart value (`models`): its folder made here, its archive on a
    model store of its own (tests/e2e/model_store.py), started with the cluster."""
    import model_store

    model = model_store.build(tmp_path_factory.mktemp("user-model"))
    model.value = model_store.chart_value(model, NAMESPACE)
    model.url = model.value["uri"]
    return model


@pytest.fixture(scope="session")
def objects(user_model):
    import model_store

    sets = (
        *model_store.helm_sets(user_model.value),
        "ray.gcsFaultTolerance.enabled=true",
        f"ray.gcsFaultTolerance.existingSecret={REDIS_SECRET}",
        # Training in the loop: one more Pod (the trainer, for the built-in digits) and the model
        # store's claim (a directory of this machine), mounted by the trainer, the run worker,
        # the Ray Pods and the web app (test_cluster.py: teach, publish, roll back).
        "training.enabled=true",
        f"training.models[0]={TRAINED_MODEL}",
    )
    rendered = render_objects(sets=sets)
    address = f"{REDIS_HOST}.{NAMESPACE}.svc.cluster.local:{REDIS_PORT}"
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": REDIS_SECRET, "namespace": NAMESPACE},
        "stringData": {"redis-address": address, "redis-password": REDIS_PASSWORD},
    }
    return [*rendered, secret]


def say(msg: str) -> None:
    print(f"[cluster] {msg}", flush=True)


@pytest.fixture(scope="session")
def cluster(objects, user_model, request):
    import kuberay
    import model_store
    from cluster import WEIGHTS, Cluster
    from render import by_kind, container_port

    # The weights the Ray and worker images bake in at build time (their `marcelle-torch train` RUNs).
    images = {
        image_of(c).dockerfile: image_of(c)
        for d in by_kind(objects, "Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    rs = one(objects, "RayService")
    images[
        image_of(rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]).dockerfile
    ] = image_of(rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0])
    for model in sorted({m for image in images.values() for m in image.trains}):
        say(f"weights of {model} (as the images train them at build time)")
        subprocess.run(
            [str(REPO / ".venv" / "bin" / "marcelle-torch"), "train", model],
            check=True,
            env={**os.environ, "MARCELLE_TORCH_CACHE": str(WEIGHTS)},
            capture_output=True,
            timeout=1200,
        )

    import tempfile

    # Its own directory (kept when a test failed, for the logs; removed otherwise).
    # Not under /tmp: Pods mount emptyDirs at /tmp, which would hide their own sources.
    workdir = Path(tempfile.mkdtemp(prefix="marcelle-torch-cluster-", dir="/var/tmp"))
    started = time.monotonic()
    c = Cluster(objects, workdir, NAMESPACE, say=say)
    try:
        c.controller.start()
        say(f"network {c.network.subnet} on bridge {c.network.bridge}; Ray cluster {c.ray_cluster}")
        store = c.start_file_host(model_store.NAME, user_model.store, model_store.PORT)
        say(f"model store at {store}: {user_model.url}")
        redis = c.start_redis_host(REDIS_HOST, REDIS_PORT, REDIS_PASSWORD)
        say(f"redis at {redis}:{REDIS_PORT} (the head's GCS fault tolerance)")
        head = c.start_ray_pod("head", None)
        groups = [
            g for g in rs["spec"]["rayClusterConfig"].get("workerGroupSpecs", []) if int(g.get("replicas", 0)) > 0
        ]
        for group in groups:
            c.start_ray_pod("worker", group)
        for deployment in by_kind(objects, "Deployment"):
            c.start_deployment(deployment)
        c.wait_ready([head], START_TIMEOUT_S)
        say(f"head ready after {time.monotonic() - started:.0f}s")
        # RayService controller: the serve config goes to the head's dashboard, then is polled.
        dashboard = f"http://{head.ip}:{container_port(head.spec['containers'][0], 'dashboard')}"
        c.dashboard = dashboard
        c.serve_config = rs["spec"]["serveConfigV2"]
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                kuberay.update_serve_deployment(dashboard, c.serve_config, token=c.ray_token)
                break
            except (AssertionError, OSError) as exc:  # the dashboard's Serve API answers a little later
                assert time.monotonic() < deadline, f"serve config not accepted: {exc}"
                time.sleep(3)
        apps = {}
        while time.monotonic() < deadline:
            try:
                ready, apps = kuberay.get_and_check_serve_status(dashboard, token=c.ray_token)
            except OSError:
                ready = False
            if ready:
                break
            failed = {n: a for n, a in apps.items() if a["status"] == "DEPLOY_FAILED"}
            assert not failed, f"serve application failed: {failed}"
            time.sleep(3)
        else:
            raise AssertionError(f"serve applications not RUNNING after {START_TIMEOUT_S}s: {apps}")
        say(f"serve applications RUNNING after {time.monotonic() - started:.0f}s: {sorted(apps)}")
        c.create_serve_service()
        c.wait_ready(c.pods, START_TIMEOUT_S)
        # The RayService is Ready once its Serve Service has endpoints
        # (rayservice_controller.go calculateNumServeEndpointsFromSlices).
        c.wait_endpoints(kuberay.serve_service_name(c.rs_name), START_TIMEOUT_S)
        say(f"every pod ready after {time.monotonic() - started:.0f}s")
        yield c
    except BaseException:
        for pod in c.pods:
            for proc in getattr(pod, "processes", []):
                say(f"--- {pod.name}/{proc['name']} (log tail)\n{pod.log(proc['name'], 25)}")
        raise
    finally:
        problems = c.teardown()
        say("torn down" + (f"; left: {problems}" if problems else ""))
        if request.session.testsfailed or sys.exc_info()[0] is not None:
            say(f"logs kept in {workdir}")
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def target(cluster, user_model):
    """The scenario target: the web app Pod's host:port only, as `kubectl port-forward svc/<webapp>`
    reaches it, plus the metrics endpoints the PodMonitors scrape."""
    from types import SimpleNamespace

    from render import container_port

    webapp = cluster.webapp_pod()
    port = container_port(webapp.spec["containers"][0], cluster.webapp_service()["ports"][0]["targetPort"])
    base = f"http://{webapp.ip}:{port}"
    config = cluster_config_json(base)
    metrics = cluster.metrics_targets()
    serve_metrics = next(
        url for pod, port_name, url in metrics if pod in cluster.ray_workers and port_name == "metrics"
    )
    worker_pod = cluster.run_worker_pod()
    worker_metrics = next(url for pod, port_name, url in metrics if pod is worker_pod and port_name == "metrics")
    return SimpleNamespace(
        name="cluster",
        webapp=base,
        serve=base + config["serveUrl"],
        backend=base + config["backendUrl"],
        socketio_path=config["backendUrl"] + "/socket.io",
        metrics={"serve": serve_metrics, "worker": worker_metrics},
        credentials=first_user(cluster),
        user_model=user_model.name,
    )


def first_user(cluster):
    """(email, password) of the first admin account the backend creates, when its authentication
    is on: the env vars its config maps to marcelleTorch.admin*, as the backend Pod got them
    (from the Secret `helm template` generated)."""
    from render import backend_env_map

    backend = next(p for p in cluster.pods if p.alive() and p.processes[0]["argv"][:1] == ["node"])
    env = backend.processes[0]["env"]
    mapping = {key[-1]: var for var, key in backend_env_map().items()}
    auth = next((var for var, key in backend_env_map().items() if key == ("authentication", "enabled")), None)
    if env.get(auth) != "true":
        return None
    email, password = env.get(mapping.get("adminEmail", "")), env.get(mapping.get("adminPassword", ""))
    assert email and password, "backend authentication is on but no first admin account is rendered"
    return email, password


def cluster_config_json(base: str) -> dict:
    import json
    import urllib.request

    with urllib.request.urlopen(base + "/config.json", timeout=30) as response:
        return json.loads(response.read())
