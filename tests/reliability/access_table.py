"""Who may do what on the backend: the expected access table, as data.

test_access_matrix.py checks every cell against a real backend; the docs' Security page
(docs/security.md) shows the same table, rendered from this file when the docs are built
(docs/gen/hooks.py). Print it with ``.venv/bin/python tests/reliability/access_table.py``.

Each operation acts on a run of user A (``runs``), an instance of user A's Teach dataset
(``instances-teach``, Marcelle's ``dataset('teach')``) or on user A's account (``users``).
A cell is the HTTP status; ``own``/``all`` say what a successful find returns. An operation
``(service, method, with an id?, variant)`` with a variant sends the body or query of VARIANTS
instead of a plain one: a run that publishes a model version (policy.js grants it to the admin
alone), and the attacks (the findings of the security review: validation.js refuses them).
"""

from __future__ import annotations

from pathlib import Path

DOCS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "security.md"
# Where the docs build puts the table on that page.
MARKER = "<!-- generated: access-table -->"


def nested_list(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


# A small JPEG data URL, as Marcelle's dataset makes of an image (canvas.toDataURL('image/jpeg')).
IMAGE = "data:image/jpeg;base64,/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEw8U"


def instance(label: str = "a") -> dict:
    """An instance as Marcelle's dataset('teach') creates it."""
    return {"x": IMAGE, "y": label, "thumbnail": IMAGE, "datasetName": "teach"}


# What each variant sends: a body (data) or a query, in place of the operation's plain one.
VARIANTS = {
    "publish": {"body": {"model": "digits", "input": [0], "params": {"publish": "0123456789ab"}}},
    "update operator": {"body": {"$set": {"status": "canceled"}}},
    "`__proto__` key": {"body": {"__proto__.authenticated": True}},
    "deep input": {"body": {"model": "digits", "input": nested_list(40)}},
    "constructor query": {"query": {"status": {"constructor": "x", "$where": "1"}}},
    "chosen id": {"body": {"_id": "chosen-id", "email": "chosen@marcelle.test", "password": "a-user-password-1"}},
    "password query": {"query": {"password": {"$gte": "$2"}}},
    "`__proto__` in an instance": {"body": {**instance(), "__proto__": {"role": "admin"}}},
    "image query": {"query": {"x": {"$gt": ""}}},
}
ATTACKS = {name: sent for name, sent in VARIANTS.items() if name != "publish"}

# (service, method, with an id?[, attack]) in the order of the table.
OPERATIONS = [
    ("runs", "find", False),
    ("runs", "get", True),
    ("runs", "create", False),
    ("runs", "update", True),
    ("runs", "patch", True),
    ("runs", "patch", False),
    ("runs", "remove", True),
    ("runs", "remove", False),
    ("runs", "create", False, "publish"),
    ("instances-teach", "find", False),
    ("instances-teach", "get", True),
    ("instances-teach", "create", False),
    ("instances-teach", "update", True),
    ("instances-teach", "patch", True),
    ("instances-teach", "patch", False),
    ("instances-teach", "remove", True),
    ("instances-teach", "remove", False),
    ("users", "find", False),
    ("users", "get", True),
    ("users", "create", False),
    ("users", "update", True),
    ("users", "patch", True),
    ("users", "patch", False),
    ("users", "remove", True),
    ("users", "remove", False),
    ("runs", "patch", True, "update operator"),
    ("runs", "patch", True, "`__proto__` key"),
    ("runs", "create", False, "deep input"),
    ("runs", "find", False, "constructor query"),
    ("users", "create", False, "chosen id"),
    ("users", "find", False, "password query"),
    ("instances-teach", "create", False, "`__proto__` in an instance"),
    ("instances-teach", "patch", True, "update operator"),
    ("instances-teach", "find", False, "image query"),
]

# Callers: "auth off" is anyone when authentication is off (the local default); the others
# are with authentication on (the chart's default) and sign-up off. "bad token" stands for
# each of: a forged token (payload changed, signature kept), an expired one, `alg: none`,
# and one signed with another secret.
CALLERS = ["auth off", "anonymous", "user A", "user B", "worker", "admin", "bad token"]
BAD_TOKENS = ["forged", "expired", "alg none", "other secret"]

EXPECTED: dict[tuple, dict[str, str]] = {}


def _row(op, *cells):
    assert len(cells) == len(CALLERS), op
    EXPECTED[op] = dict(zip(CALLERS, cells, strict=True))


#                                  auth off   anonymous  user A     user B     worker     admin      bad token
_row(("runs", "find", False), "200 all", "401", "200 own", "200 own", "200 all", "200 all", "401")
_row(("runs", "get", True), "200", "401", "200", "404", "200", "200", "401")
_row(("runs", "create", False), "201", "401", "201", "201", "403", "201", "401")
_row(("runs", "update", True), "405", "401", "405", "405", "405", "405", "401")
_row(("runs", "patch", True), "200", "401", "200", "404", "200", "200", "401")
_row(("runs", "patch", False), "405", "401", "405", "405", "405", "405", "401")
_row(("runs", "remove", True), "200", "401", "200", "404", "403", "200", "401")
_row(("runs", "remove", False), "405", "401", "405", "405", "405", "405", "401")
_row(("runs", "create", False, "publish"), "201", "401", "403", "403", "403", "201", "401")
_row(("instances-teach", "find", False), "200 all", "401", "200 own", "200 own", "200 all", "200 all", "401")
_row(("instances-teach", "get", True), "200", "401", "200", "404", "200", "200", "401")
_row(("instances-teach", "create", False), "201", "401", "201", "201", "403", "201", "401")
_row(("instances-teach", "update", True), "405", "401", "405", "405", "405", "405", "401")
_row(("instances-teach", "patch", True), "200", "401", "200", "404", "403", "403", "401")
_row(("instances-teach", "patch", False), "405", "401", "405", "405", "405", "405", "401")
_row(("instances-teach", "remove", True), "200", "401", "200", "404", "403", "200", "401")
_row(("instances-teach", "remove", False), "200", "401", "200", "200", "403", "200", "401")
_row(("users", "find", False), "404", "401", "200 own", "200 own", "200 own", "200 all", "401")
_row(("users", "get", True), "404", "401", "200", "404", "404", "200", "401")
_row(("users", "create", False), "404", "401", "403", "403", "403", "201", "401")
_row(("users", "update", True), "404", "401", "405", "405", "405", "405", "401")
_row(("users", "patch", True), "404", "401", "200", "404", "404", "403", "401")
_row(("users", "patch", False), "404", "401", "405", "405", "405", "405", "401")
_row(("users", "remove", True), "404", "401", "200", "404", "404", "403", "401")
_row(("users", "remove", False), "404", "401", "405", "405", "405", "405", "401")
# Attacks: the shape of data and queries is checked first, for every caller, before who it is;
# the schema of a role's writes after authentication.
_row(("runs", "patch", True, "update operator"), "400", "400", "400", "400", "400", "400", "400")
_row(("runs", "patch", True, "`__proto__` key"), "400", "400", "400", "400", "400", "400", "400")
_row(("runs", "create", False, "deep input"), "400", "400", "400", "400", "400", "400", "400")
_row(("runs", "find", False, "constructor query"), "400", "400", "400", "400", "400", "400", "400")
_row(("users", "create", False, "chosen id"), "404", "401", "400", "400", "400", "400", "401")
_row(("users", "find", False, "password query"), "404", "401", "400", "400", "400", "400", "401")
_row(("instances-teach", "create", False, "`__proto__` in an instance"), *["400"] * 7)
_row(("instances-teach", "patch", True, "update operator"), *["400"] * 7)
_row(("instances-teach", "find", False, "image query"), "400", "401", "400", "400", "400", "400", "401")


def op_name(op) -> str:
    service, method, with_id, attack = (*op, None)[:4]
    target = {"runs": "A's run", "instances-teach": "A's instance", "users": "A's account"}[service]
    if method in ("find", "create"):
        name = f"`{service}` {method}"
    elif not with_id:
        name = f"`{service}` {method}, no id (many)"
    else:
        name = f"`{service}` {method} ({target})"
    if attack == "publish":
        return f"{name}, params.publish (a model version)"
    return f"{name}, {attack}" if attack else name


def markdown() -> str:
    lines = ["| operation | " + " | ".join(CALLERS) + " |", "|---" * (len(CALLERS) + 1) + "|"]
    for op in OPERATIONS:
        lines.append(f"| {op_name(op)} | " + " | ".join(EXPECTED[op][c] for c in CALLERS) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
