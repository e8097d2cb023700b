"""The policy the backend enforces (services/backend/policy.js) says what the tested expectations
say (access_table.py, which test_access_matrix.py checks against a real backend): each cell of
the access table that is not an attack follows from the policy's grants, read with the rules
docs/security.md states. No backend: the policy is read by running policy.js."""

from __future__ import annotations

import access_table
import backend_policy as policy

# The table's columns as the policy's callers: the caller, and whether the operation's target
# (user A's run, instance or account) is the caller's own. None: no valid token.
COLUMNS = {
    "auth off": ("auth off", False),
    "anonymous": (None, False),
    "user A": ("editor", True),
    "user B": ("editor", False),
    "worker": ("worker", False),
    "admin": ("admin", False),
    "bad token": (None, False),
}
# The table's backend with authentication on runs with sign-up off.
SETTINGS = {"allowSignup": False}


def expected(service: str, method: str, with_id: bool, caller: str | None, own: bool, publish: bool = False) -> str:
    """What the policy says a call answers: a service of authentication only is not served
    with it off (404); a call that is not public needs a valid token (401); a method the service
    does not take, or a patch or remove without an id where writes are one at a time, is 405; a
    record the caller may not read is not found (404: a run outside the caller's scope, or an
    account that is not the caller's where it reads only its own); anything else not granted is
    403; a find answers every record (`all`) or the caller's (`own`). A run that publishes a model
    version (``publish``) is created only where the grant lets the caller write one (`run or
    publish`), else 403."""
    rules = policy.load()
    about = rules["services"][service]
    if caller == "auth off" and about.get("auth"):
        return "404"
    public = rules["grants"]["anyone"].get(service, {}).get(method)
    public = public is not None and (not public.get("when") or SETTINGS[public["when"]])
    if caller is None and not public:
        return "401"
    if method not in about["methods"] or (method in about.get("oneAtATime", []) and not with_id):
        return "405"
    grant = None if public else rules["grants"].get(caller, {}).get(service, {}).get(method)
    if grant is None and not public:
        read = rules["grants"].get(caller, {}).get(service, {}).get("get")
        if with_id and about.get("owner") == "_id" and not (read and (read["scope"] == "all" or own)):
            return "404"
        return "403"
    if publish and (grant is None or grant.get("write") != "run or publish"):
        return "403"
    scope = "all" if public else grant["scope"]
    if with_id and scope == "own" and not own:
        return "404"
    if method == "find":
        return f"200 {scope}"
    return "201" if method == "create" else "200"


def test_the_policy_says_what_the_access_table_expects():
    differ = []
    for op in access_table.OPERATIONS:
        if len(op) > 3 and op[3] != "publish":
            continue  # attacks: the edge's checks (validation.js), for every caller alike
        service, method, with_id = op[:3]
        for column, (caller, own) in COLUMNS.items():
            said = expected(service, method, with_id, caller, own, publish=op[3:] == ("publish",))
            if said != access_table.EXPECTED[op][column]:
                differ.append(
                    f"{access_table.op_name(op)} as {column}: the policy says {said}, "
                    f"the table expects {access_table.EXPECTED[op][column]}"
                )
    assert not differ, "policy.js and access_table.py disagree:\n" + "\n".join(differ)


def test_every_role_of_the_table_is_the_policys():
    rules = policy.load()
    assert {caller for caller, _ in COLUMNS.values() if caller} == set(rules["callers"]) - {"anonymous"}
    assert set(rules["casl"]) == set(rules["roles"]) == {"editor", "worker", "admin"}


def test_the_docs_show_the_policy():
    # The docs build renders the policy in place of this line (docs/gen/hooks.py: access-policy).
    marker = "<!-- generated: access-policy -->"
    assert marker in access_table.DOCS_PAGE.read_text(), f"{access_table.DOCS_PAGE} lost the line {marker!r}"
