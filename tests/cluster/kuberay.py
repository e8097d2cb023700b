"""What the KubeRay operator v1.7.0 does with a RayService, as far as this tier needs it.

Each function names the upstream function it mirrors (github.com/ray-project/kuberay, tag
v1.7.0, ray-operator/controllers/ray/...). Only the paths the chart's RayService takes are
mirrored (token auth and Redis-backed GCS fault tolerance included; no TLS, history server,
multi-host groups).
"""

from __future__ import annotations

import json
import math
import random
import re
import string
import urllib.error
import urllib.request

# utils/constant.go (v1.7.0)
DEFAULT_HEAD_PORT = "6379"  # GetHeadPort() default (common/pod.go)
DEFAULT_METRICS_PORT = 8080  # DefaultMetricsPort
DEFAULT_DASHBOARD_PORT = 8265  # DefaultDashboardPort
DEFAULT_DASHBOARD_AGENT_LISTEN_PORT = 52365  # DefaultDashboardAgentListenPort
DEFAULT_SERVING_PORT = 8000  # DefaultServingPort
RAY_SERVE_PROXY_HEALTH_PATH = "-/healthz"  # RayServeProxyHealthPath
# utils/dashboardclient/dashboard_httpclient.go (v1.7.0)
DEPLOY_PATH_V2 = "/api/serve/applications/"  # DeployPathV2, PUT
SERVE_DETAILS_PATH = "/api/serve/applications/"  # ServeDetailsPath, GET ?api_type=declarative
API_TYPE_PARAM = "declarative"
RAY_AUTH_TOKEN_SECRET_KEY = "auth_token"  # utils/constant.go
AUTH_HEADER = "x-ray-authorization"  # dashboard_httpclient.go, set when the cluster's auth mode is token


def check_name(name: str) -> str:
    """utils/util.go CheckName: clipped from the front to 50 characters, a leading digit or
    non-alphanumeric character replaced by `r`."""
    if len(name) > 50:
        name = name[len(name) - 50 :]
    if not name[0].isalpha():
        name = "r" + name[1:]
    return name


def auth_secret(rayservice: dict, cluster: str) -> dict | None:
    """raycluster_controller.go reconcileAuthSecret / createAuthSecret: with authOptions mode
    token and no secretName, a Secret CheckName(<cluster>) holding a random token (32 random
    bytes, standard base64) under `auth_token`; None when KubeRay creates none."""
    import base64
    import os

    options = rayservice["spec"]["rayClusterConfig"].get("authOptions") or {}
    if options.get("mode") != "token" or options.get("enableK8sTokenAuth") or options.get("secretName"):
        return None
    token = base64.b64encode(os.urandom(32)).decode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": check_name(cluster), "labels": {"ray.io/cluster": cluster}},
        "stringData": {RAY_AUTH_TOKEN_SECRET_KEY: token},
    }


def auth_env(rayservice: dict, cluster: str) -> list[dict]:
    """common/pod.go SetContainerTokenAuthEnvVars (not the K8s-token variant): RAY_AUTH_MODE and
    RAY_AUTH_TOKEN from the auth Secret; [] when token auth is off."""
    options = rayservice["spec"]["rayClusterConfig"].get("authOptions") or {}
    if options.get("mode") != "token":
        return []
    assert not options.get("enableK8sTokenAuth"), "K8s token auth is not mirrored here"
    secret = options.get("secretName") or check_name(cluster)
    return [
        {"name": "RAY_AUTH_MODE", "value": "token"},
        {
            "name": "RAY_AUTH_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": secret, "key": RAY_AUTH_TOKEN_SECRET_KEY}},
        },
    ]


def storage_namespace(cluster: str) -> str:
    """The RayCluster's UID, which configureRedisFT uses as RAY_external_storage_namespace: one
    per RayCluster object, the same for every head Pod it creates (made up here, stable)."""
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_DNS, cluster))


def configure_gcs_fault_tolerance(template: dict, params: dict, rayservice: dict, cluster: str, node_type: str) -> None:
    """common/pod.go configureGCSFaultTolerance + configureRedisFT (Redis backend): the head gets
    the ray.io/ft-enabled annotation, RAY_external_storage_namespace, RAY_REDIS_ADDRESS,
    REDIS_PASSWORD and rayStartParams redis-password=$REDIS_PASSWORD; a worker gets
    RAY_GCS_RPC_SERVER_RECONNECT_TIMEOUT_S=600 (DefaultWorkerRayGcsReconnectTimeoutS)."""
    options = rayservice["spec"]["rayClusterConfig"].get("gcsFaultToleranceOptions")
    annotations = template["metadata"].setdefault("annotations", {})
    if node_type == "head":
        annotations["ray.io/ft-enabled"] = "true" if options is not None else "false"
    if options is None:
        return
    assert options.get("backend", "redis") == "redis", "only the Redis backend is mirrored"
    env = template["spec"]["containers"][0].setdefault("env", [])
    names = {e["name"] for e in env}
    if node_type == "worker":
        if "RAY_GCS_RPC_SERVER_RECONNECT_TIMEOUT_S" not in names:
            env.append({"name": "RAY_GCS_RPC_SERVER_RECONNECT_TIMEOUT_S", "value": "600"})
        return
    namespace = options.get("externalStorageNamespace") or storage_namespace(cluster)
    annotations["ray.io/external-storage-namespace"] = namespace
    if "RAY_external_storage_namespace" not in names:
        env.append({"name": "RAY_external_storage_namespace", "value": namespace})
    env.append({"name": "RAY_REDIS_ADDRESS", "value": options["redisAddress"]})
    if "redisPassword" in options:
        params["redis-password"] = "$REDIS_PASSWORD"
        env.append({"name": "REDIS_PASSWORD", **options["redisPassword"]})


def _headers(token: str | None) -> dict:
    return {AUTH_HEADER: f"Bearer {token}"} if token else {}


def parse_quantity(text) -> float:
    """A Kubernetes resource.Quantity as a number (cpu in cores, memory in bytes)."""
    text = str(text)
    suffixes = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", text)
    number, suffix = float(match.group(1)), match.group(2)
    return number * suffixes[suffix] if suffix else number


def quantity_value(text) -> int:
    """resource.Quantity.Value(): the value rounded up to an integer (k8s.io/apimachinery)."""
    return math.ceil(parse_quantity(text))


def generate_ray_cluster_name(service_name: str) -> str:
    """utils/util.go GenerateRayClusterName: <rayservice>-<5 random chars>."""
    return f"{service_name}-{''.join(random.choices(string.ascii_lowercase + string.digits, k=5))}"


def head_service_name(owner: str) -> str:
    """utils/util.go GenerateHeadServiceName: <owner>-head-svc (RayCluster's and RayService's)."""
    return f"{owner}-head-svc"


def serve_service_name(rayservice: str) -> str:
    """utils/util.go GenerateServeServiceName: <rayservice>-serve-svc."""
    return f"{rayservice}-serve-svc"


def fqdn_service_name(cluster: str, namespace: str, domain: str = "cluster.local") -> str:
    """utils/util.go GenerateFQDNServiceName: the RayCluster's head Service, fully qualified."""
    return f"{head_service_name(cluster)}.{namespace}.svc.{domain}"


def label_pod(node_type: str, cluster: str, group: str, template_labels: dict) -> dict:
    """common/pod.go labelPod: KubeRay's labels, then the template's (not the three fixed ones)."""
    labels = {
        "ray.io/is-ray-node": "yes",
        "ray.io/cluster": cluster,
        "ray.io/node-type": node_type,
        "ray.io/group": group,
        "ray.io/identifier": f"{cluster}-{node_type}",
        "app.kubernetes.io/name": "kuberay",
        "app.kubernetes.io/created-by": "kuberay-operator",
    }
    for key, value in (template_labels or {}).items():
        if key not in ("ray.io/node-type", "ray.io/group", "ray.io/cluster"):
            labels[key] = value
    return labels


def set_missing_ray_start_params(params: dict, node_type: str, head_port: str, fqdn_ray_ip: str) -> dict:
    """common/pod.go setMissingRayStartParams."""
    params = dict(params)
    if node_type == "worker" and "address" not in params:
        params["address"] = f"{fqdn_ray_ip}:{head_port}"
    if node_type == "head" and "dashboard-host" not in params:
        params["dashboard-host"] = "0.0.0.0"
    if "metrics-export-port" not in params:
        params["metrics-export-port"] = str(DEFAULT_METRICS_PORT)
    params["block"] = "true"
    if "dashboard-agent-listen-port" not in params:
        params["dashboard-agent-listen-port"] = str(DEFAULT_DASHBOARD_AGENT_LISTEN_PORT)
    return params


def add_well_known_accelerator_resources(params: dict, limits: dict) -> None:
    """common/pod.go addWellKnownAcceleratorResources (GPU keys only: utils.IsGPUResourceKey)."""
    for key in sorted(limits or {}):
        if "num-gpus" not in params and key.endswith("/gpu") and quantity_value(limits[key]) != 0:
            params["num-gpus"] = str(quantity_value(limits[key]))


def convert_param_map(params: dict) -> str:
    """common/pod.go convertParamMap: sorted ` --key=value ` flags; "true" is a bare flag, "false" dropped."""
    special = ("log-color", "include-dashboard", "include-log-monitor")
    flags = ""
    for option in sorted(params):
        argument = str(params[option])
        if argument.lower() in ("true", "false") and option not in special:
            if argument.lower() == "true":
                flags += f" --{option} "
        else:
            flags += f" --{option}={argument} "
    return flags


def generate_ray_start_command(node_type: str, params: dict, resources: dict) -> tuple[str, dict]:
    """common/pod.go generateRayStartCommand: --num-cpus from the CPU limit (else request),
    --memory from the memory limit, accelerators, then `ray start [--head] <flags>`."""
    params = dict(params)
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    if "num-cpus" not in params:
        cpu = limits.get("cpu") or requests.get("cpu")
        if cpu and quantity_value(cpu) != 0:
            params["num-cpus"] = str(quantity_value(cpu))
    if "memory" not in params and limits.get("memory"):
        params["memory"] = str(quantity_value(limits["memory"]))
    add_well_known_accelerator_resources(params, limits)
    head = "--head " if node_type == "head" else ""
    return f"ray start {head}{convert_param_map(params)}", params


def build_pod(
    spec: dict,
    node_type: str,
    cluster: str,
    group: str,
    namespace: str,
    rayservice: dict,
    pod_name: str,
    pod_ip: str,
    fqdn_ray_ip: str,
) -> dict:
    """DefaultHeadPodTemplate / DefaultWorkerPodTemplate + BuildPod (common/pod.go): the Pod
    KubeRay creates from a group spec. Returns the Pod (container 0 is the Ray container, its
    args the generated command) with `initContainers` where KubeRay injects them."""
    template = json.loads(json.dumps(spec["template"]))
    params = {k: str(v) for k, v in (spec.get("rayStartParams") or {}).items()}
    head_port = params.get("port", DEFAULT_HEAD_PORT) if node_type == "head" else DEFAULT_HEAD_PORT
    cluster_spec = rayservice["spec"]["rayClusterConfig"]
    labels = label_pod(node_type, cluster, group, template["metadata"].get("labels", {}))
    params = set_missing_ray_start_params(params, node_type, head_port, fqdn_ray_ip)
    pod_spec = template["spec"]
    ray = pod_spec["containers"][0]
    env = ray.setdefault("env", [])
    if node_type == "head" and cluster_spec.get("enableInTreeAutoscaling"):
        # DefaultHeadPodTemplate: the monitor is off, the autoscaler runs as a sidecar (it needs
        # the Kubernetes API, so this tier does not start it) and RAY_ENABLE_AUTOSCALER_V2 says
        # which autoscaler (setAutoscalerV1EnvVars / setAutoscalerV2EnvVars).
        params["no-monitor"] = "true"
        v2 = (cluster_spec.get("autoscalerOptions") or {}).get("version") == "v2"
        env.append({"name": "RAY_ENABLE_AUTOSCALER_V2", "value": "true" if v2 else "false"})
    configure_gcs_fault_tolerance(template, params, rayservice, cluster, node_type)
    # configureTokenAuth (DefaultHeadPodTemplate / DefaultWorkerPodTemplate): the Ray container,
    # and below the wait-gcs-ready init container, get the token.
    for var in auth_env(rayservice, cluster):
        if not any(e.get("name") == var["name"] for e in env):
            env.append(var)
    if not any(p.get("name") == "metrics" for p in ray.get("ports", [])):
        ray.setdefault("ports", []).append({"name": "metrics", "containerPort": DEFAULT_METRICS_PORT})
    if node_type == "worker":
        # DefaultWorkerPodTemplate: the wait-gcs-ready init container (ENABLE_INIT_CONTAINER_INJECTION default).
        pod_spec["initContainers"] = pod_spec.get("initContainers", []) + [
            {
                "name": "wait-gcs-ready",
                "image": ray["image"],
                "command": ["/bin/bash", "-c", "--"],
                "args": [
                    f"SECONDS=0; while true; do if ray health-check --address {fqdn_ray_ip}:{head_port} "
                    f"> /dev/null 2>&1; then echo 'GCS is ready.'; break; fi; "
                    f'echo "$SECONDS seconds elapsed: Waiting for GCS to be ready."; sleep 5; done'
                ],
                "env": list(env),
                "volumeMounts": list(ray.get("volumeMounts", [])),
            }
        ]
    # BuildPod: /dev/shm as a memory emptyDir for the object store (addEmptyDir).
    if "plasma-directory" not in params:
        ray.setdefault("volumeMounts", []).append({"name": "shared-mem", "mountPath": "/dev/shm"})
        pod_spec.setdefault("volumes", []).append({"name": "shared-mem", "emptyDir": {"medium": "Memory"}})
    # BuildPod: `ulimit -n ...; ray start ...` replaces the container's command, which becomes
    # utils.GetContainerCommand: `/bin/bash -c --` (`-lc` only with ENABLE_LOGIN_SHELL=true).
    ray_start, params = generate_ray_start_command(node_type, params, ray.get("resources") or {})
    user_cmd = " ".join(ray.get("command", []) + ray.get("args", []))
    generated = f"ulimit -n ${{RAY_START_ULIMIT_OPEN_FILES:-65536}}; {ray_start}"
    if "ray start" not in user_cmd:
        ray["command"] = ["/bin/bash", "-c", "--"]
        ray["args"] = [f"{user_cmd} && {generated}" if user_cmd else generated]
    # setContainerEnvVars
    names = {e["name"] for e in env}

    def add(name, value=None, field=None):
        if name in names:
            return
        names.add(name)
        env.append(
            {"name": name, "value": value}
            if field is None
            else {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field}}}
        )

    ip = "127.0.0.1" if node_type == "head" else fqdn_ray_ip  # utils.LOCAL_HOST for the head
    if node_type == "worker":
        env.append({"name": "FQ_RAY_IP", "value": ip})
        env.append({"name": "RAY_IP", "value": ip.split(".")[0]})  # ExtractRayIPFromFQDN
        names.update({"FQ_RAY_IP", "RAY_IP"})
    env.append(
        {"name": "RAY_CLUSTER_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['ray.io/cluster']"}}}
    )
    env.append({"name": "RAY_CLUSTER_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}})
    env.append({"name": "RAY_CLOUD_INSTANCE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    env.append(
        {"name": "RAY_NODE_TYPE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['ray.io/group']"}}}
    )
    env.append({"name": "KUBERAY_GEN_RAY_START_CMD", "value": ray_start})
    add("RAY_PORT", head_port)
    # Only for a RayService's cluster (utils.RayServiceCRD).
    add("RAY_TIMEOUT_MS_TASK_WAIT_FOR_DEATH_INFO", "0")
    add("RAY_GCS_SERVER_REQUEST_TIMEOUT_SECONDS", "5")
    add("RAY_SERVE_KV_TIMEOUT_S", "5")
    add("RAY_ADDRESS", f"{ip}:{head_port}")
    add("RAY_USAGE_STATS_KUBERAY_IN_USE", "1")
    if node_type == "head":
        env.append({"name": "RAY_USAGE_STATS_EXTRA_TAGS", "value": "kuberay_version=v1.7.0;kuberay_crd=RayService"})
    add("RAY_DASHBOARD_ENABLE_K8S_DISK_USAGE", "1")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name,
            "namespace": namespace,
            "labels": labels,
            "annotations": template["metadata"].get("annotations", {}),
        },
        "spec": pod_spec,
        "status": {"podIP": pod_ip},
        "rayStartParams": params,
    }


# ----------------------------------------------------------------- RayService controller


def update_serve_deployment(
    dashboard_url: str, serve_config_v2: str, timeout: float = 60, token: str | None = None
) -> None:
    """rayservice_controller.go updateServeDeployment + dashboardclient UpdateDeployments:
    serveConfigV2 (YAML) unmarshalled, marshalled to JSON, PUT to DeployPathV2 (with the
    cluster's token when its auth mode is token: GetRayDashboardClientFunc)."""
    import yaml

    body = json.dumps(yaml.safe_load(serve_config_v2)).encode()
    request = urllib.request.Request(
        dashboard_url + DEPLOY_PATH_V2,
        data=body,
        method="PUT",
        headers={"Content-Type": "application/json", **_headers(token)},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, text = response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode(errors="replace")
    if not 200 <= status <= 299:
        raise AssertionError(f"UpdateDeployments fail: {status} {text[:2000]}")


def get_and_check_serve_status(dashboard_url: str, timeout: float = 30, token: str | None = None) -> tuple[bool, dict]:
    """rayservice_controller.go getAndCheckServeStatus + dashboardclient GetServeDetails:
    ready only when there is at least one application and every one is RUNNING."""
    url = f"{dashboard_url}{SERVE_DETAILS_PATH}?api_type={API_TYPE_PARAM}"
    request = urllib.request.Request(url, headers=_headers(token))
    with urllib.request.urlopen(request, timeout=timeout) as response:
        details = json.loads(response.read())
    apps = {}
    for name, app in (details.get("applications") or {}).items():
        apps[name or "default"] = {  # utils.DefaultServeAppName
            "status": app.get("status"),
            "message": app.get("message", ""),
            "deployments": {d: v.get("status") for d, v in (app.get("deployments") or {}).items()},
        }
    ready = bool(apps) and all(a["status"] == "RUNNING" for a in apps.values())
    return ready, apps


def check_if_need_submit_serve_applications(cached: str, serve_config_v2: str, apps: dict) -> tuple[bool, str]:
    """rayservice_controller.go checkIfNeedSubmitServeApplications: the serve config is sent
    again when nothing was cached, when the cluster has no application (a head that crashed
    without GCS fault tolerance), or when the config changed."""
    if not cached:
        return True, "Nothing has been cached for the cluster."
    if not apps:
        return True, "No Serve application found in the RayCluster (head crashed without GCS FT?)."
    if cached != serve_config_v2:
        return True, "Current V2 Serve config doesn't match cached Serve config."
    return False, "Current V2 Serve config matches cached Serve config."


def check_proxy_actor_health(pod_ip: str, serving_port: int, timeout: float = 2) -> bool:
    """rayservice_controller.go updateHeadPodServeLabel -> httpproxy CheckProxyActorHealth:
    GET http://<head pod IP>:<serve port>/-/healthz; the head is in the Serve Service only if 200."""
    try:
        with urllib.request.urlopen(
            f"http://{pod_ip}:{serving_port}/{RAY_SERVE_PROXY_HEALTH_PATH}", timeout=timeout
        ) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False
