"""The places the backend changes the installed @marcellejs/backend (services/backend/package-patches.js):
each one's effect through the running backend (where no other test checks it), the start stopping
with a readable error when what a patch relies on is gone from the package, and no patch outside
that file. Also: the package's own CASL checks get the policy's rules (policy.js)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import backend_policy
import pytest
from backend_http import ADMIN, ADMIN_ENV, AUTH_ON, WORKER, login, rest_call

pytestmark = pytest.mark.backend

BACKEND = Path(__file__).resolve().parents[2] / "services" / "backend"
PASSWORD = "a-user-password-1"


def test_the_package_applies_the_policys_rules(make_backend):
    """start.js gives the package the CASL rules derived from policy.js (its `permissions`), and
    its defineRulesFor is the replacement (package-patches.js rulesWithoutLog): a login answers,
    for each role, the policy's rules with the account's id, and the log holds no rules."""
    backend = make_backend(**AUTH_ON, allow_signup=True, extra_env=ADMIN_ENV)
    email = "policy@marcelle.test"
    assert rest_call(backend.url, "POST", "/users", {"email": email, "password": PASSWORD}).status == 201
    for role, credentials in (("editor", (email, PASSWORD)), ("worker", WORKER), ("admin", ADMIN)):
        session = login(backend.url, *credentials)
        assert session["user"]["role"] == role
        assert session["rules"] == backend_policy.casl_rules(role, session["user"]["_id"]), role
    log = backend.log_path.read_text()
    assert "permissions" not in log and "${user._id}" not in log, log[-2000:]


def test_the_access_hook_runs_before_the_packages_hooks(make_backend, connect):
    """The package's app hooks (lib/app.hooks.js) turn a query's times into Dates, which the edge
    refuses as not plain JSON: a query on times is accepted only while the access hook runs first
    (package-patches.js firstAppHook)."""
    backend = make_backend()
    client = connect(backend.url)
    run = client.create("runs", {"model": "digits", "input": [1]})
    found = client.find("runs", {"createdAt": {"$gt": "2000-01-01T00:00:00.000Z"}, "$limit": 10})
    data = found["data"] if isinstance(found, dict) else found
    assert run["_id"] in {item["_id"] for item in data}, found


# What start.js relies on, broken in the loaded package before start.js runs (a preloaded
# module: node --require), and the words the start must stop with.
BROKEN = {
    "cors middleware": "app._router.stack = app._router.stack.filter((l) => l.name !== 'corsMiddleware');",
    "body parsers": "app._router.stack = app._router.stack.filter((l) => l.name !== 'jsonParser');",
    "/:serviceName": (
        "app._router.stack = app._router.stack.filter((l) => !(l.route && l.route.path === '/:serviceName'));"
    ),
    "defineRulesFor": "delete load('@marcellejs/backend/lib/authentication/abilities').defineRulesFor;",
    "app.__hooks.before": "app.__hooks.before.find = undefined;",
    "maxHttpBufferSize": (
        "Object.defineProperty(load('engine.io').Server.prototype, 'maxHttpBufferSize',"
        " { get: () => undefined, set: () => {} });"
    ),
    "allowRequest": "load('engine.io').Server.prototype.verify = undefined;",
    "getService": "app.service(':serviceName').getService = undefined;",
}
PRELOAD = """
const load = (name) => require(require.resolve(name, { paths: [process.cwd()] }));
const app = load('@marcellejs/backend/lib/app').default;
"""


def start_once(tmp_path: Path, extra_env: dict, preload: str | None = None) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "NODE_ENV": "production",
        "NODE_CONFIG_DIR": str(BACKEND / "backend" / "config"),
        "MARCELLE_BACKEND_DATA": str(tmp_path),
        "PORT": "0",
        **extra_env,
    }
    command = ["node", "start.js"]
    if preload is not None:
        path = tmp_path / "break-the-package.js"
        path.write_text(PRELOAD + preload + "\n")
        command = ["node", "--require", str(path), "start.js"]
    # A start that does not stop listens: it is stopped by the timeout.
    try:
        return subprocess.run(command, cwd=BACKEND, env=env, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the backend started: {exc.stdout!r}") from exc


@pytest.mark.parametrize("what", BROKEN)
def test_the_start_stops_when_the_package_changed_under_a_patch(backend_installed, tmp_path, what):
    done = start_once(tmp_path, {}, BROKEN[what])
    assert done.returncode == 2, done
    assert "the backend package changed" in done.stderr and what in done.stderr, done.stderr


def test_the_start_stops_when_the_users_service_changed(backend_installed, tmp_path):
    # users exists with authentication on only.
    auth = {"MARCELLE_BACKEND_AUTH": "true", "MARCELLE_BACKEND_SECRET": AUTH_ON["secret"]}
    done = start_once(tmp_path, auth, "app.service('users').options.whitelist = undefined;")
    assert done.returncode == 2 and "the backend package changed" in done.stderr, done
    assert "options.whitelist" in done.stderr, done.stderr


def test_permissions_in_the_configuration_stop_the_start(backend_installed, tmp_path):
    """Who may do what is policy.js alone: a `permissions` key in the configuration (a second
    copy the package would be told to ignore) stops the start."""
    done = start_once(tmp_path, {"NODE_CONFIG": '{"permissions": {"editor": []}}'})
    assert done.returncode == 2 and "policy.js" in done.stderr, done


def test_the_package_is_patched_in_package_patches_js_only():
    """What reaches into the package's internals (Express's router stack, Feathers' hook lists,
    engine.io's server, the abilities module, the adapter's options) is in package-patches.js."""
    internals = re.compile(
        r"_router|__hooks|\.eio\b|maxHttpBufferSize|allowRequest|defineRulesFor\s*=|options\.whitelist|getService\("
    )
    found = [
        f"{path.name}:{number}: {line.strip()}"
        for path in sorted(BACKEND.glob("*.js"))
        if path.name != "package-patches.js"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if internals.search(line) and not line.strip().startswith("//")
    ]
    assert not found, "reaching into the package outside package-patches.js:\n" + "\n".join(found)
