"""Logins and accounts of the real backend: login throttling (429 + Retry-After, per client
and per account, over REST and Socket.IO), tokens of deleted accounts (401), the admin
account made from the environment, and what the backend logs about permissions."""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest
from backend_http import ADMIN, ADMIN_ENV, AUTH_ON, SECRET, WORKER, login, login_reply, rest_call

from marcelle_torch.worker.client import BackendError

pytestmark = pytest.mark.backend

# The defaults of services/backend/backend/config/default.yaml (marcelleTorch.loginLimits).
PER_ACCOUNT = 5
PER_CLIENT = 10


@pytest.fixture
def auth_backend(make_backend):
    return make_backend(**AUTH_ON, extra_env=ADMIN_ENV)


def assert_throttled(reply):
    assert reply.status == 429, f"expected 429, got {reply}"
    assert reply.is_json_error() and reply.json["name"] == "TooManyRequests", reply
    retry = reply.headers.get("retry-after")
    assert retry is not None and retry.isdigit() and int(retry) > 0, f"Retry-After: {retry!r}"


def test_failed_logins_are_throttled_per_account_then_per_client(auth_backend, connect):
    url = auth_backend.url
    for attempt in range(PER_ACCOUNT):
        reply = login_reply(url, WORKER[0], f"wrong-{attempt}")
        assert reply.status == 401, f"wrong password #{attempt + 1}: {reply}"
    assert_throttled(login_reply(url, WORKER[0], "wrong-again"))
    # The account is locked for now, even with the right password.
    assert_throttled(login_reply(url, WORKER[0], WORKER[1]))

    # Other accounts from the same client, until the client's own budget is spent.
    for attempt in range(PER_CLIENT - PER_ACCOUNT):
        reply = login_reply(url, f"nobody-{attempt}@marcelle.test", "wrong")
        assert reply.status == 401, f"unknown account #{attempt + 1}: {reply}"
    assert_throttled(login_reply(url, "someone-else@marcelle.test", "wrong"))
    assert_throttled(login_reply(url, ADMIN[0], ADMIN[1]))

    # Socket.IO logins are counted and refused the same way.
    client = connect(url)
    with pytest.raises(BackendError) as refused:
        client.authenticate(ADMIN[0], ADMIN[1])
    assert refused.value.http_code == 429, refused.value
    assert auth_backend.alive()


def spend_client_budget(url, forwarded_for):
    """PER_CLIENT failed logins (each for another account) sent with this X-Forwarded-For."""
    for attempt in range(PER_CLIENT):
        reply = rest_call(
            url,
            "POST",
            "/authentication",
            {"strategy": "local", "password": "wrong", "email": f"n{attempt}-{uuid.uuid4().hex[:6]}@x.test"},
            headers={"X-Forwarded-For": forwarded_for},
        )
        assert reply.status == 401, f"attempt {attempt + 1}: {reply}"


def wrong_login_from(url, forwarded_for):
    return rest_call(
        url,
        "POST",
        "/authentication",
        {"strategy": "local", "email": "x@x.test", "password": "wrong"},
        headers={"X-Forwarded-For": forwarded_for},
    )


def test_x_forwarded_for_is_ignored_unless_proxies_are_trusted(auth_backend):
    # A client cannot get a fresh budget by writing the header itself.
    spend_client_budget(auth_backend.url, "10.0.0.1")
    assert_throttled(wrong_login_from(auth_backend.url, "10.0.0.2"))


def test_behind_trusted_proxies_each_client_has_its_own_budget(make_backend):
    backend = make_backend(
        **AUTH_ON,
        extra_env={"MARCELLE_BACKEND_TRUSTED_PROXIES": "2"},
    )
    # The header behind an Ingress controller and nginx: what the client wrote itself, the
    # client's address (appended by the Ingress controller), the controller's (by nginx).
    spend_client_budget(backend.url, "6.6.6.6, 203.0.113.7, 10.0.0.9")
    assert_throttled(wrong_login_from(backend.url, "7.7.7.7, 203.0.113.7, 10.0.0.9"))
    assert wrong_login_from(backend.url, "6.6.6.6, 203.0.113.8, 10.0.0.9").status == 401


def test_successful_logins_are_not_throttled(auth_backend):
    for _ in range(PER_CLIENT + 2):
        assert login(auth_backend.url, *WORKER)["user"]["role"] == "worker"


def test_a_valid_token_of_a_deleted_account_is_not_authenticated(make_backend, connect):
    backend = make_backend(**AUTH_ON, allow_signup=True)
    email, password = "gone@marcelle.test", "a-user-password-1"
    assert rest_call(backend.url, "POST", "/users", {"email": email, "password": password}).status == 201
    session = login(backend.url, email, password)
    token, user_id = session["accessToken"], session["user"]["_id"]
    assert rest_call(backend.url, "GET", "/runs", token=token).status == 200

    # The operator removes the account while the backend is stopped; the token stays valid.
    backend.stop()
    users_db = backend.data_dir / "users.db"
    kept = [line for line in users_db.read_text().splitlines() if line and json.loads(line).get("_id") != user_id]
    users_db.write_text("\n".join(kept) + "\n")
    backend.restart()

    for method, path in (("GET", "/runs"), ("GET", f"/users/{user_id}"), ("POST", "/runs")):
        reply = rest_call(
            backend.url, method, path, {"model": "digits", "input": [0]} if method == "POST" else None, token=token
        )
        assert reply.status == 401 and reply.is_json_error(), f"{method} {path} with a deleted account's token: {reply}"
    reply = rest_call(backend.url, "POST", "/authentication", {"strategy": "jwt", "accessToken": token})
    assert reply.status == 401 and reply.is_json_error(), f"jwt login of a deleted account: {reply}"
    client = connect(backend.url)
    with pytest.raises(BackendError) as refused:
        client.create("authentication", {"strategy": "jwt", "accessToken": token})
    assert refused.value.http_code == 401, refused.value

    # An account that deletes itself: its token is refused the same way.
    email2 = "leaving@marcelle.test"
    assert rest_call(backend.url, "POST", "/users", {"email": email2, "password": password}).status == 201
    session2 = login(backend.url, email2, password)
    reply = rest_call(backend.url, "DELETE", f"/users/{session2['user']['_id']}", token=session2["accessToken"])
    assert reply.status == 200, f"deleting one's own account: {reply}"
    reply = rest_call(backend.url, "GET", "/runs", token=session2["accessToken"])
    assert reply.status == 401, f"the token of a self-deleted account: {reply}"


def test_the_admin_account_comes_from_the_environment_and_makes_editor_accounts(auth_backend):
    admin = login(auth_backend.url, *ADMIN)
    assert admin["user"]["role"] == "admin"
    assert "password" not in admin["user"]
    email = f"made-{uuid.uuid4().hex[:6]}@marcelle.test"
    body = {"email": email, "password": "pw-0123456789"}
    reply = rest_call(auth_backend.url, "POST", "/users", {**body, "role": "admin"}, token=admin["accessToken"])
    assert reply.status == 400 and '"role" is not allowed' in reply.json["message"], reply
    reply = rest_call(auth_backend.url, "POST", "/users", body, token=admin["accessToken"])
    assert reply.status == 201, reply
    assert reply.json["role"] == "editor" and "password" not in reply.json
    assert login(auth_backend.url, email, "pw-0123456789")["user"]["role"] == "editor"
    # A restart with another password in the environment resets it.
    auth_backend.env["MARCELLE_ADMIN_PASSWORD"] = "a-new-admin-password"
    auth_backend.restart()
    assert login_reply(auth_backend.url, *ADMIN).status == 401
    assert login(auth_backend.url, ADMIN[0], "a-new-admin-password")["user"]["role"] == "admin"


def test_the_admin_account_needs_both_values(backend_installed, tmp_path):
    env = {
        **os.environ,
        "MARCELLE_BACKEND_AUTH": "true",
        "MARCELLE_BACKEND_SECRET": SECRET,
        "PORT": "0",
        "MARCELLE_BACKEND_DATA": str(tmp_path),
        "MARCELLE_ADMIN_EMAIL": ADMIN[0],
    }
    env.pop("MARCELLE_ADMIN_PASSWORD", None)
    done = subprocess.run(
        ["node", "start.js"], cwd=backend_installed, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done
    assert "MARCELLE_ADMIN_EMAIL and MARCELLE_ADMIN_PASSWORD" in done.stderr


def test_the_log_says_what_was_decided_not_the_rules(auth_backend):
    worker = login(auth_backend.url, *WORKER)["accessToken"]
    assert rest_call(auth_backend.url, "GET", "/runs", token=worker).status == 200
    assert rest_call(auth_backend.url, "POST", "/runs", {"model": "digits", "input": [0]}, token=worker).status == 403
    log = auth_backend.log_path.read_text()
    assert "${user._id}" not in log and "permissions {" not in log, log[-2000:]
    assert "denied create runs" in log, log[-2000:]
