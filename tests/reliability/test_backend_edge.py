"""The backend's edge, attacked as an attacker would, against the real backend (REST and
Socket.IO where both apply): prototype pollution and update operators in the worker's patch,
login operator injection and the account oracle, lockout from another address, tokens that
outlive logout, client-chosen account ids and fields, password-hash searches, quotas, deep
nesting, other websites (CORS, Origin, Host), the query `constructor` bypass, the Teach dataset's
instances (images, sizes, `__proto__`, operators, query fields, owners, quota) and who publishes
a model version.

services/backend/validation.js is the layer under test; access.js, accounts.js and quotas.js
do the rest."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import uuid
from urllib.parse import urlsplit

import pytest
from access_table import IMAGE, instance
from backend_http import ADMIN, ADMIN_ENV, AUTH_ON, WORKER, login, login_reply, query_string, rest_call

from marcelle_torch.worker.client import BackendError

pytestmark = pytest.mark.backend

PASSWORD = "a-user-password-1"
POLLUTION = {"__proto__.authenticated": True, "__proto__.user": {"_id": "evil", "role": "admin"}}


@pytest.fixture
def auth_backend(make_backend):
    return make_backend(
        **AUTH_ON,
        allow_signup=True,
        extra_env=ADMIN_ENV,
    )


@pytest.fixture
def closed_backend(make_backend):
    """As the chart runs it: sign-up off, the admin makes accounts."""
    return make_backend(**AUTH_ON, extra_env=ADMIN_ENV)


def make_user(url: str, admin_token: str | None = None) -> dict:
    """A new account (made by the admin, or by sign-up): its login answer (accessToken, user)."""
    email = f"u-{uuid.uuid4().hex[:8]}@marcelle.test"
    reply = rest_call(url, "POST", "/users", {"email": email, "password": PASSWORD}, token=admin_token)
    assert reply.status == 201, reply
    return login(url, email, PASSWORD)


def make_run(url: str, token: str | None = None) -> str:
    reply = rest_call(url, "POST", "/runs", {"model": "digits", "input": [1, 2, 3]}, token=token)
    assert reply.status == 201, reply
    return reply.json["_id"]


def assert_bad_request(reply, *words: str) -> None:
    assert reply.status == 400 and reply.is_json_error(), reply
    for word in words:
        assert word in reply.json["message"], reply


def socket_refusal(call) -> BackendError:
    with pytest.raises(BackendError) as refused:
        call()
    return refused.value


def assert_nobody_became_admin(url: str, run_id: str) -> None:
    """What the pollution opened: anonymous calls that the admin alone may make."""
    for method, path, body in (
        ("GET", "/users", None),
        ("POST", "/users", {"email": "x@x.test", "password": "password-x1"}),
        ("DELETE", f"/runs/{run_id}", None),
    ):
        reply = rest_call(url, method, path, body)
        assert reply.status == 401, f"anonymous {method} {path}: {reply}"


def test_1_the_workers_patch_cannot_pollute_prototypes(closed_backend, connect):
    url = closed_backend.url
    user = make_user(url, login(url, *ADMIN)["accessToken"])
    run_id = make_run(url, user["accessToken"])
    worker = login(url, *WORKER)["accessToken"]
    for data in (POLLUTION, {"__proto__": {"authenticated": True}}, {"partial": {"a": {"__proto__": {"x": 1}}}}):
        reply = rest_call(url, "PATCH", f"/runs/{run_id}?status=pending", data, token=worker)
        assert_bad_request(reply, "__proto__")
    client = connect(url, *WORKER)
    refused = socket_refusal(lambda: client.patch("runs", run_id, POLLUTION, {"status": "pending"}))
    assert refused.http_code == 400 and "__proto__" in str(refused), refused
    assert_nobody_became_admin(url, run_id)
    assert closed_backend.alive()


def test_1_with_authentication_off_nobody_can_pollute_either(make_backend, connect):
    backend = make_backend()
    run_id = make_run(backend.url)
    for data in (POLLUTION, {"__proto__.length": 0}, {"__proto__": {"length": 0}}, {"constructor": {"prototype": {}}}):
        reply = rest_call(backend.url, "PATCH", f"/runs/{run_id}", data)
        assert reply.status == 400 and reply.is_json_error(), f"{data}: {reply}"
    client = connect(backend.url)
    refused = socket_refusal(lambda: client.patch("runs", run_id, {"__proto__.length": 0}))
    assert refused.http_code == 400, refused
    # The process is whole: it still lists and creates runs.
    assert rest_call(backend.url, "GET", "/runs").status == 200
    make_run(backend.url)
    assert backend.alive()


def test_1_without_the_accessor_a_polluting_nedb_update_reaches_no_prototype(backend_installed):
    """Defence in depth, the validator bypassed: NeDB itself applies the polluting update (the
    package's own NeDB 1.8), in a node process with and without validation.js's
    removeProtoAccessor(); without it the prototype is polluted, so this check can fail."""
    probe = r"""
const path = require('path');
const pkg = path.dirname(require.resolve('@marcellejs/backend/package.json'));
const Datastore = require(require.resolve('nedb', { paths: [pkg] }));
if (process.argv[1] === 'hardened') require('./validation').removeProtoAccessor();
const db = new Datastore();
db.insert({ _id: 'r1', status: 'pending' }, () => {
  db.update({ _id: 'r1' }, { $set: { '__proto__.authenticated': true } }, {}, (err) => {
    console.log(JSON.stringify({ error: err ? err.message : null, polluted: ({}).authenticated === true }));
  });
});
"""
    results = {}
    for mode in ("plain", "hardened"):
        done = subprocess.run(
            ["node", "-e", probe, "--", mode], cwd=backend_installed, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    assert results["plain"]["polluted"] is True, f"NeDB no longer follows __proto__: {results}"
    assert results["hardened"]["polluted"] is False, results


def test_2_update_operators_cannot_move_a_run_to_another_owner(auth_backend, connect):
    url = auth_backend.url
    a, b = make_user(url), make_user(url)
    run_id = make_run(url, a["accessToken"])
    worker = login(url, *WORKER)["accessToken"]
    steal = {"$set": {"userId": b["user"]["_id"]}}
    assert_bad_request(rest_call(url, "PATCH", f"/runs/{run_id}?status=pending", steal, token=worker), "$set")
    client = connect(url, *WORKER)
    assert socket_refusal(lambda: client.patch("runs", run_id, steal, {"status": "pending"})).http_code == 400
    # And as a plain field: not a field the worker writes.
    reply = rest_call(url, "PATCH", f"/runs/{run_id}?status=pending", {"userId": b["user"]["_id"]}, token=worker)
    assert_bad_request(reply, "userId")
    assert rest_call(url, "GET", f"/runs/{run_id}", token=a["accessToken"]).status == 200
    assert rest_call(url, "GET", f"/runs/{run_id}", token=b["accessToken"]).status == 404


def test_3_login_fields_must_be_strings_and_unknown_accounts_answer_as_wrong_passwords(auth_backend, connect):
    url = auth_backend.url
    # An operator that matches the worker's email, and one that matches nothing: the same 400.
    for email in ({"$gt": "worker-k"}, {"$gt": "zzzz"}, ["x"], 3):
        reply = rest_call(url, "POST", "/authentication", {"strategy": "local", "email": email})
        assert_bad_request(reply)
        reply = rest_call(url, "POST", "/authentication", {"strategy": "local", "email": WORKER[0], "password": email})
        assert reply.status == 400, reply
    client = connect(url)
    refused = socket_refusal(lambda: client.create("authentication", {"strategy": "local", "email": {"$gt": ""}}))
    assert refused.http_code == 400, refused
    unknown = login_reply(url, "nobody-here@marcelle.test", "wrong-password")
    known = login_reply(url, WORKER[0], "wrong-password")
    assert unknown.status == known.status == 401
    assert unknown.json["message"] == known.json["message"], (unknown, known)


def test_4_wrong_passwords_from_one_address_do_not_lock_out_another(make_backend):
    backend = make_backend(
        **AUTH_ON,
        extra_env={**ADMIN_ENV, "MARCELLE_BACKEND_TRUSTED_PROXIES": "1"},
    )

    def attempt(password: str, address: str):
        body = {"strategy": "local", "email": ADMIN[0], "password": password}
        return rest_call(backend.url, "POST", "/authentication", body, headers={"X-Forwarded-For": address})

    for n in range(5):
        assert attempt(f"wrong-{n}", "203.0.113.66").status == 401
    assert attempt("wrong-again", "203.0.113.66").status == 429
    assert attempt(ADMIN[1], "203.0.113.66").status == 429
    answer = attempt(ADMIN[1], "198.51.100.7")
    assert answer.status == 201, f"the admin, from another address, after a stranger's wrong passwords: {answer}"


def test_4_a_throttled_worker_waits_and_logs_in(make_backend, make_worker, wait_until):
    # Two attempts per account and address a few seconds: the test spends them first.
    limits = {"marcelleTorch": {"loginLimits": {"perAccount": {"attempts": 2, "seconds": 4}}}}
    backend = make_backend(
        **AUTH_ON,
        extra_env={"NODE_CONFIG": json.dumps(limits)},
    )
    for _ in range(2):
        assert login_reply(backend.url, WORKER[0], "wrong").status == 401
    assert login_reply(backend.url, *WORKER).status == 429
    worker = make_worker(
        backend.url,
        "throttled",
        wait=False,
        env={"MARCELLE_WORKER_EMAIL": WORKER[0], "MARCELLE_WORKER_PASSWORD": WORKER[1]},
    )
    wait_until(lambda: f"logged in as {WORKER[0]}" in worker.log_text(), 60, "the throttled worker to log in")
    assert "log in refused for now" in worker.log_text(), worker.log_text()[-2000:]
    assert worker.proc.poll() is None, worker.log_text()[-2000:]


def test_5_tokens_end_at_logout_password_change_and_account_deletion(auth_backend, connect):
    url = auth_backend.url
    email = f"t-{uuid.uuid4().hex[:8]}@marcelle.test"
    assert rest_call(url, "POST", "/users", {"email": email, "password": PASSWORD}).status == 201
    first, second = login(url, email, PASSWORD), login(url, email, PASSWORD)
    client = connect(url, email, PASSWORD)
    assert rest_call(url, "DELETE", "/authentication", token=first["accessToken"]).status == 200
    for token in (first["accessToken"], second["accessToken"]):
        assert rest_call(url, "GET", "/runs", token=token).status == 401
        assert rest_call(url, "POST", "/authentication", {"strategy": "jwt", "accessToken": token}).status == 401
    assert socket_refusal(lambda: client.find("runs")).http_code == 401

    # A password change ends the sessions before it.
    session = login(url, email, PASSWORD)
    user_id = session["user"]["_id"]
    new_password = "another-password-2"
    reply = rest_call(url, "PATCH", f"/users/{user_id}", {"password": new_password}, token=session["accessToken"])
    assert reply.status == 200, reply
    assert rest_call(url, "GET", "/runs", token=session["accessToken"]).status == 401
    session = login(url, email, new_password)

    # Deleting the account deletes its runs; its token stays dead.
    run_id = make_run(url, session["accessToken"])
    admin = login(url, *ADMIN)["accessToken"]
    assert rest_call(url, "DELETE", f"/users/{user_id}", token=session["accessToken"]).status == 200
    assert rest_call(url, "GET", f"/runs/{run_id}", token=admin).status == 404
    assert rest_call(url, "GET", "/runs", token=session["accessToken"]).status == 401


def test_6_accounts_are_made_by_the_server_with_email_and_password_only(auth_backend, connect):
    url = auth_backend.url
    admin = login(url, *ADMIN)["accessToken"]
    victim = make_user(url)
    for body, word in (
        ({"_id": victim["user"]["_id"], "email": "heir@x.test", "password": PASSWORD}, "_id"),
        ({"email": "x1@x.test", "password": PASSWORD, "role": "admin"}, "role"),
        ({"email": "x2@x.test", "password": PASSWORD, "tokenVersion": -1}, "tokenVersion"),
        ([{"email": "x3@x.test", "password": PASSWORD}], "object"),
        ({"email": "x4@x.test"}, "password"),
        ({"email": "not-an-email", "password": PASSWORD}, "email"),
    ):
        for token in (admin, None):
            assert_bad_request(rest_call(url, "POST", "/users", body, token=token), word)
    client = connect(url)
    chosen = {"_id": "chosen", "email": "s@x.test", "password": PASSWORD}
    refused = socket_refusal(lambda: client.create("users", chosen))
    assert refused.http_code == 400, refused
    users = rest_call(url, "GET", "/users?$limit=100", token=admin).json["data"]
    assert not any(u["email"].startswith("x") for u in users), users


def test_6_the_admin_email_never_promotes_an_existing_account(auth_backend, backend_installed):
    url = auth_backend.url
    editor = make_user(url)
    auth_backend.env["MARCELLE_ADMIN_EMAIL"] = editor["user"]["email"]
    auth_backend.stop()
    env = {**auth_backend.env}
    done = subprocess.run(
        ["node", "start.js"], cwd=backend_installed, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done
    assert "existing editor account" in done.stderr, done.stderr


def test_7_nobody_searches_password_hashes(auth_backend, connect):
    url = auth_backend.url
    admin = login(url, *ADMIN)["accessToken"]
    for path in (
        f"/users?email={WORKER[0]}&password[$gte]=%242",
        "/users?password=x",
        "/users?email[$gt]=a",
        "/users?$sort[password]=1",
        "/users?$select[]=password",
    ):
        assert_bad_request(rest_call(url, "GET", path, token=admin))
    client = connect(url, *ADMIN)
    refused = socket_refusal(lambda: client.find("users", {"password": {"$gte": "$2"}}))
    assert refused.http_code == 400, refused


def test_8_quotas_bound_what_one_user_queues(make_backend):
    backend = make_backend(
        **AUTH_ON,
        allow_signup=True,
        extra_env={"MARCELLE_RUNS_PER_MINUTE": "4", "MARCELLE_RUNS_PENDING_BYTES": "3000"},
    )
    url = backend.url
    a, b = make_user(url), make_user(url)
    big = "x" * 1400

    def create(user, data):
        return rest_call(url, "POST", "/runs", {"model": "digits", "input": data}, token=user["accessToken"])

    assert create(a, big).status == 201
    assert create(a, big).status == 201
    full = create(a, big)  # 3 x 1402 bytes pending would be over 3000
    assert full.status == 429 and full.headers.get("retry-after", "").isdigit(), full
    too_big = create(a, "x" * 4000)
    assert too_big.status == 413, too_big
    assert create(b, big).status == 201, "another user's budget is their own"
    assert create(a, 1).status == 201
    assert create(a, 2).status == 201  # the fourth of the minute (refused ones do not count)
    rate = create(a, 3)
    assert rate.status == 429 and int(rate.headers["retry-after"]) > 0, rate
    assert "a minute" in rate.json["message"], rate


def deep_json(depth: int) -> str:
    return '{"model": "digits", "input": ' + "[" * depth + "]" * depth + "}"


def test_9_a_document_nested_100000_deep_is_a_400(make_backend, connect):
    backend = make_backend()
    where = backend.url.split("//")[1]
    conn = http.client.HTTPConnection(*where.split(":"), timeout=30)
    conn.request("POST", "/runs", body=deep_json(100_000), headers={"Content-Type": "application/json"})
    answer = conn.getresponse()
    body = json.loads(answer.read())
    conn.close()
    assert answer.status == 400 and "nested deeper" in body["message"], body
    # Socket.IO: the same document through the socket (Python's json cannot write it: built as text).
    client = connect(backend.url)
    nested: list = []
    for _ in range(40):
        nested = [nested]
    refused = socket_refusal(lambda: client.create("runs", {"model": "digits", "input": nested}))
    assert refused.http_code == 400 and "nested deeper" in str(refused), refused
    assert backend.alive() and rest_call(backend.url, "GET", "/runs").status == 200


def socket_handshake(url: str, headers: dict, websocket: bool = False) -> int:
    """The status of an engine.io handshake (polling, or a websocket upgrade) with these headers."""
    where = urlsplit(url)
    sent = {"Host": where.netloc, **headers}
    if websocket:
        sent.update({"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"})
        sent["Sec-WebSocket-Key"] = "dGhlIHNhbXBsZSBub25jZQ=="
    transport = "websocket" if websocket else "polling"
    lines = [f"GET /socket.io/?EIO=3&transport={transport} HTTP/1.1", *(f"{k}: {v}" for k, v in sent.items())]
    with socket.create_connection((where.hostname, where.port), timeout=30) as conn:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        status_line = conn.recv(4096).split(b"\r\n", 1)[0].decode()
    return int(status_line.split()[1])


def test_10_other_websites_cannot_drive_the_local_demo(make_backend):
    app_origin = "http://127.0.0.1:8080"
    backend = make_backend(cors_origins=[app_origin])
    url = backend.url
    evil = {"Origin": "http://evil.example"}
    for method, body in (("GET", None), ("POST", {"model": "digits", "input": [1]})):
        reply = rest_call(url, method, "/runs", body, headers=evil)
        assert reply.status == 403 and "Origin" in reply.json["message"], reply
        assert "access-control-allow-origin" not in reply.headers, reply.headers
    preflight = rest_call(url, "OPTIONS", "/runs", headers={**evil, "Access-Control-Request-Method": "POST"})
    assert preflight.headers.get("access-control-allow-origin") in (None, ""), preflight.headers
    mine = rest_call(url, "GET", "/runs", headers={"Origin": app_origin})
    assert mine.status == 200 and mine.headers.get("access-control-allow-origin") == app_origin, mine.headers
    # DNS rebinding: another site's name that resolves to this address.
    rebound = rest_call(url, "GET", "/runs", headers={"Host": f"evil.example:{backend.port}"})
    assert rebound.status == 403 and "Host" in rebound.json["message"], rebound
    # Socket.IO: a websocket has no CORS; its handshake (polling, or a websocket upgrade) is
    # refused.
    rebind = {"Host": f"evil.example:{backend.port}"}
    for headers in (evil, rebind):
        assert socket_handshake(url, headers) != 200, headers
        assert socket_handshake(url, headers, websocket=True) != 101, headers
    assert socket_handshake(url, {"Origin": app_origin}) == 200
    assert socket_handshake(url, {"Origin": app_origin}, websocket=True) == 101


def test_11_a_constructor_key_does_not_skip_the_operator_check(auth_backend, connect):
    url = auth_backend.url
    admin = login(url, *ADMIN)["accessToken"]
    for path in (
        "/runs?status[constructor]=x&status[$where]=1",
        "/runs?model[constructor][a]=1&model[$regex]=.*",
        "/runs?status[$where]=1",
        "/runs?$or[0][status]=pending",
        "/runs?input[$exists]=true",
    ):
        reply = rest_call(url, "GET", path, token=admin)
        assert reply.status == 400 and reply.is_json_error(), f"{path}: {reply}"
    client = connect(url, *ADMIN)
    query = {"status": {"constructor": {"a": 1}, "$where": "1"}}
    assert socket_refusal(lambda: client.find("runs", query)).http_code == 400
    assert auth_backend.alive()


VALIDATOR_CASES = r"""
const { checkShape, checkCall } = require('./validation');
const cases = JSON.parse(process.argv[1]);
const out = cases.map(([path, method, role, data, query]) => {
  const context = { path, method, data, params: { query, provider: 'rest' } };
  try { checkShape(context); checkCall(context, role); return 'accepted'; }
  catch (error) { return `${error.code} ${error.message}`; }
});
console.log(JSON.stringify(out));
"""


def test_the_validator_refuses_the_queries_mongodb_would_run(backend_installed):
    """No MongoDB server here: the edge is what keeps these from it (the queries of findings
    7 and 11, and MongoDB-only operators), for every role."""
    refused = [
        ["runs", "find", role, None, query]
        for role in ("admin", "editor", "worker", None)
        for query in (
            {"status": {"$where": "sleep(1000)"}},
            {"model": {"$regex": "^d"}},
            {"status": {"$expr": {"$eq": [1, 1]}}},
            {"$where": "1"},
            {"status": {"constructor": {}, "$where": "1"}},
            {"$or": [{"status": "pending"}]},
            {"$and": [{"status": "pending"}]},
        )
    ] + [
        ["users", "find", "admin", None, {"password": {"$gte": "$2"}}],
        ["users", "find", "admin", None, {"email": {"$regex": "^a"}}],
        ["authentication", "create", None, {"strategy": "local", "email": {"$gt": ""}, "password": "x"}, {}],
    ]
    accepted = [
        ["runs", "find", "worker", None, {"status": "pending", "model": {"$in": ["digits"]}, "$limit": 100}],
        ["runs", "find", "editor", None, {"$sort": {"createdAt": -1}, "$limit": "10"}],
        ["runs", "patch", "worker", {"status": "running", "worker": "w1", "progress": 0}, {"status": "pending"}],
        ["users", "find", "admin", None, {"email": "a@b.c"}],
    ]
    done = subprocess.run(
        ["node", "-e", VALIDATOR_CASES, json.dumps(refused + accepted)],
        cwd=backend_installed,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)
    for case, answer in zip(refused, answers[: len(refused)], strict=True):
        assert answer.startswith("400 "), f"{case}: {answer}"
    for case, answer in zip(accepted, answers[len(refused) :], strict=True):
        assert answer == "accepted", f"{case}: {answer}"


# ---------------------------------------------------------------- the Teach dataset's instances

TEACH = "/instances-teach"


def jpeg_url(size: int) -> str:
    """A data URL of ``size`` characters (a JPEG's header, then base64 padding of it)."""
    head = "data:image/jpeg;base64,"
    return head + "A" * (size - len(head))


def test_12_an_instance_is_an_image_data_url_a_label_and_a_dataset_name(make_backend, connect):
    backend = make_backend()
    url = backend.url
    client = connect(url)
    good = rest_call(url, "POST", TEACH, instance())
    assert good.status == 201 and good.json["datasetName"] == "teach", good
    stored = good.json
    assert {"x", "y", "thumbnail", "datasetName", "createdAt", "updatedAt", "_id"} <= set(stored), stored
    assert rest_call(url, "POST", TEACH, {**instance(), "x": "data:image/png;base64,iVBORw0KGgo="}).status == 201
    assert rest_call(url, "POST", TEACH, {**instance(), "x": jpeg_url(1024 * 1024)}).status == 201
    for data, words in (
        ({**instance(), "x": "https://example.com/a.png"}, ("x must match pattern",)),
        ({**instance(), "x": "data:text/html;base64,PHNjcmlwdD4="}, ("x must match pattern",)),
        ({**instance(), "x": "data:image/svg+xml;base64,PHN2Zz4="}, ("x must match pattern",)),
        ({**instance(), "x": "data:image/jpeg;base64,not base64!"}, ("x must match pattern",)),
        ({**instance(), "x": [[0, 1], [1, 0]]}, ("x must be string",)),
        ({**instance(), "x": jpeg_url(1024 * 1024 + 1)}, ("x must NOT have more than 1048576 characters",)),
        ({**instance(), "thumbnail": jpeg_url(64 * 1024 + 1)}, ("thumbnail must NOT have more than 65536",)),
        ({**instance(), "y": ""}, ("y must NOT have fewer than 1",)),
        ({**instance(), "y": "y" * 65}, ("y must NOT have more than 64",)),
        ({**instance(), "y": 3}, ("y must be string",)),
        ({**instance(), "datasetName": "d" * 65}, ("datasetName must NOT have more than 64",)),
        ({"x": IMAGE, "y": "a"}, ("datasetName is missing",)),
        ({**instance(), "userId": "someone-else"}, ('"userId" is not allowed',)),
        ({**instance(), "_id": "chosen-id"}, ('"_id" is not allowed',)),
        ({**instance(), "label": "a"}, ('"label" is not allowed',)),
        ([instance(), instance()], ("one instance at a time",)),
    ):
        assert_bad_request(rest_call(url, "POST", TEACH, data), "instances-teach.create", *words)
        refused = socket_refusal(lambda data=data: client.create("instances-teach", data))
        assert refused.http_code == 400 and words[0] in str(refused), (data if len(str(data)) < 200 else words, refused)
    # A patch changes the label, the image or the thumbnail, nothing else.
    id_ = stored["_id"]
    assert rest_call(url, "PATCH", f"{TEACH}/{id_}", {"y": "b"}).json["y"] == "b"
    for data, word in (({}, "must NOT have fewer than 1 properties"), ({"datasetName": "other"}, '"datasetName"'),
                       ({"x": "data:text/plain;base64,AA=="}, "x must match pattern")):  # fmt: skip
        assert_bad_request(rest_call(url, "PATCH", f"{TEACH}/{id_}", data), "instances-teach.patch", word)
    assert rest_call(url, "PUT", f"{TEACH}/{id_}", instance()).status == 405
    assert backend.alive()


def test_12_proto_keys_and_operators_in_an_instance_are_data_errors(make_backend, connect):
    backend = make_backend()
    url = backend.url
    client = connect(url)
    id_ = rest_call(url, "POST", TEACH, instance()).json["_id"]
    for data in (
        {**instance(), "__proto__": {"role": "admin"}},
        {**instance(), "__proto__.authenticated": True},
        {**instance(), "constructor": {"prototype": {"x": 1}}},
        {**instance(), "$set": {"y": "b"}},
        {**instance(), "y.z": "b"},
    ):
        reply = rest_call(url, "POST", TEACH, data)
        assert reply.status == 400 and reply.is_json_error(), f"{data}: {reply}"
        assert socket_refusal(lambda data=data: client.create("instances-teach", data)).http_code == 400
    for data in (
        {"$set": {"y": "b"}},
        {"$unset": {"x": 1}},
        {"__proto__": {"y": "b"}},
        {"y": "b", "$rename": {"y": "z"}},
    ):
        reply = rest_call(url, "PATCH", f"{TEACH}/{id_}", data)
        assert reply.status == 400 and reply.is_json_error(), f"{data}: {reply}"
        assert socket_refusal(lambda data=data: client.patch("instances-teach", id_, data)).http_code == 400
    assert rest_call(url, "GET", f"{TEACH}/{id_}").json["y"] == "a", "a refused patch changed the instance"
    assert ({}).get("role") is None and backend.alive()
    assert rest_call(url, "GET", "/runs").status == 200


def test_12_instance_queries_name_known_fields_with_the_operators_runs_use(make_backend, connect):
    backend = make_backend()
    url = backend.url
    client = connect(url)
    for label in ("a", "a", "b"):
        assert rest_call(url, "POST", TEACH, instance(label)).status == 201
    # What Marcelle's dataset and its components ask (dataset.items(), distinct('y'), $count).
    for query, check in (
        ({"datasetName": "teach", "$limit": 0}, lambda r: r["total"] == 3),
        ({"datasetName": "teach", "y": "a", "$sort": {"updatedAt": -1}, "$skip": 0, "$limit": 10,
          "$select": ["id", "y", "thumbnail", "_id"]}, lambda r: len(r["data"]) == 2 and "x" not in r["data"][0]),
        ({"datasetName": "teach", "$distinct": "y"}, lambda r: sorted(r) == ["a", "b"]),
        ({"y": {"$in": ["b"]}, "_id": {"$ne": "nothing"}}, lambda r: r["total"] == 1),
    ):  # fmt: skip
        reply = rest_call(url, "GET", f"{TEACH}?{query_string(query)}")
        assert reply.status == 200 and check(reply.json), f"{query}: {reply}"
        assert check(client.find("instances-teach", query)), query
    for query, word in (
        ({"x": {"$gt": ""}}, '"x" is not allowed'),
        ({"thumbnail": IMAGE}, '"thumbnail" is not allowed'),
        ({"password": "x"}, '"password" is not allowed'),
        ({"y": {"$regex": "^a"}}, "query: y"),
        ({"y": {"$gt": "a"}}, "query: y"),
        ({"$where": "1"}, '"$where" is not allowed'),
        ({"$or": [{"y": "a"}]}, '"$or" is not allowed'),
        ({"y": {"constructor": "x", "$ne": "a"}}, "constructor"),
        ({"$select": ["password"]}, "$select"),
        ({"$sort": {"x": 1}}, "$sort must be one of _id"),
        ({"$distinct": "x"}, "$distinct"),
        ({"$limit": "-1"}, "$limit"),
    ):
        reply = rest_call(url, "GET", f"{TEACH}?{query_string(query)}")
        assert_bad_request(reply, word)
        assert socket_refusal(lambda query=query: client.find("instances-teach", query)).http_code == 400, query
    assert backend.alive()


def test_12_a_user_sees_and_changes_their_own_instances_only(auth_backend, connect):
    url = auth_backend.url
    a, b = make_user(url), make_user(url)
    ids = {}
    for name, user in (("a", a), ("b", b)):
        reply = rest_call(url, "POST", TEACH, instance(name), token=user["accessToken"])
        assert reply.status == 201 and reply.json["userId"] == user["user"]["_id"], reply
        ids[name] = reply.json["_id"]
    # B's find, with or without a query naming A (the owner's query replaces it), and B's
    # distinct labels: B's own only.
    for query, seen in (({}, [ids["b"]]), ({"userId": a["user"]["_id"]}, [ids["b"]]), ({"y": "a"}, [])):
        reply = rest_call(url, "GET", f"{TEACH}?{query_string(query)}", token=b["accessToken"])
        assert [i["_id"] for i in reply.json["data"]] == seen, (query, reply)
    labels = rest_call(url, "GET", f"{TEACH}?{query_string({'$distinct': 'y'})}", token=b["accessToken"])
    assert labels.json == ["b"], labels
    assert rest_call(url, "PATCH", f"{TEACH}/{ids['a']}", {"y": "x"}, token=b["accessToken"]).status == 404
    # B clears its dataset (Marcelle's dataset.clear(): a remove without an id): A's stays.
    assert rest_call(url, "DELETE", f"{TEACH}?datasetName=teach", token=b["accessToken"]).status == 200
    worker = login(url, *WORKER)["accessToken"]
    left = rest_call(url, "GET", TEACH, token=worker).json["data"]
    assert [i["_id"] for i in left] == [ids["a"]], left
    # The worker reads every instance and writes none.
    assert rest_call(url, "POST", TEACH, instance(), token=worker).status == 403
    assert rest_call(url, "DELETE", f"{TEACH}/{ids['a']}", token=worker).status == 403
    # An account's instances go with it.
    assert rest_call(url, "DELETE", f"/users/{a['user']['_id']}", token=a["accessToken"]).status == 200
    assert rest_call(url, "GET", TEACH, token=worker).json["total"] == 0


def test_12_a_user_keeps_a_bounded_number_of_instances(make_backend):
    backend = make_backend(**AUTH_ON, allow_signup=True, extra_env={"MARCELLE_INSTANCES_PER_USER": "3"})
    url = backend.url
    a, b = make_user(url), make_user(url)
    made = [rest_call(url, "POST", TEACH, instance(), token=a["accessToken"]) for _ in range(3)]
    assert all(reply.status == 201 for reply in made), made
    full = rest_call(url, "POST", TEACH, instance(), token=a["accessToken"])
    assert full.status == 403 and full.is_json_error(), full
    assert "at most 3" in full.json["message"] and "remove some" in full.json["message"], full
    assert rest_call(url, "POST", TEACH, instance(), token=b["accessToken"]).status == 201, "B's quota is B's"
    assert rest_call(url, "DELETE", f"{TEACH}/{made[0].json['_id']}", token=a["accessToken"]).status == 200
    assert rest_call(url, "POST", TEACH, instance(), token=a["accessToken"]).status == 201


# ---------------------------------------------------------------- publishing a model version


def test_13_only_the_admin_publishes_a_model_version(closed_backend, connect):
    url = closed_backend.url
    admin = login(url, *ADMIN)["accessToken"]
    user = make_user(url, admin)

    def create(params, token):
        return rest_call(url, "POST", "/runs", {"model": "digits", "input": 0, "params": params}, token=token)

    for params in ({"publish": "0123456789ab"}, {"publish": None}, {"publish": "not a version"}):
        refused = create(params, user["accessToken"])
        assert refused.status == 403 and "only the admin publishes a model version" in refused.json["message"], refused
    client = connect(url, user["user"]["email"], PASSWORD)
    refused = socket_refusal(
        lambda: client.create("runs", {"model": "digits", "input": 0, "params": {"publish": None}})
    )
    assert refused.http_code == 403 and "only the admin publishes" in str(refused), refused
    assert create({"publish": "0123456789ab"}, login(url, *WORKER)["accessToken"]).status == 403
    for params, word in (
        ({"publish": "0123456789AB"}, "params.publish must match pattern"),
        ({"publish": "0123456789abc"}, "params.publish must match pattern"),
        ({"publish": 12}, "params.publish must be string"),
        ({"train": [1]}, "params.train must be object"),
    ):
        assert_bad_request(create(params, admin), "runs.create", word)
    assert create({"publish": "0123456789ab"}, admin).status == 201
    assert create({"publish": None}, admin).status == 201
    assert create({"train": {"epochs": 2}}, user["accessToken"]).status == 201, "an editor still trains"


def test_14_runs_and_instances_are_found_by_time_over_rest_and_socketio(make_backend, connect):
    # @marcellejs/backend's app hook turns createdAt/updatedAt $gt.. into Dates in place, before a
    # REST call's inner call to the data service (validation.js checkDateQueries).
    backend = make_backend()
    url = backend.url
    client = connect(url)
    run_id = make_run(url)
    assert rest_call(url, "POST", TEACH, instance("a")).status == 201
    assert client.get("runs", run_id)["status"] == "pending"
    for service in ("/runs", TEACH):
        name = service.lstrip("/")
        made = client.find(name, {})["data"][0]["createdAt"]
        for query, total in (
            ({"createdAt": {"$gt": "2020-01-01T00:00:00.000Z"}}, 1),
            ({"createdAt": {"$lte": made}, "updatedAt": {"$gte": "2020-01-01"}}, 1),
            ({"createdAt": {"$gt": "2999-01-01T00:00:00Z"}}, 0),
            ({"updatedAt": {"$lt": "2020-01-01T00:00:00+02:00"}}, 0),
        ):
            reply = rest_call(url, "GET", f"{service}?{query_string(query)}")
            assert reply.status == 200 and reply.json["total"] == total, f"{service} {query}: {reply}"
            assert client.find(name, query)["total"] == total, (service, query)
        for bad in ("yesterday", "2026-13-45T99:99:99Z", {"$regex": "2026"}):
            query = {"createdAt": {"$gt": bad}}
            reply = rest_call(url, "GET", f"{service}?{query_string(query)}")
            assert reply.status == 400 and reply.is_json_error(), f"{service} {query}: {reply}"
            assert "createdAt" in reply.json["message"], reply
            assert socket_refusal(lambda n=name, q=query: client.find(n, q)).http_code == 400, (service, query)
    assert backend.alive()
