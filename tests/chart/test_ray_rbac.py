"""templates/ray-rbac.yaml and the head Pod: only the Ray head's autoscaler container gets a
service-account token, with the ServiceAccount, Role and RoleBinding it needs.

Upstream facts encoded here:
- ray-project/ray, python/ray/autoscaler/_private/kuberay/node_provider.py (read at commit
  5a7cb61a; the chart pins Ray 2.60.0), `load_k8s_secrets()`, called by
  KubernetesHttpApiClient.__init__ when the KubeRayNodeProvider starts: it opens
  /var/run/secrets/kubernetes.io/serviceaccount/token with no fallback, so without a mounted
  token the autoscaler sidecar fails at start.
- ray-project/kuberay v1.7.0, ray-operator/controllers/ray/common/pod.go,
  `DefaultHeadPodTemplate`: with in-tree autoscaling the head Pod's serviceAccountName becomes
  `utils.CheckName(GetHeadGroupServiceAccountName(cluster))`; KubeRay never sets
  automountServiceAccountToken, so the Pod's own value decides; the autoscaler container is
  BuildAutoscalerContainer with autoscalerOptions merged in by mergeAutoscalerOverrides, whose
  volumeMounts are appended to the container's (the template's volumes stay the Pod's).
- ray-project/kuberay v1.7.0, ray-operator/controllers/ray/raycluster_controller.go,
  `reconcileAutoscalerServiceAccount`: when the head template names a ServiceAccount, KubeRay
  does not create it ("they need to create a ServiceAccount themselves", kuberay#1128) and
  refuses to reconcile until it exists.
- ray-project/kuberay v1.7.0, ray-operator/controllers/ray/common/rbac.go, `BuildRole`: the
  rules the autoscaler needs (the chart grants exactly these, bound to its ServiceAccount).
- ray-project/kuberay v1.7.0, ray-operator/controllers/ray/utils/util.go, `CheckName`: names
  longer than 50 characters are clipped from the front, and a leading digit becomes `r`.
"""

from __future__ import annotations

import json

import pytest
from k8s_tools import CI_VALUES, by_kind, ci_values, one, pod_specs, render

ids = [p.name.removesuffix("-values.yaml") for p in CI_VALUES]

# rbac.go v1.7.0, BuildRole: Rules.
KUBERAY_AUTOSCALER_RULES = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": [""], "resources": ["pods/resize"], "verbs": ["patch"]},
    {"apiGroups": ["ray.io"], "resources": ["rayclusters"], "verbs": ["get", "patch"]},
]


def kuberay_check_name(name: str) -> str:
    """utils.CheckName of KubeRay v1.7.0 (util.go)."""
    if len(name) > 50:
        name = name[len(name) - 50 :]
    if name[0].isdigit():
        name = "r" + name[1:]
    if not name[0].isalnum():
        name = "r" + name[1:]
    return name


def head_spec(objects):
    return one(objects, "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]


TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def head_pod_as_kuberay_builds_it(objects) -> dict:
    """The head Pod's spec as KubeRay v1.7.0 builds it from the template (common/pod.go
    DefaultHeadPodTemplate): the template's spec, then the autoscaler container
    (BuildAutoscalerContainer) with autoscalerOptions merged in (mergeAutoscalerOverrides:
    volumeMounts appended, securityContext, resources, env...), appended after the Ray container.
    KubeRay touches neither automountServiceAccountToken nor the template's volumes here."""
    cluster = one(objects, "RayService")["spec"]["rayClusterConfig"]
    spec = dict(head_spec(objects))
    options = cluster.get("autoscalerOptions") or {}
    autoscaler = {
        "name": "autoscaler",
        "volumeMounts": list(options.get("volumeMounts") or []),
        "env": list(options.get("env") or []),
    }
    spec["containers"] = [*spec["containers"], autoscaler]
    return spec


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_only_the_autoscaler_container_gets_a_token(values):
    """The Ray head container runs application code (Serve replicas' code, job submissions): it
    gets no API token. The autoscaler sidecar gets one through a projected volume at the path
    Ray reads (node_provider.py IN_CLUSTER_TOKEN_PATH / IN_CLUSTER_CA_CERT_PATH; it re-reads the
    token every TOKEN_REFRESH_PERIOD, so the kubelet's rotation of a projected token is seen)."""
    objects = render(values)
    for owner, spec in pod_specs(objects):
        assert spec.get("automountServiceAccountToken") is False, f"{owner}: must not mount a token in every container"
        if not owner.endswith(" head"):
            assert "serviceAccountName" not in spec, f"{owner}: only the head uses the autoscaler's account"
    head = head_pod_as_kuberay_builds_it(objects)
    volumes = {v["name"]: v for v in head["volumes"]}
    mounting = {
        c["name"]: [m for m in c.get("volumeMounts", []) if m["mountPath"] == TOKEN_DIR]
        for c in head["containers"] + head.get("initContainers", [])
    }
    assert [c for c, m in mounting.items() if m] == ["autoscaler"], mounting
    (mount,) = mounting["autoscaler"]
    assert mount["readOnly"] is True
    sources = volumes[mount["name"]]["projected"]["sources"]
    token = next(s["serviceAccountToken"] for s in sources if "serviceAccountToken" in s)
    assert token["path"] == "token" and 600 <= token["expirationSeconds"] <= 7200
    ca = next(s["configMap"] for s in sources if "configMap" in s)
    assert ca["name"] == "kube-root-ca.crt" and ca["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    # No token for any other container through a Secret either.
    assert not [v for v in volumes.values() if "secret" in v and "token" in json.dumps(v)]


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_head_service_account_exists_and_survives_kuberays_name_check(values):
    objects = render(values)
    name = head_spec(objects).get("serviceAccountName")
    assert name, "the head must name the chart's ServiceAccount (KubeRay creates none when one is named)"
    (account,) = [a for a in by_kind(objects, "ServiceAccount") if a["metadata"]["name"] == name]
    # No other Pod may pick the token up through this account.
    assert account.get("automountServiceAccountToken") is False
    assert kuberay_check_name(name) == name, "KubeRay would clip the name and look for another account"


def test_long_release_names_still_give_a_valid_account_name():
    objects = render(sets=("fullnameOverride=" + "a" * 40,))
    name = head_spec(objects)["serviceAccountName"]
    assert kuberay_check_name(name) == name and len(name) <= 50


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_role_grants_what_kuberays_autoscaler_role_grants(values):
    objects = render(values)
    role = one(objects, "Role", "-ray-autoscaler")
    assert role["rules"] == KUBERAY_AUTOSCALER_RULES
    binding = one(objects, "RoleBinding", "-ray-autoscaler")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": head_spec(objects)["serviceAccountName"], "namespace": "marcelle-torch"}
    ]


def test_no_cluster_wide_rbac():
    objects = render(ci_values("monitoring"), ci_values("gpu"))
    assert not by_kind(objects, "ClusterRole") and not by_kind(objects, "ClusterRoleBinding")
