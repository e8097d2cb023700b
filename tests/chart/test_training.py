"""templates/trainer-deployment.yaml and model-store-pvc.yaml (training in the loop): the trainer
is the run worker's container for the trainable models (built-in or `models`), with `--store` at the model store's
mount; the store is one claim mounted at one path, with MARCELLE_TORCH_STORE, read-write where
versions are written (trainer, run worker) and read-only where `published` is followed (Ray Pods,
the web app's nginx); GPUs as the Ray GPU group has them; off by default, rendering as before."""

from __future__ import annotations

import copy
import re

import pytest
import yaml
from k8s_tools import CHART, REPO, by_kind, ci_values, one, pod_specs, render, render_text

STORE = "/var/lib/marcelle-torch/store"
CLAIM = "mt-marcelle-torch-model-store"
TRAINING = ci_values("training")
VALUES = yaml.safe_load(TRAINING.read_text())
# Who writes versions (training and publish runs) and who only follows `published`.
WRITERS = ("Deployment/mt-marcelle-torch-trainer", "Deployment/mt-marcelle-torch-worker")
READERS = (
    "RayService/mt-marcelle-torch head",
    "RayService/mt-marcelle-torch group cpu",
    "Deployment/mt-marcelle-torch-webapp",
)


def trainer(objects) -> dict:
    return one(objects, "Deployment", "-trainer")


def trainer_container(objects) -> dict:
    return trainer(objects)["spec"]["template"]["spec"]["containers"][0]


def values_file(tmp_path, values: dict) -> str:
    """A values file of its own (render() caches by path)."""
    path = tmp_path / f"values-{len(list(tmp_path.glob('values-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def env_of(container) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def test_the_trainer_is_the_run_workers_command_for_the_trainable_models():
    from marcelle_torch.cli import build_parser

    objects = render(TRAINING)
    container = trainer_container(objects)
    worker = one(objects, "Deployment", "-worker")["spec"]["template"]["spec"]["containers"][0]
    assert container["name"] == "trainer" and container["image"] == worker["image"]
    assert "command" not in container, "the worker image's entrypoint is marcelle-torch"
    args = container["args"]
    # The same connection, name and metrics as the run worker; its own models; the store.
    for flag in ("--backend", "--name", "--metrics-port"):
        assert args[args.index(flag) + 1] == worker["args"][worker["args"].index(flag) + 1], flag
    parsed = build_parser().parse_args(args)
    assert parsed.func.__name__ == "cmd_worker"
    assert parsed.models == "/models/shapes" and parsed.store == STORE
    assert container["ports"] == worker["ports"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe] == worker[probe], probe
    assert container["resources"] == {
        "requests": {"cpu": "1", "memory": "2Gi"},
        "limits": {"cpu": "2", "memory": "4Gi"},
    }
    spec = trainer(objects)["spec"]
    assert spec["replicas"] == 1
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["fsGroup"] == 10001
    assert (
        pod["securityContext"] == one(objects, "Deployment", "-worker")["spec"]["template"]["spec"]["securityContext"]
    )
    # Only the trainable model is fetched: `faces` (on a claim) is neither fetched nor mounted.
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-0-shapes"]
    assert not [v for v in pod["volumes"] if v["name"].startswith("model-source-")]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in container["volumeMounts"]


def test_the_trainer_takes_the_training_and_publish_runs_and_the_run_worker_the_others():
    from marcelle_torch.cli import build_parser

    objects = render(TRAINING)
    worker = one(objects, "Deployment", "-worker")["spec"]["template"]["spec"]["containers"][0]
    assert build_parser().parse_args(trainer_container(objects)["args"]).runs == "train"
    assert build_parser().parse_args(worker["args"]).runs == "infer"
    # Without the trainer the run worker takes every run (publish runs with `modelStore.enabled`).
    for sets in ((), ("modelStore.enabled=true",)):
        worker = one(render(sets=sets), "Deployment", "-worker")["spec"]["template"]["spec"]["containers"][0]
        assert "--runs" not in worker["args"] and build_parser().parse_args(worker["args"]).runs == "all"


def test_the_trainer_gets_the_workers_backend_account():
    objects = render(TRAINING)
    env = env_of(trainer_container(objects))
    worker_env = env_of(one(objects, "Deployment", "-worker")["spec"]["template"]["spec"]["containers"][0])
    secret = one(objects, "Secret")["metadata"]["name"]
    for name, key in (("MARCELLE_WORKER_EMAIL", "worker-email"), ("MARCELLE_WORKER_PASSWORD", "worker-password")):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": key}
        assert env[name] == worker_env[name]
    pinned = env_of(trainer_container(render(TRAINING, sets=("backend.existingSecret=mt-pinned",))))
    assert pinned["MARCELLE_WORKER_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mt-pinned"
    open_backend = env_of(trainer_container(render(TRAINING, sets=("backend.auth.enabled=false",))))
    assert not [n for n in open_backend if "PASSWORD" in n or "EMAIL" in n]


def test_the_charts_trainable_builtins_are_the_registrys():
    from marcelle_torch.models import get_spec
    from marcelle_torch.models.registry import builtin_names

    trainable = [n for n in builtin_names() if getattr(get_spec(n), "trainable", None) is not None]
    container = trainer_container(render(sets=("training.enabled=true",)))
    assert container["args"][container["args"].index("--models") + 1].split(",") == trainable == ["digits"]
    pod = trainer(render(sets=("training.enabled=true",)))["spec"]["template"]["spec"]
    assert not pod.get("initContainers"), "a built-in is in the image: nothing to fetch"


def test_replicas_extra_args_and_every_model_by_default(tmp_path):
    values = copy.deepcopy(VALUES)
    values["training"] = {"enabled": True, "replicas": 3, "extraArgs": ["--threads", "4"]}
    deployment = trainer(render(values_file(tmp_path, values)))
    assert deployment["spec"]["replicas"] == 3
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--models") + 1] == "digits,/models/shapes,/models/faces"
    assert args[-2:] == ["--threads", "4"]
    init = deployment["spec"]["template"]["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["fetch-0-shapes", "fetch-1-faces"]
    values["training"]["models"] = ["faces", "digits"]
    args = trainer_container(render(values_file(tmp_path, values)))["args"]
    assert args[args.index("--models") + 1] == "/models/faces,digits"


@pytest.mark.parametrize(
    "values, message",
    [
        (
            {"training": {"enabled": True, "models": ["shapes"]}},
            'training.models: "shapes" is neither a trainable built-in (digits) nor one of `models` (none)',
        ),
        (
            {**VALUES, "training": {"enabled": True, "models": ["digits-generator"]}},
            '"digits-generator" is neither a trainable built-in (digits) nor one of `models` (shapes, faces)',
        ),
        ({**VALUES, "training": {"enabled": True, "gpus": -1}}, "at '/training/gpus': minimum: got -1, want 0"),
        ({"training": {"enable": True}}, "at '/training': additional properties 'enable' not allowed"),
        ({"modelStore": {"accessModes": ["ReadOnlyMany"]}}, "at '/modelStore/accessModes/0'"),
        ({"modelStore": {"size": "lots"}}, "at '/modelStore/size'"),
    ],
    ids=["no-such-model", "not-trainable", "negative-gpus", "typo", "read-only-claim", "bad-size"],
)
def test_bad_training_values_are_refused_clearly(tmp_path, values, message):
    result = render_text(values_file(tmp_path, values), check=False)
    assert result.returncode != 0, "accepted"
    assert message in result.stderr, result.stderr


def test_off_by_default_everything_renders_as_before():
    objects = render()
    assert not [d for d in by_kind(objects, "Deployment") if d["metadata"]["name"].endswith("-trainer")]
    assert [p["metadata"]["name"] for p in by_kind(objects, "PersistentVolumeClaim")] == [
        "mt-marcelle-torch-backend-data"
    ]
    for owner, spec in pod_specs(objects):
        assert not [v for v in spec.get("volumes", []) if v["name"] == "store"], owner
        for c in spec["containers"]:
            assert "MARCELLE_TORCH_STORE" not in env_of(c), owner
            assert "--store" not in (c.get("args") or []), owner


def test_the_claim():
    objects = render(TRAINING)
    claim = one(objects, "PersistentVolumeClaim", "-model-store")
    assert claim["metadata"]["name"] == CLAIM
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "several Pods on several nodes mount it"
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert "storageClassName" not in claim["spec"], "the cluster default"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep", "versions outlive an uninstall"
    classed = one(render(TRAINING, sets=("modelStore.storageClass=nfs-client",)), "PersistentVolumeClaim", "-store")
    assert classed["spec"]["storageClassName"] == "nfs-client"


def test_an_existing_claim_is_mounted_and_none_is_created():
    objects = render(TRAINING, sets=("modelStore.existingClaim=team-store",))
    assert not [p for p in by_kind(objects, "PersistentVolumeClaim") if "store" in p["metadata"]["name"]]
    claims = {
        owner: v["persistentVolumeClaim"]["claimName"]
        for owner, spec in pod_specs(objects)
        for v in spec.get("volumes", [])
        if v["name"] == "store"
    }
    assert set(claims) == {*WRITERS, *READERS} and set(claims.values()) == {"team-store"}


@pytest.mark.parametrize("sets", [(), ("training.enabled=false", "modelStore.enabled=true")], ids=["training", "store"])
def test_the_store_is_mounted_at_one_path_with_its_variable_in_each_pod(sets):
    objects = render(TRAINING, sets=sets)
    specs = dict(pod_specs(objects))
    owners = {o for o, spec in specs.items() if any(v["name"] == "store" for v in spec.get("volumes", []))}
    expected = set(WRITERS + READERS) if not sets else set(WRITERS[1:] + READERS)
    assert owners == expected, "the backend has no business with the store"
    assert ("Deployment/mt-marcelle-torch-trainer" in specs) == (not sets), "modelStore alone adds no trainer"
    for owner in expected:
        spec, read_only = specs[owner], owner in READERS
        volume = next(v for v in spec["volumes"] if v["name"] == "store")
        # A reader's volume is read-only too: the kubelet then never regroups the claim to its fsGroup.
        assert volume["persistentVolumeClaim"] == {"claimName": CLAIM, "readOnly": read_only}, owner
        main = spec["containers"][0]
        assert {"name": "store", "mountPath": STORE, "readOnly": read_only} in main["volumeMounts"], owner
        assert env_of(main)["MARCELLE_TORCH_STORE"] == {"name": "MARCELLE_TORCH_STORE", "value": STORE}, owner
        if not read_only:
            args = main["args"]
            assert args[args.index("--store") + 1] == STORE, owner
            assert spec["securityContext"]["runAsUser"] == 10001, "both writers own what they write"
        for init in spec.get("initContainers", []):
            assert not [m for m in init["volumeMounts"] if m["name"] == "store"], f"{owner} {init['name']}"


def test_nginx_serves_the_published_bundle_from_where_the_chart_mounts_the_store():
    """The web app's MARCELLE_TORCH_STORE is the image's default and nginx's template reads it
    (test_nginx_isolation.py runs that template against a real store)."""
    webapp = one(render(TRAINING), "Deployment", "-webapp")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(webapp)["MARCELLE_TORCH_STORE"]["value"] == STORE
    dockerfile = (REPO / "services/frontend/Dockerfile").read_text()
    assert re.search(rf"^\s+MARCELLE_TORCH_STORE={re.escape(STORE)}$", dockerfile, re.M)
    nginx = (REPO / "services/frontend/nginx.conf").read_text()
    assert re.search(r"root \$\{MARCELLE_TORCH_STORE\};\s+try_files /\$onnx_model/published/onnx/", nginx)
    from marcelle_torch.models.store import ENV, ONNX, PUBLISHED

    assert (ENV, PUBLISHED, ONNX) == ("MARCELLE_TORCH_STORE", "published", "onnx"), "the store's contract"


def test_gpu_training_runs_the_gpu_image_on_the_gpu_node_pool(tmp_path):
    values = copy.deepcopy(VALUES)
    values["training"].update(gpus=2, nodeSelector={"zone": "a"}, tolerations=[{"key": "spot", "operator": "Exists"}])
    values["gpu"] = {"enabled": True}
    objects = render(values_file(tmp_path, values))
    pod = trainer(objects)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    group = next(
        g for g in one(objects, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"] if g["groupName"] == "gpu"
    )
    ray_gpu = group["template"]["spec"]
    # The GPU Ray image (CUDA torch, the same CLI), which has no marcelle-torch entrypoint.
    assert container["image"] == ray_gpu["containers"][0]["image"] == "marcelle-torch/ray:0.1.0-gpu"
    assert container["command"] == ["marcelle-torch"] and container["args"][0] == "worker"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["resources"]["limits"]["cpu"] == "2"
    assert ray_gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1, "the Ray group keeps its own"
    # The GPU node pool's label and taint, as the Ray GPU group has them, plus the trainer's own.
    assert pod["nodeSelector"] == {**ray_gpu["nodeSelector"], "zone": "a"}
    assert pod["tolerations"] == ray_gpu["tolerations"] + [{"key": "spot", "operator": "Exists"}]
    assert pod["securityContext"]["runAsUser"] == 10001, "the store's writers share one uid"
    # The Ray image's Python is its user's group's (services/ray/Dockerfile: USER 1000:100).
    assert pod["securityContext"]["runAsGroup"] == 100 and pod["securityContext"]["fsGroup"] == 10001
    ray_user = re.findall(r"^USER (\d+):(\d+)$", (REPO / "services/ray/Dockerfile").read_text(), re.M)[-1]
    assert int(ray_user[1]) == pod["securityContext"]["runAsGroup"]
    # Without gpu.enabled (no Ray GPU group) the trainer still gets its GPU and the pool.
    values["gpu"] = {"enabled": False}
    alone = trainer(render(values_file(tmp_path, values)))["spec"]["template"]["spec"]
    assert alone["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert alone["nodeSelector"]["marcelle-torch.dev/node-pool"] == "gpu"


def test_no_gpu_by_default():
    pod = trainer(render(TRAINING))["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]
    assert not pod.get("nodeSelector") and not pod.get("tolerations")


@pytest.mark.parametrize(
    "sets", [(), ("training.gpus=1",), ("modelStore.existingClaim=team-store", "monitoring.enabled=true")]
)
def test_objects_valid_for_kubernetes(sets):
    import kubernetes_validate

    objects = render(TRAINING, sets=sets)
    for obj in objects:
        if obj["kind"] in ("Deployment", "PersistentVolumeClaim", "NetworkPolicy"):
            kubernetes_validate.validate(copy.deepcopy(obj), "1.35.0", strict=True)


def test_the_trainer_is_scraped_under_its_own_job():
    objects = render(TRAINING, ci_values("monitoring"))
    monitor = one(objects, "PodMonitor", "-trainer")
    assert monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "trainer"
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert not [m for m in by_kind(render(ci_values("monitoring")), "PodMonitor") if "trainer" in m["metadata"]["name"]]


def test_values_yaml_documents_the_store_path():
    text = (CHART / "values.yaml").read_text()
    assert STORE in text
