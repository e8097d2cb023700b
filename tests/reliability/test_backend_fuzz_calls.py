"""Generated Feathers calls against the real backend (authentication on, sign-up off), for every
role, over REST and Socket.IO: nested data and queries with update and query operators, dotted
and special keys (`__proto__`, `constructor`, `$set`...), odd types and deep nesting. After each
batch the invariants hold: the process is up and answered no 5xx, an anonymous GET /users is
still 401, user B still sees none of user A's runs, every run keeps its owner, and no account
changed role."""

from __future__ import annotations

import pytest
from backend_http import ADMIN, ADMIN_ENV, AUTH_ON, METHODS, WORKER, login, query_string, rest_call, socket_args
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marcelle_torch.worker.client import BackendError, BackendUnavailable

pytestmark = pytest.mark.backend

PASSWORD = "a-user-password-1"
ROLES = ("anonymous", "user A", "user B", "worker", "admin")
KEYS = st.sampled_from(
    [
        "__proto__",
        "constructor",
        "prototype",
        "$set",
        "$gt",
        "$in",
        "$where",
        "$regex",
        "$or",
        "a.b",
        "__proto__.user",
        "status",
        "userId",
        "_id",
        "role",
        "password",
        "email",
        "model",
        "input",
        "params",
        "progress",
        "worker",
        "length",
    ]
) | st.text(max_size=6)
# JSON has no NaN or infinity (Python would send `Infinity`, which no JSON parser takes).
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
TREES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4), max_leaves=20
)


def nested(depth: int):
    value: object = {"status": "pending"}
    for _ in range(depth):
        value = {"a": value}
    return value


DATA = (
    TREES
    | st.integers(30, 60).map(nested)
    | st.fixed_dictionaries({"model": st.just("digits"), "input": TREES}, optional={"params": TREES, "status": TREES})
)
CALLS = st.tuples(
    st.sampled_from(ROLES),
    st.sampled_from(["rest", "socket"]),
    st.sampled_from(sorted(METHODS)),
    st.sampled_from(["runs", "users"]),
    st.sampled_from(["run A", "run B", "user A", "none", "junk"]),
    DATA,
    st.dictionaries(KEYS, TREES, max_size=3),
)


@pytest.fixture(scope="module")
def world(tmp_path_factory, backend_installed):
    from marcelle_torch.stack.backend import start_backend
    from marcelle_torch.worker.client import FeathersClient

    where = tmp_path_factory.mktemp("fuzz-calls")
    backend = start_backend(
        where / "data",
        **AUTH_ON,
        log_path=where / "backend.log",
        package_dir=backend_installed,
        extra_env={**ADMIN_ENV, "MARCELLE_RUNS_PER_MINUTE": "100000"},
    )
    url = backend.url
    admin = login(url, *ADMIN)
    credentials = {"worker": WORKER, "admin": ADMIN}
    for name in ("a", "b"):
        email = f"{name}@fuzz.test"
        made = rest_call(url, "POST", "/users", {"email": email, "password": PASSWORD}, token=admin["accessToken"])
        assert made.status == 201, made
        credentials[f"user {name.upper()}"] = (email, PASSWORD)
    tokens = {role: login(url, *cred)["accessToken"] for role, cred in credentials.items()}
    ids = {role: login(url, *credentials[role])["user"]["_id"] for role in ("user A", "user B")}
    runs = {}
    for role, name in (("user A", "run A"), ("user B", "run B")):
        reply = rest_call(url, "POST", "/runs", {"model": "digits", "input": [1]}, token=tokens[role])
        runs[name] = reply.json["_id"]
    clients = {}
    for role in ROLES:
        client = FeathersClient(url)
        client.connect()
        if role in credentials:
            client.authenticate(*credentials[role])
        clients[role] = client
    roles = {u["email"]: u["role"] for u in rest_call(url, "GET", "/users", token=tokens["admin"]).json["data"]}
    yield {
        "backend": backend,
        "url": url,
        "tokens": tokens,
        "ids": ids,
        "runs": runs,
        "clients": clients,
        "credentials": credentials,
        "roles": roles,
    }
    for client in clients.values():
        client.disconnect()
    backend.stop()


def send(world, call) -> int:
    role, transport, method, service, target, data, query = call
    id_ = {"run A": world["runs"]["run A"], "run B": world["runs"]["run B"], "user A": world["ids"]["user A"]}.get(
        target, None if target == "none" else "x%2F..%2Fjunk" if transport == "rest" else {"$gt": ""}
    )
    if transport == "rest":
        path = f"/{service}" + (f"/{id_}" if id_ else "")
        qs = query_string(query)
        body = data if method in ("create", "update", "patch") else None
        token = world["tokens"].get(role)
        return rest_call(world["url"], METHODS[method], f"{path}?{qs}" if qs else path, body, token=token).status
    try:
        world["clients"][role].call(method, service, *socket_args(method, id_, data, query), timeout=15)
    except BackendError as exc:
        return exc.http_code if isinstance(exc.http_code, int) else 500
    except BackendUnavailable:
        return 599
    return 200


def check_invariants(world, statuses):
    url, tokens, admin = world["url"], world["tokens"], world["tokens"]["admin"]
    assert world["backend"].alive(), "the backend died"
    assert all(s < 500 for s in statuses), statuses
    assert rest_call(url, "GET", "/users").status == 401
    assert rest_call(url, "GET", "/runs").status == 401
    # Ownership: every run of A is A's; B's view holds none of them (B re-logs in if a generated
    # password change ended its tokens).
    everything = rest_call(url, "GET", "/runs?$limit=1000", token=admin).json["data"]
    owners = {run["_id"]: run.get("userId") for run in everything}
    a_run = world["runs"]["run A"]
    if a_run in owners:
        assert owners[a_run] == world["ids"]["user A"], owners[a_run]
    b_view = rest_call(url, "GET", "/runs?$limit=1000", token=tokens["user B"])
    if b_view.status == 401:
        tokens["user B"] = login(url, *world["credentials"]["user B"])["accessToken"]
        b_view = rest_call(url, "GET", "/runs?$limit=1000", token=tokens["user B"])
    assert b_view.status == 200, b_view
    assert all(run.get("userId") == world["ids"]["user B"] for run in b_view.json["data"]), b_view.json["data"]
    roles = {u["email"]: u["role"] for u in rest_call(url, "GET", "/users?$limit=1000", token=admin).json["data"]}
    for email, role in world["roles"].items():
        assert roles.get(email, role) == role, f"{email}: {world['roles'][email]} -> {roles.get(email)}"
    assert set(roles.values()) <= {"editor", "worker", "admin"}, roles


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
@given(batch=st.lists(CALLS, min_size=1, max_size=5))
def test_generated_calls_break_no_invariant(world, batch):
    statuses = [send(world, call) for call in batch]
    check_invariants(world, statuses)
