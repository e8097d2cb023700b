"""templates/worker-deployment.yaml: the run worker reaches the backend, exposes metrics, and
gets its backend account from the Secret only when authentication is on."""

from __future__ import annotations

from k8s_tools import ci_values, one, render


def worker_container(objects):
    return one(objects, "Deployment", "-worker")["spec"]["template"]["spec"]["containers"][0]


def test_worker_command_line():
    container = worker_container(render(ci_values("default")))
    args = container["args"]
    assert args[0] == "worker"
    backend = args[args.index("--backend") + 1]
    assert backend == "http://mt-marcelle-torch-backend.marcelle-torch.svc.cluster.local:3030"
    assert args[args.index("--metrics-port") + 1] == "9100"
    assert args[args.index("--name") + 1] == "$(POD_NAME)"
    assert {"name": "metrics", "containerPort": 9100} in container["ports"]


def test_credentials_only_with_auth():
    names = {e["name"] for e in worker_container(render(sets=("backend.auth.enabled=false",))).get("env", [])}
    assert not {n for n in names if "PASSWORD" in n or "EMAIL" in n}
    objects = render(ci_values("auth"))
    env = {e["name"]: e for e in worker_container(objects)["env"]}
    secret = one(objects, "Secret")["metadata"]["name"]
    for name, key in (("MARCELLE_WORKER_EMAIL", "worker-email"), ("MARCELLE_WORKER_PASSWORD", "worker-password")):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": key}


def test_replicas_follow_values():
    deployment = one(render(sets=("worker.replicas=3",)), "Deployment", "-worker")
    assert deployment["spec"]["replicas"] == 3


def test_credentials_from_a_pinned_secret():
    env = {e["name"]: e for e in worker_container(render(sets=("backend.existingSecret=mt-pinned",)))["env"]}
    assert env["MARCELLE_WORKER_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mt-pinned"
