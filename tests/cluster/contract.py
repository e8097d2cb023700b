"""The contract between the render and the code: every env var and argument a rendered
container gets is one its code reads, and every variable the code requires is set.
Both sides are derived: the render's containers, and the code (src/ for the Python images,
services/backend for the backend image, the nginx template + entrypoint for the web app)."""

from __future__ import annotations

import functools
import json
import re

import kuberay
from cluster import NGINX_ENTRYPOINT_READS, NGINX_TEMPLATE_DIR, is_nginx_image
from render import (
    REPO,
    argparse_options,
    backend_env_reads,
    backend_env_required,
    by_kind,
    image_of,
    library_reads,
    one,
    python_env_reads,
    python_env_required,
    resolve_env,
)

RAY_PACKAGE = next((REPO / ".venv" / "lib").glob("python*/site-packages/ray"), None)
# Read by every process through the C library or Python itself (Path.home(), exec lookup).
PROCESS_ENV = {"HOME", "PATH"}


@functools.cache
def _ray_reads(name: str) -> bool:
    return RAY_PACKAGE is not None and library_reads(name, RAY_PACKAGE)


def containers(objects: list[dict]):
    """(owner, container, pod meta, is_ray) for every container and init container of every
    Deployment and Ray group (is_ray: a Ray group's Ray container, started by KubeRay's command)."""
    for deployment in by_kind(objects, "Deployment"):
        meta = {
            "metadata": {
                "name": deployment["metadata"]["name"] + "-pod",
                "namespace": "ns",
                "labels": deployment["spec"]["template"]["metadata"].get("labels", {}),
            },
            "status": {"podIP": "198.18.0.2"},
            "spec": {},
        }
        pod = deployment["spec"]["template"]["spec"]
        for c in pod.get("initContainers", []) + pod["containers"]:
            yield f"Deployment/{deployment['metadata']['name']}/{c['name']}", c, meta, False
    ray = one(objects, "RayService")
    spec = ray["spec"]["rayClusterConfig"]
    for group in [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]:
        meta = {
            "metadata": {"name": "ray-pod", "namespace": "ns", "labels": {}},
            "status": {"podIP": "198.18.0.2"},
            "spec": {},
        }
        pod = group["template"]["spec"]
        for c in pod.get("initContainers", []):
            yield f"RayService/{group.get('groupName', 'head')}/{c['name']}", c, meta, False
        for c in pod["containers"]:
            yield f"RayService/{group.get('groupName', 'head')}/{c['name']}", c, meta, True


def kuberay_env(objects: list[dict], owner: str, container: dict, is_ray: bool) -> list[dict]:
    """The container's env as KubeRay leaves it: for a Ray container, with what
    configureGCSFaultTolerance appends (kuberay.configure_gcs_fault_tolerance)."""
    if not is_ray:
        return list(container.get("env", []))
    rayservice = one(objects, "RayService")
    node_type = "head" if owner.startswith("RayService/head/") else "worker"
    template = {"metadata": {}, "spec": {"containers": [json.loads(json.dumps(container))]}}
    kuberay.configure_gcs_fault_tolerance(template, {}, rayservice, "ray-cluster", node_type)
    return template["spec"]["containers"][0].get("env", [])


def problems(objects: list[dict]) -> list[str]:
    found = []
    py_reads, py_required = python_env_reads(), python_env_required()
    for owner, c, meta, is_ray in containers(objects):
        image = image_of(c)
        rendered = [v["name"] for v in c.get("env", [])]
        env = dict(image.env)
        env.update(resolve_env(c, meta, objects))
        argv = list(c.get("command") or image.entrypoint) + list(
            c.get("args") or ([] if c.get("command") else image.cmd)
        )
        # $(VAR) in the arguments, or in the value of a variable defined after it (the kubelet
        # expands those), KubeRay's own additions to a Ray container included.
        values = [str(v.get("value", "")) for v in kuberay_env(objects, owner, c, is_ray)]
        referenced = set(re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", " ".join(argv + values)))
        if is_nginx_image(image):
            templates = [s.read_text() for t, s in image.copies.items() if t.startswith(NGINX_TEMPLATE_DIR + "/")]
            readers = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", "\n".join(templates))) | NGINX_ENTRYPOINT_READS
            unread = [n for n in rendered if n not in readers]
            required = []
        elif image.base.split(":")[0].endswith("node"):
            readers = backend_env_reads()
            unread = [n for n in rendered if n not in readers and n not in referenced]
            required = sorted(n for n in backend_env_required(env) if n not in env)
        else:
            unread = [
                n for n in rendered if n not in py_reads | referenced | PROCESS_ENV and not (is_ray and _ray_reads(n))
            ]
            required = sorted(n for n in py_required if n not in env)
            if not is_ray:
                spec = argparse_options(argv)
                if spec is not None:
                    options, required_opts, positionals = spec
                    rest = argv[3:] if len(argv) > 2 and argv[1] == "-m" else argv[2:]
                    given = [a.split("=", 1)[0] for a in rest if a.startswith("-")]
                    for opt in given:
                        if opt not in options:
                            found.append(f"{owner}: argument {opt} is read by no code (not an option of {argv[:2]})")
                    for opt in required_opts:
                        if opt not in given:
                            found.append(f"{owner}: required argument {opt} is not rendered")
        for name in unread:
            found.append(f"{owner}: env {name} is read by no code")
        for name in required:
            found.append(f"{owner}: env {name} is required by the code but not set")
    return found


def metrics_port_problems(objects: list[dict]) -> list[str]:
    """The port each Ray group's `ray start` exports metrics on (KubeRay's generated command)
    must be the container port the PodMonitors scrape."""
    found = []
    ray = one(objects, "RayService")
    spec = ray["spec"]["rayClusterConfig"]
    monitored = {ep["port"] for pm in by_kind(objects, "PodMonitor") for ep in pm["spec"]["podMetricsEndpoints"]}
    for node_type, group in [("head", spec["headGroupSpec"])] + [
        ("worker", g) for g in spec.get("workerGroupSpecs", [])
    ]:
        container = group["template"]["spec"]["containers"][0]
        params = kuberay.set_missing_ray_start_params(
            {k: str(v) for k, v in (group.get("rayStartParams") or {}).items()}, node_type, "6379", "head"
        )
        _, params = kuberay.generate_ray_start_command(node_type, params, container.get("resources") or {})
        exported = int(params["metrics-export-port"])
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        scraped = {ports[name] for name in monitored if name in ports}
        metrics = ports.get("metrics", kuberay.DEFAULT_METRICS_PORT)
        if exported != metrics or (scraped and metrics not in scraped):
            found.append(
                f"{group.get('groupName', 'head')}: ray start exports metrics on {exported}, "
                f"the PodMonitors scrape the port named metrics = {metrics}"
            )
    return found
