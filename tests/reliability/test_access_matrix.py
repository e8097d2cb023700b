"""The access table (access_table.py), cell by cell, against the real backend, over REST and
over Socket.IO.

Two backends: one with authentication off (the local default), one with authentication on
and sign-up off (users A and B signed up while it was on, then the backend restarted with it
off), a worker account and an admin account from the environment. Each runs cell acts on a
fresh run of user A, each instances-teach cell on a fresh instance of user A; each users cell on
user A's account (A deleting itself comes last).
"""

from __future__ import annotations

import time
import uuid

import access_table
import pytest
from backend_http import (
    ADMIN,
    ADMIN_ENV,
    AUTH_ON,
    METHODS,
    WORKER,
    jwt_payload,
    login_reply,
    make_jwt,
    query_string,
    rest_call,
    socket_args,
)

from marcelle_torch.worker.client import BackendError

pytestmark = pytest.mark.backend

PASSWORD = "a-user-password-1"


def new_run(url, token=None):
    reply = rest_call(url, "POST", "/runs", {"model": "digits", "input": [0], "params": {}}, token=token)
    assert reply.status == 201, f"a run for the table: {reply}"
    return reply.json["_id"]


def new_instance(url, token=None):
    reply = rest_call(url, "POST", "/instances-teach", access_table.instance(), token=token)
    assert reply.status == 201, f"an instance for the table: {reply}"
    return reply.json["_id"]


def rest_sender(url, token):
    def send(method, service, id_, body, query=None):
        path = f"/{service}/{id_}" if id_ is not None else f"/{service}"
        if query:
            path = f"{path}?{query_string(query)}"
        reply = rest_call(
            url, METHODS[method], path, None if method in ("find", "get", "remove") else body, token=token
        )
        return reply.status, reply.json, reply.status < 400 or reply.is_json_error(), reply.raw[:80]

    return send


def socket_sender(client):
    def send(method, service, id_, body, query=None):
        try:
            result = client.call(method, service, *socket_args(method, id_, body, query or {}), timeout=15)
        except BackendError as exc:
            return exc.http_code, None, isinstance(exc.http_code, int), str(exc)[:80]
        return (201 if method == "create" else 200), result, True, ""

    return send


class Cell:
    """Runs one operation as one caller and names the outcome as the table does."""

    def __init__(self, url, tokens, ids):
        self.url, self.tokens, self.ids = url, tokens, ids  # ids: caller -> account id

    def outcome(self, op, caller, send):
        service, method, with_id, attack = (*op, None)[:4]
        own = set()
        if service == "runs":
            run_a = new_run(self.url, self.tokens.get("user A"))
            run_b = new_run(self.url, self.tokens.get("user B"))
            target, seeded = run_a, {run_a, run_b}
            own = {"user A": {run_a}, "user B": {run_b}}.get(caller, set())
            body = {"status": "canceled"}
            if method == "update":
                body = {"model": "digits", "input": [0], "params": {}}
            if method == "create":
                body = {"model": "digits", "input": [1], "params": {}}
        elif service == "instances-teach":
            instance_a = new_instance(self.url, self.tokens.get("user A"))
            instance_b = new_instance(self.url, self.tokens.get("user B"))
            target, seeded = instance_a, {instance_a, instance_b}
            own = {"user A": {instance_a}, "user B": {instance_b}}.get(caller, set())
            body = {"y": "b"}
            if method in ("create", "update"):
                body = access_table.instance("c")
        else:
            target = self.ids.get("user A", "no-such-account")
            seeded = {i for i in self.ids.values() if i}
            own = {self.ids[caller]} if self.ids.get(caller) else set()
            body = {"password": PASSWORD}
            if method == "create":
                body = {"email": f"new-{uuid.uuid4().hex[:8]}@marcelle.test", "password": PASSWORD}
            if method == "update":
                body = {"email": "a@marcelle.test", "password": PASSWORD}
        query = None
        if attack:
            body = access_table.VARIANTS[attack].get("body", body)
            query = access_table.VARIANTS[attack].get("query")
        status, payload, json_error, text = send(method, service, target if with_id else None, body, query)
        if not json_error:
            return f"{status} (not a JSON error: {text!r})"
        if method == "find" and status == 200:
            data = payload["data"] if isinstance(payload, dict) else payload
            visible = {item["_id"] for item in data} & seeded
            if visible == seeded:
                return "200 all"
            if visible == own:
                return "200 own"
            return f"200 some ({len(visible)} of {len(seeded)})"
        return str(status)


def check_table(callers, senders, tokens, ids, url, relogin=None) -> list[str]:
    """``relogin(caller)``: a new sender for a caller whose password change ended its tokens."""
    cell = Cell(url, tokens, ids)
    mismatches = []
    # A deleting its own account is the last cell: every other cell needs A.
    order = [op for op in access_table.OPERATIONS if op != ("users", "remove", True)] + [("users", "remove", True)]
    for op in order:
        for caller, column in sorted(callers, key=lambda c: c[0] == "user A"):
            expected = access_table.EXPECTED[op][column]
            got = cell.outcome(op, caller, senders[caller])
            if got != expected:
                mismatches.append(f"{access_table.op_name(op)} as {caller}: expected {expected}, got {got}")
            if op == ("users", "patch", True) and got == "200" and relogin is not None:
                senders[caller] = relogin(caller)
    return mismatches


def sign_up(url, email):
    reply = rest_call(url, "POST", "/users", {"email": email, "password": PASSWORD})
    assert reply.status == 201, f"sign-up of {email}: {reply}"
    return reply.json["_id"]


@pytest.mark.parametrize("transport", ["rest", "socketio"])
def test_the_access_table(make_backend, connect, transport):
    def senders_for(url, tokens, credentials):
        if transport == "rest":
            return {caller: rest_sender(url, token) for caller, token in tokens.items()}
        senders = {}
        for caller in tokens:
            client = connect(url)
            if caller in credentials:
                client.authenticate(*credentials[caller])
            elif tokens[caller]:
                # A bad token is refused at login, and the connection stays anonymous.
                with pytest.raises(BackendError) as refused:
                    client.create("authentication", {"strategy": "jwt", "accessToken": tokens[caller]})
                assert refused.value.http_code == 401, (caller, refused.value)
            senders[caller] = socket_sender(client)
        return senders

    # Authentication off: anyone may do what the local demo needs, nothing more.
    off = make_backend()
    mismatches = check_table([("anyone", "auth off")], senders_for(off.url, {"anyone": None}, {}), {}, {}, off.url)

    # Authentication on: A and B sign up while sign-up is on, then it is turned off.
    kwargs = dict(**AUTH_ON, extra_env=ADMIN_ENV)
    first = make_backend(allow_signup=True, **kwargs)
    ids = {"user A": sign_up(first.url, "a@marcelle.test"), "user B": sign_up(first.url, "b@marcelle.test")}
    first.stop()
    backend = make_backend(data_dir=first.data_dir, allow_signup=False, **kwargs)

    credentials = {
        "user A": ("a@marcelle.test", PASSWORD),
        "user B": ("b@marcelle.test", PASSWORD),
        "worker": WORKER,
        "admin": ADMIN,
    }
    tokens = {"anonymous": None}
    for caller, (email, password) in credentials.items():
        reply = login_reply(backend.url, email, password)
        if reply.status == 201:
            tokens[caller] = reply.json["accessToken"]
            ids[caller] = reply.json["user"]["_id"]
        else:
            mismatches.append(f"{caller} cannot log in: {reply}")
            tokens[caller] = "not-logged-in"
    valid = jwt_payload(tokens["user A"])
    now = int(time.time())
    victim = ids.get("admin") or ids.get("worker")
    head, _, signature = tokens["user A"].split(".")
    forged_body = make_jwt({**valid, "sub": victim}).split(".")[1]
    tokens.update(
        {
            "forged": f"{head}.{forged_body}.{signature}",
            "expired": make_jwt({**valid, "iat": now - 7200, "exp": now - 3600}),
            "alg none": make_jwt({**valid, "sub": victim}, alg="none"),
            "other secret": make_jwt({**valid, "sub": victim}, secret="another-secret-of-some-length-987"),
        }
    )
    callers = [
        ("anonymous", "anonymous"),
        ("user A", "user A"),
        ("user B", "user B"),
        ("worker", "worker"),
        ("admin", "admin"),
    ] + [(name, "bad token") for name in access_table.BAD_TOKENS]

    def relogin(caller):
        tokens[caller] = login_reply(backend.url, *credentials[caller]).json["accessToken"]
        return senders_for(backend.url, {caller: tokens[caller]}, credentials)[caller]

    senders = senders_for(backend.url, tokens, credentials)
    mismatches += check_table(callers, senders, tokens, ids, backend.url, relogin)
    assert off.alive() and backend.alive()
    assert not mismatches, f"{len(mismatches)} cells differ from the access table:\n" + "\n".join(mismatches)


def test_the_docs_show_the_access_table():
    # The docs build renders access_table.markdown() in place of the marker (docs/gen/hooks.py), so
    # the Security page shows exactly the table checked above.
    assert access_table.MARKER in access_table.DOCS_PAGE.read_text(), (
        f"{access_table.DOCS_PAGE} lost the line {access_table.MARKER!r} that puts the access table there"
    )
