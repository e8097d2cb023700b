"""Ray token authentication (`ray.auth`): KubeRay's authOptions, what KubeRay v1.7.0 accepts and
does with it, and probes that keep working behind it.

Upstream facts encoded here:
- ray-project/kuberay v1.7.0, ray-operator/controllers/ray/utils/validation.go
  (ValidateRayClusterSpec): mode `token` needs rayVersion >= 2.52.0; enableK8sTokenAuth needs
  2.55.0 and no secretName.
- raycluster_controller.go reconcileAuthSecret / createAuthSecret: without secretName KubeRay
  creates a Secret named utils.CheckName(<RayCluster name>) with the key `auth_token`, owned by
  the RayCluster; with secretName it creates none. utils/constant.go RAY_AUTH_TOKEN_SECRET_KEY is
  `auth_token`.
- common/pod.go configureTokenAuth / SetContainerTokenAuthEnvVars: RAY_AUTH_MODE=token and
  RAY_AUTH_TOKEN (from that Secret) in the Ray container of every group, the wait-gcs-ready init
  container and the autoscaler; utils/util.go GetRayDashboardClientFunc reads the same Secret for
  the operator's dashboard calls (dashboard_httpclient.go: header x-ray-authorization).
- Ray 2.60.0 (the venv's ray): dashboard/http_server_agent.py PUBLIC_EXACT_PATHS and
  dashboard/http_server_head.py public_exact_paths keep /api/healthz (and /-/healthz) open; Serve's
  HTTP proxy does not use the token middleware (_private/authentication/http_token_authentication.py
  is the dashboard's), so the web app's /serve/ needs no token.
"""

from __future__ import annotations

import re

import pytest
from k8s_tools import CI_VALUES, ci_values, one, render, render_text
from test_notes import notes

ids = [p.name.removesuffix("-values.yaml") for p in CI_VALUES]


def cluster(objects):
    return one(objects, "RayService")["spec"]["rayClusterConfig"]


def version_tuple(text):
    return tuple(int(x) for x in text.split("."))


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_token_auth_is_on_and_valid_for_kuberay(values):
    spec = cluster(render(values))
    assert spec["authOptions"] == {"mode": "token"}
    assert version_tuple(spec["rayVersion"]) >= (2, 52, 0), "validation.go: token mode needs Ray >= 2.52.0"


def test_an_existing_secret_is_named_and_kuberay_then_makes_none():
    spec = cluster(render(sets=("ray.auth.existingSecret=ray-token",)))
    assert spec["authOptions"] == {"mode": "token", "secretName": "ray-token"}
    assert "enableK8sTokenAuth" not in spec["authOptions"]


def test_can_be_turned_off():
    assert "authOptions" not in cluster(render(sets=("ray.auth.enabled=false",)))
    assert "Ray's token" not in notes("ray.auth.enabled=false")


def test_refuses_a_bad_secret_name():
    result = render_text(sets=("ray.auth.existingSecret=Bad_Name",), check=False)
    assert result.returncode != 0 and "at '/ray/auth/existingSecret'" in result.stderr


def test_probes_use_only_the_paths_ray_leaves_open():
    """Every HTTP path a Ray container's probe asks for (httpGet, or wget in an exec probe) is
    one that Ray's token middleware lets through."""
    from ray.dashboard.http_server_agent import PUBLIC_EXACT_PATHS

    open_paths = set(PUBLIC_EXACT_PATHS) | {"/-/healthz"}  # the Serve proxy's own health route
    spec = cluster(render(ci_values("gpu")))
    templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    checked = 0
    for template in templates:
        ray = template["spec"]["containers"][0]
        for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
            probe = ray.get(kind)
            if not probe:
                continue
            paths = []
            if "httpGet" in probe:
                paths.append(probe["httpGet"]["path"])
            if "exec" in probe:
                paths += re.findall(r"https?://[^/\s]+(/[^\s|]*)", " ".join(probe["exec"]["command"]))
            for path in paths:
                assert path in open_paths, f"{kind} asks for {path}, which needs Ray's token"
                checked += 1
    assert checked >= 4


def test_notes_say_where_the_token_is_and_how_to_send_it():
    text = notes()
    # KubeRay's Secret is named after the serving RayCluster (CheckName leaves these names as they are).
    assert "get rayservice mt-marcelle-torch -o jsonpath='{.status.activeServiceStatus.rayClusterName}'" in text
    assert "get secret \"$CLUSTER\" -o jsonpath='{.data.auth_token}'" in text
    assert 'curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8265/' in text
    assert "RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$TOKEN ray job submit" in text
    text = notes("ray.auth.existingSecret=ray-token")
    assert "get secret ray-token -o jsonpath='{.data.auth_token}'" in text
