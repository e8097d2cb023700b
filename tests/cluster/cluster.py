"""The rendered chart, running: every Pod a host (hosts.py), KubeRay's part mirrored (kuberay.py),
Services as DNS names + virtual IPs whose endpoints follow the Pods' readiness probes."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import kuberay
from hosts import DNS, Network, Pod, selector_matches, start_proxy, write_json_atomic
from k8s_tools import by_kind
from render import REPO, container_port, deep, expand, image_of, one, resolve_env, volume_files

VENV_BIN = REPO / ".venv" / "bin"
WEIGHTS = Path(os.environ.get("MARCELLE_TORCH_CACHE") or REPO / ".cache" / "models")

# The nginx base image of the web app (nginxinc/docker-nginx-unprivileged, 1.29.x), mirrored:
# its /etc/nginx/nginx.conf (unprivileged variant: pid and temp paths under /tmp) ...
NGINX_MAIN_CONF = """worker_processes  auto;
error_log  /dev/stderr notice;
pid        /tmp/nginx.pid;
events {{ worker_connections  1024; }}
http {{
    proxy_temp_path /tmp/proxy_temp;
    client_body_temp_path /tmp/client_temp;
    fastcgi_temp_path /tmp/fastcgi_temp;
    uwsgi_temp_path /tmp/uwsgi_temp;
    scgi_temp_path /tmp/scgi_temp;
    include       /etc/nginx/mime.types;
    default_type  application/octet-stream;
    access_log  /dev/stdout;
    sendfile        on;
    keepalive_timeout  65;
    include {conf_d}/*.conf;
}}
"""
# ... and its entrypoint's steps (docker-entrypoint.d/15-local-resolvers.envsh and
# 20-envsubst-on-templates.sh): templates in /etc/nginx/templates/*.template are rendered
# into /etc/nginx/conf.d/ with envsubst of the variables defined in the environment, after
# NGINX_LOCAL_RESOLVERS was set from /etc/resolv.conf's nameservers when
# NGINX_ENTRYPOINT_LOCAL_RESOLVERS is set. The image's CMD is `nginx -g 'daemon off;'`.
NGINX_TEMPLATE_DIR, NGINX_CONF_D = "/etc/nginx/templates", "/etc/nginx/conf.d"
NGINX_ENTRYPOINT_READS = {
    "NGINX_ENTRYPOINT_LOCAL_RESOLVERS",
    "NGINX_ENVSUBST_TEMPLATE_DIR",
    "NGINX_ENVSUBST_TEMPLATE_SUFFIX",
    "NGINX_ENVSUBST_OUTPUT_DIR",
    "NGINX_ENVSUBST_FILTER",
    "NGINX_ENTRYPOINT_QUIET_LOGS",
    "NGINX_ENTRYPOINT_WORKER_PROCESSES_AUTOTUNE",
}


# The label that tells the release's Deployments apart (mt.componentLabels): the trainer and the
# run worker run the same command, `marcelle-torch worker`.
COMPONENT, TRAINER = "app.kubernetes.io/component", "trainer"


def nginx_envsubst(template: str, env: dict[str, str]) -> str:
    """envsubst limited to defined variables (20-envsubst-on-templates.sh's $defined_envs)."""
    return re.sub(
        r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)",
        lambda m: env.get(m.group(1) or m.group(2), m.group(0)),
        template,
    )


def is_nginx_image(image) -> bool:
    return image.base.split("/")[-1].startswith("nginx")


class Cluster:
    def __init__(self, objects: list[dict], workdir: Path, namespace: str, say=print):
        self.objects, self.workdir, self.namespace, self.say = objects, workdir, namespace, say
        self.domain = self._cluster_domain()
        self.network = Network(workdir)
        self.created_dirs: list[Path] = []
        self.pods: list[Pod] = []
        self.dns = DNS(self.network, workdir, self.domain)
        self.services: dict[str, dict] = {}  # name -> {vip, ports, selector, headless}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.probe_state: dict[tuple[str, str], dict] = {}
        self.rayservice = one(objects, "RayService")
        self.rs_name = self.rayservice["metadata"]["name"]
        self.ray_cluster = kuberay.generate_ray_cluster_name(self.rs_name)
        self.head: Pod | None = None
        # reconcileAuthSecret: the token Secret KubeRay creates for the Ray cluster (none when
        # the chart names one, or token auth is off).
        self.ray_token: str | None = None
        secret = kuberay.auth_secret(self.rayservice, self.ray_cluster)
        if secret is not None:
            self.objects = [*objects, secret]
            self.ray_token = secret["stringData"][kuberay.RAY_AUTH_TOKEN_SECRET_KEY]
        self.ray_workers: list[Pod] = []
        self.events: list[tuple[float, str]] = []
        self.file_hosts: list[subprocess.Popen] = []
        # The Services of the render, plus the three KubeRay creates for a RayService.
        for svc in by_kind(objects, "Service"):
            self._add_service(
                svc["metadata"]["name"],
                svc["spec"].get("selector", {}),
                svc["spec"]["ports"],
                headless=svc["spec"].get("clusterIP") == "None",
            )
        self.proxy, self.proxy_ns, self.endpoints_file = start_proxy(
            self.network,
            workdir,
            [s["vip"] for s in self.services.values() if s["vip"]] + [self.network.virtual_ip() for _ in range(3)],
        )
        self._spare_vips = [ip for ip in self._proxy_vips()]
        self.controller = threading.Thread(target=self._control_loop, name="endpoints", daemon=True)

    # ------------------------------------------------------------------ set-up helpers

    def _cluster_domain(self) -> str:
        """The cluster domain the render uses (from a Service FQDN in any env var)."""
        for deployment in by_kind(self.objects, "Deployment"):
            for c in deployment["spec"]["template"]["spec"]["containers"]:
                for var in c.get("env", []):
                    m = re.search(
                        rf"\.{re.escape(self.namespace)}\.svc\.([a-z0-9.-]+?)(?::\d+|/|$)", str(var.get("value", ""))
                    )
                    if m:
                        return m.group(1)
        return "cluster.local"

    def _proxy_vips(self):
        used = {s["vip"] for s in self.services.values() if s["vip"]}
        base = self.network.subnet.network_address
        return [str(base + i) for i in range(200, self.network._next_vip) if str(base + i) not in used]

    def _add_service(self, name, selector, ports, headless=False, vip=None):
        vip = None if headless else (vip or self.network.virtual_ip())
        self.services[name] = {"vip": vip, "selector": dict(selector), "ports": ports, "headless": headless}
        if vip:
            self.dns.set(name, self.namespace, self.domain, [vip])

    def start_file_host(self, name: str, directory: Path, port: int) -> str:
        """A plain HTTP server of ``directory``'s files as a host of its own on the network (e.g. a
        model store that the chart's values point at), answering to the Service-style name
        ``name`` in the namespace; returns its address once it accepts connections."""
        ip = self.network.address()
        ns = self.network.add_netns(name, [ip])
        log = open(self.workdir / f"{name}.log", "ab")
        argv = [sys.executable, "-m", "http.server", str(port), "--bind", ip, "--directory", str(directory)]
        self.file_hosts.append(
            subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        )
        self.dns.set(name, self.namespace, self.domain, [ip])
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((ip, port), timeout=1).close()
                return ip
            except OSError:
                assert time.monotonic() < deadline, f"file host {name} did not start: {self.workdir / f'{name}.log'}"
                time.sleep(0.2)

    def start_redis_host(self, name: str, port: int, password: str) -> str:
        """Debian's redis-server as a host of its own (a Redis the user runs beside the cluster,
        for the head's GCS fault tolerance), with a password and an append-only file, answering
        to the Service-style name ``name``; returns its address once it answers PING."""
        ip = self.network.address()
        ns = self.network.add_netns(name, [ip])
        data = self.workdir / name
        data.mkdir(exist_ok=True)
        log = open(self.workdir / f"{name}.log", "ab")
        argv = [
            "redis-server", "--bind", ip, "--port", str(port), "--requirepass", password,
            "--appendonly", "yes", "--dir", str(data), "--save", "", "--protected-mode", "no",
        ]  # fmt: skip
        self.file_hosts.append(
            subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        )
        self.dns.set(name, self.namespace, self.domain, [ip])
        deadline = time.monotonic() + 30
        while True:
            ping = subprocess.run(
                ["redis-cli", "-h", ip, "-p", str(port), "--no-auth-warning", "-a", password, "ping"],
                capture_output=True,
                text=True,
            )
            if ping.stdout.strip() == "PONG":
                return ip
            assert time.monotonic() < deadline, f"redis host {name} did not start: {self.workdir / f'{name}.log'}"
            time.sleep(0.2)

    # ------------------------------------------------------------------ containers

    def _container(self, container: dict, pod_meta: dict, pod_spec: dict, pod_dir: Path, kind_image=None) -> dict:
        """A container as a process: argv, env, workdir and mounts, from the render and the image."""
        image = kind_image or image_of(container)
        env = dict(image.env)
        env.update(resolve_env(container, pod_meta, self.objects))
        # The project's venv stands in for the image's Python, ray and marcelle-torch.
        env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin')}"
        workdir = container.get("workingDir") or image.workdir
        # The image's user has its WORKDIR as home in the Ray and worker images; the runtime sets HOME.
        env.setdefault("HOME", workdir)
        if container.get("command"):
            argv = list(container["command"]) + list(container.get("args", []))
        elif container.get("args"):
            argv = list(image.entrypoint) + list(container["args"])
        else:
            argv = list(image.entrypoint) + list(image.cmd)
        argv = [expand(a, env) for a in argv]
        mounts = []
        volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
        bound_images: dict[str, Path] = {}
        copied_under_workdir = [
            src for t, src in image.copies.items() if workdir != "/" and t.startswith(workdir.rstrip("/") + "/")
        ]
        if copied_under_workdir:
            # Files COPYed into WORKDIR from one repository directory (e.g. services/backend -> /app).
            common = Path(os.path.commonpath([str(src) for src in copied_under_workdir]))
            common = common if common.is_dir() else common.parent
            mounts.append((str(common), workdir, "bind"))
            bound_images[workdir] = common
        elif workdir != "/":
            # The image's (empty) WORKDIR, its user's home: one per container.
            home = pod_dir / "home" / container["name"]
            home.mkdir(parents=True, exist_ok=True)
            mounts.append((str(home), workdir, "bind"))
        # Other image content: COPYed repository directories at their image paths (copied first
        # when a volume is mounted inside them, so the repository is never written).
        inner = [m["mountPath"] for m in container.get("volumeMounts", [])]
        for target, source in sorted(image.copies.items()):
            covered = any(target.startswith(t.rstrip("/") + "/") for t in bound_images)
            if source.is_dir() and not target.startswith("/tmp/") and not covered:
                if any(p.startswith(target + "/") for p in inner):
                    copy = pod_dir / "image" / target.strip("/")
                    if not copy.exists():
                        shutil.copytree(source, copy)
                    source = copy
                mounts.append((str(source), target, "bind"))
                bound_images[target] = source
        # Weights baked into the image at MARCELLE_TORCH_CACHE: the repository's trained cache.
        if "MARCELLE_TORCH_CACHE" in image.env:
            mounts.append((str(WEIGHTS), image.env["MARCELLE_TORCH_CACHE"], "bind"))
        for vm in container.get("volumeMounts", []):
            volume = volumes[vm["name"]]
            target = vm["mountPath"]
            files = volume_files(volume, self.objects)
            if files is not None:
                vdir = pod_dir / "volumes" / vm["name"]
                vdir.mkdir(parents=True, exist_ok=True)
                for fname, content in files.items():
                    (vdir / fname).write_text(content)
                if vm.get("subPath"):
                    mounts.append((str(vdir / vm["subPath"]), target, "file"))
                else:
                    mounts.append((str(vdir), target, "bind"))
            elif "emptyDir" in volume and volume["emptyDir"].get("medium") == "Memory":
                limit = (container.get("resources") or {}).get("limits", {}).get("memory")
                size = kuberay.quantity_value(limit) if limit else 64 * 2**20
                mounts.append((str(size), target, "tmpfs"))
            elif "emptyDir" in volume:
                vdir = pod_dir / "volumes" / vm["name"]
                vdir.mkdir(parents=True, exist_ok=True)
                os.chmod(vdir, 0o1777)
                if vm.get("subPath"):  # the kubelet makes a missing subPath folder
                    vdir = vdir / vm["subPath"]
                    vdir.mkdir(parents=True, exist_ok=True)
                mounts.append((str(vdir), target, "bind"))
            elif "persistentVolumeClaim" in volume:
                vdir = self.workdir / "pv" / volume["persistentVolumeClaim"]["claimName"]
                vdir.mkdir(parents=True, exist_ok=True)
                mounts.append((str(vdir), target, "bind"))
            else:
                raise AssertionError(f"volume {vm['name']}: unsupported kind {sorted(volume)}")
        if is_nginx_image(image):
            argv = self._nginx_entrypoint(image, env, mounts, pod_dir, container["name"])
        return {
            "name": container["name"],
            "argv": argv,
            "env": env,
            "workdir": workdir,
            "mounts": mounts,
            "spec": container,
        }

    def _nginx_entrypoint(self, image, env, mounts, pod_dir: Path, name: str) -> list[str]:
        """The nginx image's entrypoint steps, done here into the container's conf.d volume."""
        conf_d = next((Path(src) for src, target, kind in mounts if target == NGINX_CONF_D), None)
        if conf_d is None:
            conf_d = pod_dir / "image" / "conf.d"
            conf_d.mkdir(parents=True, exist_ok=True)
            mounts.append((str(conf_d), NGINX_CONF_D, "bind"))
        if env.get("NGINX_ENTRYPOINT_LOCAL_RESOLVERS"):
            resolv = (pod_dir / "resolv.conf").read_text()
            env["NGINX_LOCAL_RESOLVERS"] = " ".join(
                f"[{ip}]" if ":" in ip else ip for ip in re.findall(r"^nameserver\s+(\S+)", resolv, re.M)
            )
        for target, source in image.copies.items():
            if target.startswith(NGINX_TEMPLATE_DIR + "/") and target.endswith(".template"):
                out = conf_d / Path(target).name[: -len(".template")]
                out.write_text(nginx_envsubst(source.read_text(), env))
        main = pod_dir / "image" / f"{name}-nginx.conf"
        main.parent.mkdir(parents=True, exist_ok=True)
        main.write_text(NGINX_MAIN_CONF.format(conf_d=NGINX_CONF_D))
        mounts.append((str(main), "/etc/nginx/nginx.conf", "file"))
        return ["nginx", "-g", "daemon off;"]

    # ------------------------------------------------------------------ pods

    def _new_pod(self, name: str, labels: dict, spec: dict) -> Pod:
        pod = Pod(
            self.network,
            self.network.gateway,
            self.workdir / "pods",
            name,
            self.namespace,
            self.domain,
            labels,
            spec,
            self.created_dirs,
        )
        self.pods.append(pod)
        return pod

    def _meta(self, pod: Pod) -> dict:
        return {
            "metadata": {"name": pod.name, "namespace": self.namespace, "labels": pod.labels},
            "status": {"podIP": pod.ip},
            "spec": pod.spec,
        }

    def start_deployment(self, deployment: dict, index: int = 0) -> Pod:
        template = deployment["spec"]["template"]
        name = f"{deployment['metadata']['name']}-{index}abc-x{index}yz"
        pod = self._new_pod(name, dict(template["metadata"].get("labels", {})), deep(template["spec"]))
        meta = self._meta(pod)
        inits = [self._container(c, meta, pod.spec, pod.dir) for c in pod.spec.get("initContainers", [])]
        containers = [self._container(c, meta, pod.spec, pod.dir) for c in pod.spec["containers"]]
        pod.processes = containers
        pod.start(inits, containers)
        self.events.append((time.monotonic(), f"start {name}"))
        return pod

    def start_ray_pod(self, node_type: str, group: dict | None, rayservice: dict | None = None) -> Pod:
        """A Ray Pod as KubeRay builds it (kuberay.build_pod) from the (possibly edited) RayService."""
        rs = rayservice or self.rayservice
        spec = rs["spec"]["rayClusterConfig"]["headGroupSpec"] if node_type == "head" else group
        group_name = "headgroup" if node_type == "head" else group["groupName"]
        suffix = f"{len(self.pods):02d}x{os.getpid() % 1000:03d}"[-5:]
        name = (
            f"{self.ray_cluster}-head-{suffix}"
            if node_type == "head"
            else f"{self.ray_cluster}-{group_name}-worker-{suffix}"
        )
        fqdn = kuberay.fqdn_service_name(self.ray_cluster, self.namespace, self.domain)
        pod = self._new_pod(name, {}, {})
        built = kuberay.build_pod(spec, node_type, self.ray_cluster, group_name, self.namespace, rs, name, pod.ip, fqdn)
        pod.labels, pod.spec, pod.ray_start_params = built["metadata"]["labels"], built["spec"], built["rayStartParams"]
        # BuildPod: a RayService's worker Pods carry ray.io/serve=true; the head starts "false"
        # and the RayService controller flips it (updateHeadPodServeLabel).
        pod.labels["ray.io/serve"] = "false" if node_type == "head" else "true"
        meta = self._meta(pod)
        image = image_of(built["spec"]["containers"][0])
        inits = [self._container(c, meta, pod.spec, pod.dir, image) for c in pod.spec.get("initContainers", [])]
        # The autoscaler sidecar (DefaultHeadPodTemplate) needs the Kubernetes API: not started here.
        containers = [self._container(built["spec"]["containers"][0], meta, pod.spec, pod.dir, image)]
        pod.processes = containers
        pod.start(inits, containers)
        if node_type == "head":
            self.head = pod
            # The head Services are headless (BuildServiceForHeadPod: ClusterIP None,
            # publishNotReadyAddresses): their names resolve to the head Pod's IP.
            for owner in (self.ray_cluster, self.rs_name):
                self.dns.set(kuberay.head_service_name(owner), self.namespace, self.domain, [pod.ip])
        else:
            self.ray_workers.append(pod)
        self.events.append((time.monotonic(), f"start {name}"))
        return pod

    def create_serve_service(self) -> None:
        """BuildServeService (common/service.go): <rayservice>-serve-svc, selecting the
        cluster's Pods labelled ray.io/serve=true, on the head's ports named serve*."""
        head_container = self.rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][
            0
        ]
        ports = [
            {"name": p["name"], "port": p["containerPort"], "targetPort": p["containerPort"]}
            for p in head_container.get("ports", [])
            if p["name"] == "serve" or p["name"].startswith("serve-")
        ]
        assert ports, "the head container has no port named serve (KubeRay refuses the RayService)"
        self._add_service(
            kuberay.serve_service_name(self.rs_name),
            {"ray.io/cluster": self.ray_cluster, "ray.io/serve": "true"},
            ports,
            vip=self._spare_vips.pop(0),
        )

    # ------------------------------------------------------------------ probes and endpoints

    def probe(self, pod: Pod, container: dict, probe: dict) -> tuple[bool, str]:
        """One run of a rendered probe, as the kubelet runs it."""
        timeout = probe.get("timeoutSeconds", 1)
        if "exec" in probe:
            try:
                result = pod.exec(probe["exec"]["command"], timeout)
            except Exception as exc:  # noqa: BLE001 - a probe that cannot run fails
                return False, repr(exc)
            return result.returncode == 0, (result.stdout + result.stderr)[-300:]
        if "httpGet" in probe:
            get = probe["httpGet"]
            url = f"http://{pod.ip}:{container_port(container, get['port'])}{get.get('path', '/')}"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    return 200 <= response.status < 400, f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                return 200 <= exc.code < 400, f"HTTP {exc.code}"
            except Exception as exc:  # noqa: BLE001
                return False, f"{url}: {exc!r}"
        if "tcpSocket" in probe:
            try:
                with socket.create_connection((pod.ip, container_port(container, probe["tcpSocket"]["port"])), timeout):
                    return True, "connected"
            except OSError as exc:
                return False, repr(exc)
        raise AssertionError(f"unsupported probe {sorted(probe)}")

    def _control_loop(self):
        last_written = None
        while not self.stopping.is_set():
            now = time.monotonic()
            for pod in list(self.pods):
                if not pod.alive():
                    pod.ready = False
                    continue
                states = []
                for c in pod.processes:
                    spec = c["spec"]
                    probe = spec.get("readinessProbe")
                    key = (pod.name, c["name"])
                    state = self.probe_state.setdefault(key, {"ok": probe is None, "next": 0})
                    if probe is not None and now >= max(
                        state["next"], pod.started_at + probe.get("initialDelaySeconds", 0)
                    ):
                        ok, _ = self.probe(pod, spec, probe)
                        state["ok"], state["next"] = ok, time.monotonic() + probe.get("periodSeconds", 10)
                    states.append(state["ok"])
                pod.ready = all(states)
                if pod is self.head:
                    # updateHeadPodServeLabel, on each reconcile of the RayService controller.
                    port = container_port(pod.spec["containers"][0], "serve")
                    pod.labels["ray.io/serve"] = str(kuberay.check_proxy_actor_health(pod.ip, port)).lower()
            endpoints = {}
            for svc in self.services.values():
                if not svc["vip"]:
                    continue
                for port in svc["ports"]:
                    eps = []
                    for pod in self.pods:
                        if (
                            pod.ready
                            and pod.alive()
                            and svc["selector"]
                            and selector_matches(svc["selector"], pod.labels)
                        ):
                            target = port.get("targetPort", port["port"])
                            eps.append(
                                [
                                    pod.ip,
                                    container_port(pod.spec["containers"][0], target)
                                    if not str(target).isdigit()
                                    else int(target),
                                ]
                            )
                    endpoints[f"{svc['vip']}:{port['port']}"] = eps
            if endpoints != last_written:
                write_json_atomic(self.endpoints_file, endpoints)
                last_written = endpoints
                self.endpoints = endpoints
            self.stopping.wait(1)

    def wait_ready(self, pods: list[Pod], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(p.ready for p in pods):
                return
            dead = [p for p in pods if not p.alive()]
            assert not dead, f"pod {dead[0].name} exited:\n" + "\n".join(
                dead[0].log(c["name"]) for c in dead[0].processes
            )
            time.sleep(1)
        slow = [p for p in pods if not p.ready]
        raise AssertionError(
            f"pods not ready after {timeout:.0f}s: {[p.name for p in slow]}\n"
            + "\n".join(f"--- {p.name}/{c['name']}\n{p.log(c['name'])}" for p in slow for c in p.processes)
        )

    def webapp_service(self) -> dict:
        """The Service in front of the nginx (web app) Pods: the one to port-forward."""
        for svc in self.services.values():
            pods = self.pods_of(svc["selector"]) if svc["selector"] else []
            if pods and any(c["argv"][:1] == ["nginx"] for c in pods[0].processes):
                return svc
        raise AssertionError("no Service selects the web app (nginx) Pods")

    def webapp_pod(self) -> Pod:
        return self.pods_of(self.webapp_service()["selector"])[0]

    def worker_pods(self) -> list[Pod]:
        """The Pods running `marcelle-torch worker` (their first container's command): the run
        worker's and, with `training.enabled`, the trainer's."""
        found = []
        for pod in self.pods:
            argv = pod.processes[0]["argv"] if pod.processes else []
            if pod.alive() and len(argv) > 1 and argv[0].endswith("marcelle-torch") and argv[1] == "worker":
                found.append(pod)
        return found

    def run_worker_pod(self) -> Pod:
        """The run worker's Pod: the `marcelle-torch worker` Pod that is not the trainer."""
        pods = [p for p in self.worker_pods() if p.labels.get(COMPONENT) != TRAINER]
        assert pods, "no Pod runs `marcelle-torch worker` but the trainer"
        return pods[0]

    def trainer_pod(self) -> Pod:
        """The training worker's Pod (the trainer Deployment's, `training.enabled`)."""
        pods = [p for p in self.worker_pods() if p.labels.get(COMPONENT) == TRAINER]
        assert pods, "no trainer Pod runs `marcelle-torch worker` (training.enabled off?)"
        return pods[0]

    def metrics_targets(self) -> list[tuple[Pod, str, str]]:
        """(pod, port name, URL) of every PodMonitor endpoint on every Pod it selects."""
        targets = []
        for monitor in by_kind(self.objects, "PodMonitor"):
            selector = monitor["spec"]["selector"].get("matchLabels", {})
            for pod in self.pods_of(selector):
                for endpoint in monitor["spec"]["podMetricsEndpoints"]:
                    port = None
                    for container in pod.spec["containers"]:
                        try:
                            port = container_port(container, endpoint["port"])
                            break
                        except AssertionError:
                            continue
                    assert port, (
                        f"PodMonitor {monitor['metadata']['name']}: pod {pod.name} has no port {endpoint['port']}"
                    )
                    targets.append((pod, endpoint["port"], f"http://{pod.ip}:{port}{endpoint.get('path', '/metrics')}"))
        return targets

    def wait_endpoints(self, service: str, timeout: float) -> list:
        """Until the Service's first port has a ready endpoint in the proxy's table."""
        svc = self.services[service]
        key = f"{svc['vip']}:{svc['ports'][0]['port']}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            eps = getattr(self, "endpoints", {}).get(key)
            if eps:
                time.sleep(0.5)  # the proxy reads the table every 0.2 s
                return eps
            time.sleep(0.5)
        raise AssertionError(f"Service {service} has no ready endpoint after {timeout:.0f}s")

    def pods_of(self, selector: dict) -> list[Pod]:
        return [p for p in self.pods if p.alive() and selector_matches(selector, p.labels)]

    def teardown(self) -> list[str]:
        """Kill every process, delete every namespace and link; returns what could not be cleaned."""
        self.stopping.set()
        problems = []
        for pod in self.pods:
            pod.kill()
        for proc in (self.proxy, *self.file_hosts):
            proc.kill()
            proc.wait(10)
        self.dns.stop()
        self.network.teardown()
        # Mount points this tier had to create on the machine: removed when empty (never rmtree).
        # Empty files are the mount points of single files (subPath mounts), made by touch.
        for top in sorted(self.created_dirs, key=lambda p: len(str(p)), reverse=True):
            if top.is_file():
                top.unlink() if top.stat().st_size == 0 else problems.append(f"{top}: not empty")
                continue
            for root, _dirs, files in os.walk(top, topdown=False):
                for name in files:
                    path = Path(root) / name
                    if path.stat().st_size == 0:
                        path.unlink()
                try:
                    os.rmdir(root)
                except OSError as exc:
                    problems.append(f"{root}: {exc}")
        return problems
