"""Backend templates: Deployment, Service, PVC (NeDB) or MongoDB URL, config, and the Secret."""

from __future__ import annotations

import base64
import json

from k8s_tools import by_kind, ci_values, one, render, render_text

EXAMPLE_SECRET = "ZjXdk3pXZLVpvcEMGGuh6LYdi9o="  # the fixed secret @marcellejs/backend ships


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def backend_config(objects):
    return json.loads(one(objects, "ConfigMap", "-backend-config")["data"]["default.json"])


def test_nedb_on_a_kept_pvc():
    objects = render(ci_values("default"))
    pvc = one(objects, "PersistentVolumeClaim", "-backend-data")
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    deployment = one(objects, "Deployment", "-backend")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    config = backend_config(objects)
    assert config["database"] == "nedb" and config["nedb"].startswith("/data")


def test_mongodb_url_comes_from_the_secret_and_no_pvc():
    objects = render(ci_values("mongodb"))
    assert not by_kind(objects, "PersistentVolumeClaim")
    container = one(objects, "Deployment", "-backend")["spec"]["template"]["spec"]["containers"][0]
    ref = env_of(container)["MONGODB_URL"]["valueFrom"]["secretKeyRef"]
    secret = one(objects, "Secret")
    assert ref["name"] == secret["metadata"]["name"]
    assert base64.b64decode(secret["data"][ref["key"]]).decode().startswith("mongodb://")
    config = backend_config(objects)
    assert config["database"] == "mongodb" and config["mongodb"] == "MONGODB_URL"


def test_existing_mongodb_secret_is_used_as_is():
    objects = render(sets=("backend.database=mongodb", "backend.mongodb.existingSecret=db-creds"))
    container = one(objects, "Deployment", "-backend")["spec"]["template"]["spec"]["containers"][0]
    ref = env_of(container)["MONGODB_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "db-creds", "key": "mongodb-url"}
    assert "mongodb-url" not in one(objects, "Secret")["data"]


def test_jwt_secret_is_generated_never_the_example_one():
    def secret_values():
        text = render_text(sets=("backend.auth.enabled=true",)).stdout
        import yaml

        secret = next(d for d in yaml.safe_load_all(text) if d and d["kind"] == "Secret")
        return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}

    first, second = secret_values(), secret_values()
    assert len(first["jwt-secret"]) >= 64
    assert first["jwt-secret"] != second["jwt-secret"], "a fresh install must get a fresh secret"
    assert EXAMPLE_SECRET not in first.values()
    assert "@" in first["worker-email"] and len(first["worker-password"]) >= 32


def test_secret_survives_upgrades_through_lookup():
    # `helm template` has no cluster to look up; the kind e2e checks the behaviour on a real upgrade.
    from k8s_tools import CHART

    source = (CHART / "templates" / "secret.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace $name' in source
    for key in ("jwt-secret", "worker-email", "worker-password"):
        assert f'get $old "{key}"' in source


def test_auth_config_reads_the_secret_from_the_environment():
    objects = render(ci_values("auth"))
    config = backend_config(objects)
    assert config["authentication"]["enabled"] is True
    assert config["authentication"]["secret"] == "AUTH_SECRET"
    container = one(objects, "Deployment", "-backend")["spec"]["template"]["spec"]["containers"][0]
    env = env_of(container)
    assert env["AUTH_SECRET"]["valueFrom"]["secretKeyRef"]["key"] == "jwt-secret"
    assert env["NODE_CONFIG_DIR"]["value"] == "/config"
    assert backend_config(render(ci_values("default")))["authentication"]["enabled"] is False


def test_service_targets_the_backend_port():
    objects = render(ci_values("default"))
    service = one(objects, "Service", "-backend")
    assert service["spec"]["ports"] == [{"name": "http", "port": 3030, "targetPort": "http"}]
    deployment = one(objects, "Deployment", "-backend")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
