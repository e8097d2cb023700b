"""Service names must never reach the file system.

@marcellejs/backend 0.6.5 makes a NeDB service on demand for a URL-decoded name and opens
``path.join(nedb, name + ".db")`` (lib/services/generic/dynamic.service.js,
lib/models/generic-nedb.model.js). A corpus of traversal and aliasing names goes through
REST and Socket.IO, with authentication off and on (anonymous and logged in); afterwards
no file has appeared in or around the data directory, no existing .db file changed, the
backend is still up, and every answer was a JSON 4xx.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
from backend_http import ADMIN_ENV, AUTH_ON, WORKER, login, rest_call

from marcelle_torch.worker.client import BackendError, BackendUnavailable

pytestmark = pytest.mark.backend

MARK = f"mt-escape-{uuid.uuid4().hex[:8]}"

# Decoded names (what the package would join into a path); REST sends them percent-encoded.
NAMES = [
    "x/../users",  # alias of users.db: the superadmin sign-up of issue 9
    "x/../runs",  # alias of runs.db
    f"../{MARK}",  # one level above the data directory
    f"../../{MARK}",
    f"../../../../../../../../tmp/{MARK}",
    "runs.db/x",  # NeDB opens a directory path: the process exited 1
    "runs.db",
    "users.db",
    "..",
    ".",
    f"..\\{MARK}",
    "Runs",  # Express routes are case-insensitive
    "RUNS",
    "runs ",
    "runs\x00",
    "%2e%2e%2fescape",  # double-encoded on the wire
    ":serviceName",
    "__proto__",
    "constructor",
    "info.db",
    "datasets",  # an innocent name the app does not use: not served either
    "assets",
    "tfjs-models",
    "onnx-models",
    "feathers-debugger",
    "a" * 300,
]
# Names the backend serves only with authentication on.
AUTH_NAMES = ["users", "authentication"]


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root``: relative path -> sha256 (logs by size-free marker)."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if name.endswith(".log"):
                out[rel] = "log"  # the backend's own log grows
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def rest_corpus(url: str, names: list[str], token: str | None = None) -> list[str]:
    """Every method on every name (and on ``name/<id>``); returns what was not a JSON 4xx."""
    problems = []
    for name in names:
        seg = quote(name, safe="")
        for method, path, body in (
            ("GET", f"/{seg}", None),
            ("POST", f"/{seg}", {"email": "e@x", "password": "p", "role": "superadmin"}),
            ("GET", f"/{seg}/some-id", None),
            ("PUT", f"/{seg}/some-id", {"a": 1}),
            ("PATCH", f"/{seg}/some-id", {"a": 1}),
            ("DELETE", f"/{seg}/some-id", None),
            ("PATCH", f"/{seg}", {"a": 1}),
            ("DELETE", f"/{seg}", None),
        ):
            try:
                reply = rest_call(url, method, path, body, token=token)
            except OSError as exc:
                problems.append(f"{method} {path}: no answer ({exc})")
                continue
            if not (400 <= reply.status < 500 and reply.is_json_error()):
                problems.append(f"{method} {path}: {reply}")
    return problems


def socket_corpus(client, names: list) -> list[str]:
    problems = []
    for name in names:
        for method, args in (
            ("find", ({},)),
            ("get", ("some-id", {})),
            ("create", ({"a": 1}, {})),
            ("update", ("some-id", {"a": 1}, {})),
            ("patch", ("some-id", {"a": 1}, {})),
            ("remove", ("some-id", {})),
            ("patch", (None, {"a": 1}, {})),
            ("remove", (None, {})),
        ):
            try:
                result = client.call(method, name, *args, timeout=15)
                problems.append(f"socket {method} {name!r}: answered {str(result)[:120]}")
            except BackendError as exc:
                if not (isinstance(exc.http_code, int) and 400 <= exc.http_code < 500):
                    problems.append(f"socket {method} {name!r}: {exc.name} {exc.http_code} {exc}")
            except BackendUnavailable as exc:
                problems.append(f"socket {method} {name!r}: no answer ({exc})")
    # The legacy `<path>::<method>` events of @feathersjs/transport-commons 4 carry the path too.
    for event in ("x/../users::create", ":serviceName::create", "runs.db/x::find"):
        try:
            answer = client.sio.call(event, ({"a": 1}, {}), timeout=5)
        except Exception:  # noqa: BLE001 - dropped without an answer: nothing reached a service
            continue
        error = answer[0] if isinstance(answer, (tuple, list)) else answer
        if not (isinstance(error, dict) and 400 <= int(error.get("code", 0)) < 500):
            problems.append(f"socket event {event!r}: {answer!r}"[:200])
    return problems


def check_unchanged(backend, before_parent: dict, names: list[str]) -> list[str]:
    problems = []
    parent = backend.data_dir.parent
    after = tree(parent)
    added = sorted(set(after) - set(before_parent))
    changed = sorted(k for k in before_parent if k in after and after[k] != before_parent[k])
    removed = sorted(set(before_parent) - set(after))
    if added:
        problems.append(f"files appeared under {parent}: {added}")
    if changed:
        problems.append(f"files changed: {changed}")
    if removed:
        problems.append(f"files disappeared: {removed}")
    for name in names:
        if not isinstance(name, str) or "\x00" in name:
            continue
        target = Path(os.path.normpath(os.path.join(backend.data_dir, f"{name}.db")))
        try:
            known = str(target.relative_to(parent)) in before_parent
        except ValueError:
            known = False
        try:
            exists = target.exists()
        except OSError:  # a name too long for the file system
            exists = False
        if exists and not known:
            problems.append(f"{target} exists")
    for root in ("/tmp", str(parent.parent), str(parent.parent.parent)):
        for hit in Path(root).glob(f"{MARK}*"):
            problems.append(f"{hit} was written outside the data directory")
    if not backend.alive():
        problems.append(f"the backend exited:\n{backend.log_path.read_text()[-2000:]}")
    else:
        try:
            info = rest_call(backend.url, "GET", "/info", timeout=10)
            if info.status != 200:
                problems.append(f"GET /info after the corpus: {info}")
        except OSError as exc:
            problems.append(f"the backend no longer answers: {exc}")
    return problems


def seed(url: str, token: str | None = None) -> None:
    """One run, so that runs.db has content whose hash must not change."""
    reply = rest_call(url, "POST", "/runs", {"model": "digits", "input": [0], "params": {}}, token=token)
    assert reply.status == 201, reply


def test_traversal_names_with_authentication_off(make_backend, connect):
    backend = make_backend()
    seed(backend.url)
    names = NAMES + AUTH_NAMES
    before = tree(backend.data_dir.parent)
    problems = rest_corpus(backend.url, names)
    if backend.alive():
        client = connect(backend.url)
        problems += socket_corpus(client, names + [123, None, {"a": 1}, ["runs"]])
    problems += check_unchanged(backend, before, names)
    assert not problems, "\n".join(problems)


def test_traversal_names_with_authentication_on(make_backend, connect):
    backend = make_backend(**AUTH_ON, extra_env=ADMIN_ENV)
    token = login(backend.url, *WORKER)["accessToken"]
    before = tree(backend.data_dir.parent)
    problems = rest_corpus(backend.url, NAMES)
    problems += rest_corpus(backend.url, NAMES, token=token)
    if backend.alive():
        anonymous = connect(backend.url)
        problems += socket_corpus(anonymous, NAMES + [123, None])
        logged_in = connect(backend.url, *WORKER)
        problems += socket_corpus(logged_in, NAMES + [123, None])
    problems += check_unchanged(backend, before, NAMES)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "services, message",
    [
        ('"*"', "must be a list of service names"),
        ('["runs", "x/../users"]', "is not a service name"),
        ('["runs", "Datasets"]', "is not a service name"),
        ('["runs", "users"]', "one of the backend's own services"),
        ('["datasets"]', 'must include "runs"'),
    ],
)
def test_the_backend_refuses_a_whitelist_that_is_not_safe_names(backend_installed, tmp_path, services, message):
    env = {**os.environ, "MARCELLE_BACKEND_DATA": str(tmp_path), "PORT": "0", "MARCELLE_BACKEND_SERVICES": services}
    done = subprocess.run(
        ["node", "start.js"], cwd=backend_installed, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
