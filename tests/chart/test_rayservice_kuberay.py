"""templates/rayservice.yaml against what KubeRay v1.7.0 and Ray Serve really do with it:
no deprecated no-op fields, an explicit upgrade strategy KubeRay accepts, an initializing
timeout KubeRay parses, and scale-to-zero where the values say so.

Upstream facts encoded here:
- ray-project/kuberay v1.7.0, ray-operator/apis/ray/v1/rayservice_types.go: RayServiceSpec's
  `serviceUnhealthySecondThreshold` and `deploymentUnhealthySecondThreshold` are
  "Deprecated: This field is not used anymore" (kuberay#1685); RayServiceUpgradeType is one of
  `NewCluster`, `NewClusterWithIncrementalUpgrade`, `None`.
- ray-operator/controllers/ray/utils/validation.go, `ValidateRayServiceSpec`: other types are
  refused; `validateInitializingTimeout` accepts a positive Go
  duration or positive integer seconds in the `ray.io/initializing-timeout` annotation
  (utils/constant.go RayServiceInitializingTimeoutAnnotation; exceeding it is terminal).
- ray-operator/controllers/ray/rayservice_controller.go, `isZeroDowntimeUpgradeEnabled`: with
  no upgradeStrategy.type, the operator's ENABLE_ZERO_DOWNTIME env decides (default: a new
  cluster), so the chart always sets the type.
- NewClusterWithIncrementalUpgrade has no `<rayservice>-serve-svc` (common/service.go,
  rayservice_controller.go, pkg/features/features.go): refused by the chart, see
  test_incremental_upgrade_is_refused_with_its_reason.
- Ray Serve 2.60.0 (the venv's ray, python/ray/serve/config.py AutoscalingConfig): min_replicas
  may be 0 (test_serve_config.py validates every rendered serve config with Ray's own schema).
"""

from __future__ import annotations

import json
import re

import pytest
import yaml
from k8s_tools import CI_VALUES, ci_values, one, ray_worker_groups, render, render_text

ids = [p.name.removesuffix("-values.yaml") for p in CI_VALUES]

DEPRECATED_NO_OPS = {"serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold"}
UPGRADE_TYPES = {"NewCluster", "NewClusterWithIncrementalUpgrade", "None"}
GO_DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")


def rayservice(objects):
    return one(objects, "RayService")


def serve_config(objects):
    return yaml.safe_load(rayservice(objects)["spec"]["serveConfigV2"])


def model_deployments(objects):
    apps = [
        a
        for a in serve_config(objects)["applications"]
        if a["import_path"] == "marcelle_torch.serving.app:build_model_app"
    ]
    return {d["name"]: d for app in apps for d in app["deployments"] if d["name"].startswith("model-")}


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_no_deprecated_no_op_fields(values):
    spec = rayservice(render(values))["spec"]
    assert not DEPRECATED_NO_OPS & set(spec), "KubeRay 1.7 ignores these (rayservice_types.go)"


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_upgrade_strategy_is_explicit_and_valid(values):
    strategy = rayservice(render(values))["spec"]["upgradeStrategy"]
    assert strategy["type"] in UPGRADE_TYPES - {"NewClusterWithIncrementalUpgrade"}
    assert "clusterUpgradeOptions" not in strategy


def test_default_strategy_is_a_new_cluster_that_switches_when_ready():
    spec = rayservice(render(ci_values("default")))["spec"]
    assert spec["upgradeStrategy"] == {"type": "NewCluster"}
    assert spec["rayClusterDeletionDelaySeconds"] >= 0


def test_incremental_upgrade_is_refused_with_its_reason():
    """NewClusterWithIncrementalUpgrade would leave the web app without Serve: in that mode
    KubeRay v1.7.0 creates no `<rayservice>-serve-svc` (common/service.go BuildServeService: the
    Service is named after the RayService only when IsIncrementalUpgradeEnabled is false, after
    each RayCluster otherwise) and sends traffic through a Gateway `<rayservice>-gateway`
    (rayservice_controller.go createGateway) whose Service's name and Pods depend on the Gateway
    controller. The feature gate does not stop it: RayServiceIncrementalUpgrade is Beta and on
    by default in v1.7.0 (pkg/features/features.go), and utils/util.go IsIncrementalUpgradeEnabled
    reads only the gate and the type. So the chart refuses the type, and says why."""
    from k8s_tools import CHART

    result = render_text(sets=("ray.upgradeStrategy.type=NewClusterWithIncrementalUpgrade",), check=False)
    assert result.returncode != 0, "NewClusterWithIncrementalUpgrade was accepted"
    assert "at '/ray/upgradeStrategy/type'" in result.stderr, result.stderr
    schema = json.loads((CHART / "values.schema.json").read_text())
    strategy = schema["properties"]["ray"]["properties"]["upgradeStrategy"]["properties"]["type"]
    assert set(strategy["enum"]) == UPGRADE_TYPES - {"NewClusterWithIncrementalUpgrade"}
    assert "serve-svc" in strategy["description"] and "NewClusterWithIncrementalUpgrade" in strategy["description"]
    # values.yaml says the same, and no longer that the gate is off by default.
    text = (CHART / "values.yaml").read_text()
    comment = text[: text.index("    type: NewCluster")].rsplit("# --", 1)[1]
    assert "serve-svc" in comment and "on by default" in comment, comment


@pytest.mark.parametrize(
    "sets,message",
    [
        (("ray.upgradeStrategy.type=Recreate",), "at '/ray/upgradeStrategy/type'"),
        (
            ("ray.upgradeStrategy.clusterUpgradeOptions.intervalSeconds=30",),
            "at '/ray/upgradeStrategy': additional properties 'clusterUpgradeOptions' not allowed",
        ),
        (("ray.initializingTimeout=soon",), "at '/ray/initializingTimeout'"),
    ],
)
def test_what_kuberay_would_refuse_is_refused_at_render(sets, message):
    result = render_text(sets=sets, check=False)
    assert result.returncode != 0, f"{sets} was accepted"
    assert message in result.stderr, result.stderr


def test_initializing_timeout_is_the_annotation_kuberay_reads():
    assert "ray.io/initializing-timeout" not in (
        rayservice(render(ci_values("default")))["metadata"].get("annotations") or {}
    )
    for value in ("45m", "2700"):
        annotations = rayservice(render(sets=(f"ray.initializingTimeout={value}",)))["metadata"]["annotations"]
        timeout = annotations["ray.io/initializing-timeout"]
        assert timeout == value and (GO_DURATION.match(timeout) or int(timeout) > 0)
    # Whatever the schema lets through, KubeRay parses (validation.go validateInitializingTimeout).
    for bad in ("soon", "-5m", "0", "5 minutes"):
        assert render_text(sets=(f"ray.initializingTimeout={bad}",), check=False).returncode != 0, bad


def test_gpu_mode_scales_to_zero():
    objects = render(ci_values("gpu"))
    groups = ray_worker_groups(objects)
    # No model replica lives on CPU workers when the model is on GPUs: the group stays at 0.
    assert groups["cpu"]["replicas"] == groups["cpu"]["minReplicas"] == 0
    assert groups["gpu"]["minReplicas"] == 0
    # The GPU group can only reach 0 if no model replica has to stay up.
    for name, deployment in model_deployments(objects).items():
        assert deployment["ray_actor_options"]["num_gpus"] == 1, name
        assert deployment["autoscaling_config"]["min_replicas"] == 0, name
        assert deployment["autoscaling_config"]["max_replicas"] >= 1, name


def test_gpu_mode_can_keep_one_replica_warm():
    objects = render(ci_values("gpu"), sets=("gpu.modelMinReplicas=1", "gpu.minReplicas=1", "gpu.replicas=1"))
    for deployment in model_deployments(objects).values():
        assert deployment["autoscaling_config"]["min_replicas"] == 1


def test_cpu_mode_keeps_the_serve_configs_floor_unless_told():
    objects = render(ci_values("default"))
    assert ray_worker_groups(objects)["cpu"]["minReplicas"] >= 1
    for deployment in model_deployments(objects).values():
        assert deployment["autoscaling_config"]["min_replicas"] == 1
    objects = render(sets=("ray.modelMinReplicas=0", "ray.cpuWorkers.minReplicas=0", "ray.cpuWorkers.replicas=0"))
    for deployment in model_deployments(objects).values():
        assert deployment["autoscaling_config"]["min_replicas"] == 0
