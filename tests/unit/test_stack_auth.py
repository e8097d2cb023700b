"""`marcelle-torch up --auth`: what the local stack hands the backend and prints. Logging in
through the page against such a backend is tests/browser/test_login.py."""

from __future__ import annotations

from pathlib import Path

from marcelle_torch.stack.up import ADMIN_EMAIL, StackOptions, _auth_settings


def options(**kwargs) -> StackOptions:
    return StackOptions(workdir=Path("unused"), **kwargs)


def test_the_local_stack_is_open_unless_asked():
    assert _auth_settings(options()) is None


def test_auth_generates_a_secret_a_worker_account_and_an_admin_password_each_start():
    backend, login = _auth_settings(options(auth=True))
    again, _ = _auth_settings(options(auth=True))
    assert backend["auth"] is True
    # start.js refuses a JWT secret under 16 characters.
    assert len(backend["secret"]) >= 16 and backend["secret"] != again["secret"]
    assert backend["worker_password"] != again["worker_password"]
    assert backend["worker_email"] != backend["admin_email"]  # start.js refuses one account for both
    assert login == {"email": ADMIN_EMAIL, "password": backend["admin_password"], "generated": True}
    assert len(login["password"]) >= 16


def test_auth_takes_the_admin_account_given():
    backend, login = _auth_settings(options(auth=True, admin_email="me@example.org", admin_password="pw-given-123"))
    assert (backend["admin_email"], backend["admin_password"]) == ("me@example.org", "pw-given-123")
    assert login["generated"] is False
    # Only an email given: the password is still generated (and printed).
    _, login = _auth_settings(options(auth=True, admin_email="me@example.org"))
    assert login["email"] == "me@example.org" and login["generated"] is True
