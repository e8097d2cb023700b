"""Backend templates: Deployment, Service, PVC (NeDB) or MongoDB URL, config, and the Secret."""

from __future__ import annotations

import base64

from k8s_tools import by_kind, ci_values, one, render, render_text

EXAMPLE_SECRET = "ZjXdk3pXZLVpvcEMGGuh6LYdi9o="  # the fixed secret @marcellejs/backend ships


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def backend_env(objects):
    return env_of(one(objects, "Deployment", "-backend")["spec"]["template"]["spec"]["containers"][0])


def value(env, name):
    return env[name]["value"]


def test_nedb_on_a_kept_pvc():
    objects = render(ci_values("default"))
    pvc = one(objects, "PersistentVolumeClaim", "-backend-data")
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    deployment = one(objects, "Deployment", "-backend")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    env = backend_env(objects)
    assert value(env, "MARCELLE_BACKEND_DATABASE") == "nedb"
    assert value(env, "MARCELLE_BACKEND_DATA").startswith("/data/")
    assert value(env, "MARCELLE_BACKEND_UPLOADS").startswith("/data/")
    assert "MONGODB_URL" not in env


def test_mongodb_url_comes_from_the_secret_and_no_pvc():
    objects = render(ci_values("mongodb"))
    assert not by_kind(objects, "PersistentVolumeClaim")
    container = one(objects, "Deployment", "-backend")["spec"]["template"]["spec"]["containers"][0]
    ref = env_of(container)["MONGODB_URL"]["valueFrom"]["secretKeyRef"]
    secret = one(objects, "Secret")
    assert ref["name"] == secret["metadata"]["name"]
    assert base64.b64decode(secret["data"][ref["key"]]).decode().startswith("mongodb://")
    assert value(env_of(container), "MARCELLE_BACKEND_DATABASE") == "mongodb"
    assert "MARCELLE_BACKEND_DATA" not in env_of(container)


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


def test_auth_settings_and_secrets_come_from_the_secret():
    objects = render(ci_values("auth"))
    env = backend_env(objects)
    secret = one(objects, "Secret")["metadata"]["name"]
    assert value(env, "MARCELLE_BACKEND_AUTH") == "true"
    assert value(env, "MARCELLE_BACKEND_ALLOW_SIGNUP") == "false"
    for name, key in (("MARCELLE_BACKEND_SECRET", "jwt-secret"), ("MARCELLE_WORKER_EMAIL", "worker-email"),
                      ("MARCELLE_WORKER_PASSWORD", "worker-password")):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": key}
    env = backend_env(render(ci_values("default")))
    assert value(env, "MARCELLE_BACKEND_AUTH") == "false"
    # The JWT secret is ours even with authentication off; no worker account is made.
    assert env["MARCELLE_BACKEND_SECRET"]["valueFrom"]["secretKeyRef"]["key"] == "jwt-secret"
    assert "MARCELLE_WORKER_EMAIL" not in env


def test_backend_listens_on_all_interfaces_in_production_mode():
    env = backend_env(render(ci_values("default")))
    assert value(env, "MARCELLE_BACKEND_HOST") == "0.0.0.0"
    assert value(env, "PORT") == "3030"
    assert value(env, "NODE_ENV") == "production"


def test_env_names_are_the_ones_the_backend_config_maps():
    from k8s_tools import REPO

    mapping = REPO / "services" / "backend" / "backend" / "config" / "custom-environment-variables.yaml"
    if not mapping.is_file():
        import pytest

        pytest.skip(f"{mapping} not present")
    text = mapping.read_text()
    for name in backend_env(render(ci_values("auth"))):
        if name.startswith("MARCELLE_") or name in ("PORT", "MONGODB_URL"):
            assert name in text, f"{name} is not mapped by {mapping.name}"


def test_service_targets_the_backend_port():
    objects = render(ci_values("default"))
    service = one(objects, "Service", "-backend")
    assert service["spec"]["ports"] == [{"name": "http", "port": 3030, "targetPort": "http"}]
    deployment = one(objects, "Deployment", "-backend")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
