"""Backend templates: Deployment, Service, PVC (NeDB) or MongoDB URL, config, and the Secret."""

from __future__ import annotations

import base64
import json

from k8s_tools import CHART, by_kind, ci_values, one, render, render_text

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


def test_mongodb_ci_set_takes_the_url_from_an_existing_secret():
    objects = render(ci_values("mongodb"))
    assert not by_kind(objects, "PersistentVolumeClaim")
    container = one(objects, "Deployment", "-backend")["spec"]["template"]["spec"]["containers"][0]
    ref = env_of(container)["MONGODB_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "marcelle-torch-mongodb", "key": "mongodb-url"}
    assert "mongodb-url" not in one(objects, "Secret")["data"]


def test_mongodb_url_comes_from_the_secret_and_no_pvc():
    objects = render(
        sets=(
            "backend.database=mongodb",
            "backend.mongodb.url=mongodb://mongodb.databases.svc.cluster.local:27017/marcelle_torch",
        )
    )
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
    for name, key in (
        ("MARCELLE_BACKEND_SECRET", "jwt-secret"),
        ("MARCELLE_WORKER_EMAIL", "worker-email"),
        ("MARCELLE_WORKER_PASSWORD", "worker-password"),
    ):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": key}
    env = backend_env(render(sets=("backend.auth.enabled=false",)))
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
    text = mapping.read_text()  # tracked: its absence is a failure, not a skip
    for name in backend_env(render(ci_values("auth"))):
        if name.startswith("MARCELLE_") or name in ("PORT", "MONGODB_URL"):
            assert name in text, f"{name} is not mapped by {mapping.name}"


def test_finished_runs_are_removed_after_a_week_unless_set_otherwise():
    # services/backend/retention.js reads it (start.js refuses anything but whole seconds >= 0).
    assert value(backend_env(render(ci_values("default"))), "MARCELLE_RUNS_KEEP_FINISHED_S") == "604800"
    keep_all = backend_env(render(ci_values("default"), sets=("backend.keepFinishedRunsSeconds=0",)))
    assert value(keep_all, "MARCELLE_RUNS_KEEP_FINISHED_S") == "0"


def test_quotas_and_host_names_reach_the_backend():
    # services/backend/quotas.js and access.js read them (start.js checks their shapes).
    env = backend_env(render(ci_values("default")))
    assert value(env, "MARCELLE_RUNS_PER_MINUTE") == "600"
    assert value(env, "MARCELLE_RUNS_PENDING_BYTES") == "67108864"
    # services/backend/run-queue.js fails runs left pending longer (start.js checks the number).
    assert value(env, "MARCELLE_RUNS_PENDING_TIMEOUT_S") == "600"
    assert json.loads(value(env, "MARCELLE_BACKEND_ALLOWED_HOSTS")) == ["*"]
    named = backend_env(render(ci_values("default"), sets=("backend.allowedHosts={demo.example.org}",)))
    assert json.loads(value(named, "MARCELLE_BACKEND_ALLOWED_HOSTS")) == ["demo.example.org"]


def test_service_targets_the_backend_port():
    objects = render(ci_values("default"))
    service = one(objects, "Service", "-backend")
    assert service["spec"]["ports"] == [{"name": "http", "port": 3030, "targetPort": "http"}]
    deployment = one(objects, "Deployment", "-backend")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


# --- Authentication on by default, the first user, the services whitelist --------------------
# @marcellejs/backend 0.6.5 (npm): authentication is off unless configured, and with sign-up
# off no browser user can exist unless one is created; the backend of this project creates the
# run worker's account and the first admin from MARCELLE_WORKER_* / MARCELLE_ADMIN_* at start.
# `whitelist.services: "*"` creates any data service on demand; the app uses `runs` only.


def notes(*sets: str, release: str = "mt", namespace: str = "marcelle-torch") -> str:
    from k8s_tools import CHART, helm

    args = ["install", release, str(CHART), "--dry-run=client", "--namespace", namespace]
    for s in sets:
        args += ["--set", s]
    out = helm(*args).stdout
    return out.split("NOTES:", 1)[1]


def secret_data(objects):
    return {k: base64.b64decode(v).decode() for k, v in one(objects, "Secret")["data"].items()}


def test_auth_is_on_by_default_with_a_first_admin_from_the_secret():
    objects = render(ci_values("default"))
    env = backend_env(objects)
    assert value(env, "MARCELLE_BACKEND_AUTH") == "true"
    assert value(env, "MARCELLE_BACKEND_ALLOW_SIGNUP") == "false"
    secret = one(objects, "Secret")["metadata"]["name"]
    for name, key in (
        ("MARCELLE_ADMIN_EMAIL", "admin-email"),
        ("MARCELLE_ADMIN_PASSWORD", "admin-password"),
        ("MARCELLE_WORKER_EMAIL", "worker-email"),
        ("MARCELLE_WORKER_PASSWORD", "worker-password"),
    ):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": key}, name
    data = secret_data(objects)
    assert "@" in data["admin-email"] and len(data["admin-password"]) >= 24
    assert data["admin-password"] != data["worker-password"]


def test_admin_password_is_fresh_per_install_and_kept_across_upgrades():
    import yaml

    def password():
        text = render_text().stdout
        secret = next(d for d in yaml.safe_load_all(text) if d and d["kind"] == "Secret")
        return base64.b64decode(secret["data"]["admin-password"]).decode()

    assert password() != password()
    from k8s_tools import CHART

    source = (CHART / "templates" / "secret.yaml").read_text()
    assert 'get $old "admin-password"' in source


def test_admin_email_follows_values():
    data = secret_data(render(sets=("backend.auth.adminEmail=teacher@school.example",)))
    assert data["admin-email"] == "teacher@school.example"


def test_notes_say_how_to_read_the_first_users_credentials():
    text = notes()
    for key in ("admin-email", "admin-password"):
        command = (
            f"kubectl -n marcelle-torch get secret mt-marcelle-torch-secrets -o jsonpath='{{.data.{key}}}' | base64 -d"
        )
        assert command in text, text
    # With auth off there is nobody to sign in as.
    assert "admin-password" not in notes("backend.auth.enabled=false")


def test_notes_say_that_lookup_secrets_are_regenerated_by_helm_template():
    text = notes()
    assert "helm template" in text and "backend.existingSecret" in text


def test_auth_off_has_no_accounts():
    env = backend_env(render(sets=("backend.auth.enabled=false",)))
    assert value(env, "MARCELLE_BACKEND_AUTH") == "false"
    assert not {"MARCELLE_ADMIN_EMAIL", "MARCELLE_ADMIN_PASSWORD", "MARCELLE_WORKER_EMAIL"} & set(env)


def test_existing_secret_pins_every_generated_value():
    objects = render(sets=("backend.existingSecret=mt-pinned",))
    env = backend_env(objects)
    for name in (
        "MARCELLE_BACKEND_SECRET",
        "MARCELLE_ADMIN_EMAIL",
        "MARCELLE_ADMIN_PASSWORD",
        "MARCELLE_WORKER_EMAIL",
        "MARCELLE_WORKER_PASSWORD",
    ):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "mt-pinned", name
    # Nothing is generated, so `helm template` renders the same thing every time.
    assert not by_kind(objects, "Secret")
    assert (
        render_text(sets=("backend.existingSecret=mt-pinned",)).stdout
        == render_text(sets=("backend.existingSecret=mt-pinned",)).stdout
    )


def test_backend_creates_only_the_runs_and_teach_services():
    import json

    # The Teach page's dataset('teach') lives in `instances-teach`: the chart's list must keep it
    # (it replaces the backend's default list, services/backend/backend/config/default.yaml).
    env = backend_env(render(ci_values("default")))
    assert json.loads(value(env, "MARCELLE_BACKEND_SERVICES")) == ["runs", "instances-teach"]
    assert value(env, "MARCELLE_INSTANCES_PER_USER") == "2000"
    env = backend_env(render(sets=("backend.instancesPerUser=5",)))
    assert value(env, "MARCELLE_INSTANCES_PER_USER") == "5"


def test_the_charts_services_are_the_backends_defaults():
    import yaml

    defaults = yaml.safe_load((CHART.parents[1] / "services/backend/backend/config/default.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["backend"]["services"] == defaults["whitelist"]["services"]
    assert values["backend"]["instancesPerUser"] == defaults["marcelleTorch"]["instanceQuota"]["perOwner"]


def test_pinned_secret_and_a_mongodb_url_in_values():
    # The only generated Secret left holds the URL; the credentials come from the pinned one.
    objects = render(
        sets=(
            "backend.existingSecret=mt-pinned",
            "backend.database=mongodb",
            "backend.mongodb.url=mongodb://db:27017/mt",
        )
    )
    assert set(one(objects, "Secret")["data"]) == {"mongodb-url"}
    assert backend_env(objects)["MARCELLE_BACKEND_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "mt-pinned"


def test_the_login_throttle_sees_the_browser_behind_each_proxy_hop():
    # The backend takes the client's address that many hops back in X-Forwarded-For
    # (services/backend/start.js, MARCELLE_BACKEND_TRUSTED_PROXIES); the web app's nginx appends
    # one hop (services/frontend/nginx.conf: proxy_add_x_forwarded_for), an Ingress/Gateway one more.
    hops = {
        name: value(backend_env(render(ci_values(name))), "MARCELLE_BACKEND_TRUSTED_PROXIES")
        for name in ("default", "ingress", "httproute")
    }
    assert hops == {"default": "1", "ingress": "2", "httproute": "2"}
    pinned = backend_env(render(ci_values("ingress"), sets=("backend.trustedProxies=0",)))
    assert value(pinned, "MARCELLE_BACKEND_TRUSTED_PROXIES") == "0"
