"""The access table (access_table.py), cell by cell, against the real backend over REST.

Two backends: one with authentication off (the local default), one with authentication on
and sign-up off (users A and B signed up while it was on, then the backend restarted with it
off), a worker account and an admin account from the environment. Each runs cell acts on a
fresh run of user A; each users cell on user A's account (A deleting itself comes last).
"""

from __future__ import annotations

import time
import uuid

import pytest

import access_table
from backend_http import ADMIN, ADMIN_ENV, SECRET, WORKER, jwt_payload, login_reply, make_jwt, rest_call

pytestmark = pytest.mark.backend

PASSWORD = "a-user-password-1"
METHODS = {"find": "GET", "get": "GET", "create": "POST", "update": "PUT", "patch": "PATCH", "remove": "DELETE"}


def new_run(url, token=None):
    reply = rest_call(url, "POST", "/runs", {"model": "digits", "input": [0], "params": {}}, token=token)
    assert reply.status == 201, f"a run for the table: {reply}"
    return reply.json["_id"]


class Cell:
    """Runs one operation as one caller and names the outcome as the table does."""

    def __init__(self, url, tokens, ids):
        self.url, self.tokens, self.ids = url, tokens, ids  # ids: caller -> account id

    def outcome(self, op, caller, token):
        service, method, with_id = op
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
        else:
            target = self.ids.get("user A", "no-such-account")
            seeded = {i for i in self.ids.values() if i}
            own = {self.ids[caller]} if self.ids.get(caller) else set()
            body = {"password": PASSWORD}
            if method == "create":
                body = {"email": f"new-{uuid.uuid4().hex[:8]}@marcelle.test", "password": PASSWORD}
            if method == "update":
                body = {"email": "a@marcelle.test", "password": PASSWORD}
        path = f"/{service}/{target}" if with_id else f"/{service}"
        reply = rest_call(self.url, METHODS[method], path, None if method in ("find", "get", "remove") else body,
                          token=token)
        if reply.status >= 400 and not reply.is_json_error():
            return f"{reply.status} (not a JSON error: {reply.raw[:80]!r})"
        if method == "find" and reply.status == 200:
            data = reply.json["data"] if isinstance(reply.json, dict) else reply.json
            visible = {item["_id"] for item in data} & seeded
            if visible == seeded:
                return "200 all"
            if visible == own:
                return "200 own"
            return f"200 some ({len(visible)} of {len(seeded)})"
        return str(reply.status)


def check_table(cells, callers, tokens, ids, url) -> list[str]:
    cell = Cell(url, tokens, ids)
    mismatches = []
    # A deleting its own account is the last cell: every other cell needs A.
    order = [op for op in access_table.OPERATIONS if op != ("users", "remove", True)] + [("users", "remove", True)]
    for op in order:
        for caller, column in sorted(callers, key=lambda c: c[0] == "user A"):
            expected = access_table.EXPECTED[op][column]
            got = cell.outcome(op, caller, tokens.get(caller))
            cells[(op, caller)] = got
            if got != expected:
                mismatches.append(f"{access_table.op_name(op)} as {caller}: expected {expected}, got {got}")
    return mismatches


def sign_up(url, email):
    reply = rest_call(url, "POST", "/users", {"email": email, "password": PASSWORD})
    assert reply.status == 201, f"sign-up of {email}: {reply}"
    return reply.json["_id"]


def test_the_access_table(make_backend):
    cells = {}
    # Authentication off: anyone may do what the local demo needs, nothing more.
    off = make_backend()
    mismatches = check_table(cells, [("anyone", "auth off")], {}, {}, off.url)

    # Authentication on: A and B sign up while sign-up is on, then it is turned off.
    kwargs = dict(auth=True, secret=SECRET, worker_email=WORKER[0], worker_password=WORKER[1], extra_env=ADMIN_ENV)
    first = make_backend(allow_signup=True, **kwargs)
    ids = {"user A": sign_up(first.url, "a@marcelle.test"), "user B": sign_up(first.url, "b@marcelle.test")}
    first.stop()
    backend = make_backend(data_dir=first.data_dir, allow_signup=False, **kwargs)

    tokens = {}
    for caller, (email, password) in {"user A": ("a@marcelle.test", PASSWORD), "user B": ("b@marcelle.test", PASSWORD),
                                      "worker": WORKER, "admin": ADMIN}.items():
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
    tokens.update({
        "forged": f"{head}.{forged_body}.{signature}",
        "expired": make_jwt({**valid, "iat": now - 7200, "exp": now - 3600}),
        "alg none": make_jwt({**valid, "sub": victim}, alg="none"),
        "other secret": make_jwt({**valid, "sub": victim}, secret="another-secret-of-some-length-987"),
    })
    callers = [("anonymous", "anonymous"), ("user A", "user A"), ("user B", "user B"), ("worker", "worker"),
               ("admin", "admin")] + [(name, "bad token") for name in access_table.BAD_TOKENS]
    mismatches += check_table(cells, callers, tokens, ids, backend.url)
    assert off.alive() and backend.alive()
    assert not mismatches, f"{len(mismatches)} cells differ from the access table:\n" + "\n".join(mismatches)


def test_the_readme_prints_the_access_table():
    assert access_table.readme_table() == access_table.markdown(), (
        "README.md's access table differs from tests/reliability/access_table.py: paste the output of "
        "`.venv/bin/python tests/reliability/access_table.py` into the Security section")
