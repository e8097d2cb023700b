"""Who may do what on the backend: the expected access table, as data.

test_access_matrix.py checks every cell against a real backend; the docs' Security page
(docs/security.md) shows the same table, rendered from this file when the docs are built
(docs/gen/hooks.py). Print it with ``.venv/bin/python tests/reliability/access_table.py``.

Each operation acts on a run of user A (``runs``) or on user A's account (``users``).
A cell is the HTTP status; ``own``/``all`` say what a successful find returns. An operation
``(service, method, with an id?, attack)`` with an attack sends the body or query of ATTACKS
instead of a plain one (the findings of the security review: validation.js refuses them).
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


# What each attack sends: a body (data) or a query, in place of the operation's plain one.
ATTACKS = {
    "update operator": {"body": {"$set": {"status": "canceled"}}},
    "`__proto__` key": {"body": {"__proto__.authenticated": True}},
    "deep input": {"body": {"model": "digits", "input": nested_list(40)}},
    "constructor query": {"query": {"status": {"constructor": "x", "$where": "1"}}},
    "chosen id": {"body": {"_id": "chosen-id", "email": "chosen@marcelle.test", "password": "a-user-password-1"}},
    "password query": {"query": {"password": {"$gte": "$2"}}},
}

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


def op_name(op) -> str:
    service, method, with_id, attack = (*op, None)[:4]
    target = {"runs": "A's run", "users": "A's account"}[service]
    if method in ("find", "create"):
        name = f"`{service}` {method}"
    elif not with_id:
        name = f"`{service}` {method}, no id (many)"
    else:
        name = f"`{service}` {method} ({target})"
    return f"{name}, {attack}" if attack else name


def markdown() -> str:
    lines = ["| operation | " + " | ".join(CALLERS) + " |", "|---" * (len(CALLERS) + 1) + "|"]
    for op in OPERATIONS:
        lines.append(f"| {op_name(op)} | " + " | ".join(EXPECTED[op][c] for c in CALLERS) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
