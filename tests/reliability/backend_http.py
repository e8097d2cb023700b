"""Helpers of the backend security tests.

- ``rest_call(url, method, path, body=None, token=None)``: one HTTP request sent with the path
  exactly as given (http.client: no dot-segment removal, no re-quoting), answered as a
  ``Reply`` (status, headers, parsed JSON or None, raw body);
- ``make_jwt(payload, secret, alg="HS256")``: a JWT signed here (HS256) or unsigned (``none``);
- ``login(url, email, password)``: POST /authentication (strategy local);
- ``METHODS``, ``query_string(query)`` and ``socket_args(...)``: one Feathers call as REST (verb,
  qs query string) or as Socket.IO arguments.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

SECRET = "a-test-secret-of-some-length-0123456789"
WORKER = ("worker@marcelle.test", "worker-password-1")
ADMIN = ("admin@marcelle.test", "admin-password-1")
ADMIN_ENV = {"MARCELLE_ADMIN_EMAIL": ADMIN[0], "MARCELLE_ADMIN_PASSWORD": ADMIN[1]}
# start_backend's arguments for the backend as the chart runs it: authentication on, the
# worker's account from the environment.
AUTH_ON = {"auth": True, "secret": SECRET, "worker_email": WORKER[0], "worker_password": WORKER[1]}


# Feathers' methods as REST verbs (@feathersjs/express 4 lib/rest).
METHODS = {"find": "GET", "get": "GET", "create": "POST", "update": "PUT", "patch": "PATCH", "remove": "DELETE"}


def query_string(query: dict) -> str:
    """A nested query in qs notation (Express's query parser): a[b][0]=v."""
    pairs = []

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}[{key}]" if prefix else str(key), item)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(f"{prefix}[{i}]", item)
        else:
            text = "" if value is None else value if isinstance(value, str) else json.dumps(value)
            pairs.append(f"{quote(prefix)}={quote(text)}")

    walk("", query)
    return "&".join(pairs)


def socket_args(method: str, id_, data, query: dict) -> tuple:
    """A Feathers method's arguments after the service name, as a Socket.IO client sends them."""
    return {
        "find": (query,),
        "get": (id_, query),
        "create": (data, query),
        "update": (id_, data, query),
        "patch": (id_, data, query),
        "remove": (id_, query),
    }[method]


@dataclass
class Reply:
    status: int
    headers: dict
    json: object
    raw: bytes

    def is_json_error(self) -> bool:
        """A Feathers error body: {name, message, code} with code equal to the HTTP status."""
        body = self.json
        return (
            self.headers.get("content-type", "").startswith("application/json")
            and isinstance(body, dict)
            and isinstance(body.get("name"), str)
            and isinstance(body.get("message"), str)
            and body.get("code") == self.status
        )

    def __str__(self) -> str:
        return f"{self.status} {self.raw[:160]!r}"


def rest_call(
    url: str,
    method: str,
    path: str,
    body=None,
    token: str | None = None,
    headers: dict | None = None,
    timeout: float = 30.0,
) -> Reply:
    where = urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=timeout)
    sent = {"Accept": "application/json", **(headers or {})}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        sent["Content-Type"] = "application/json"
    if token:
        sent["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=data, headers=sent)
        answer = conn.getresponse()
        raw = answer.read()
        reply_headers = {k.lower(): v for k, v in answer.getheaders()}
    finally:
        conn.close()
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = None
    return Reply(answer.status, reply_headers, parsed, raw)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(payload: dict, secret: str = SECRET, alg: str = "HS256", typ: str = "access") -> str:
    head = _b64(json.dumps({"alg": alg, "typ": typ}).encode())
    body = _b64(json.dumps(payload).encode())
    if alg == "none":
        return f"{head}.{body}."
    assert alg == "HS256"
    signature = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(signature)}"


def jwt_payload(token: str) -> dict:
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def login_reply(url: str, email: str, password: str) -> Reply:
    return rest_call(url, "POST", "/authentication", {"strategy": "local", "email": email, "password": password})


def login(url: str, email: str, password: str) -> dict:
    """Log in (strategy local): the answer's JSON (accessToken, user)."""
    reply = login_reply(url, email, password)
    assert reply.status == 201, f"login of {email}: {reply}"
    return reply.json
