"""The "Backend runs" page with the backend's authentication on, in real Chromium.

The real Marcelle backend runs with authentication on and sign-up off, as the chart deploys
it: the admin account comes from MARCELLE_ADMIN_EMAIL/_PASSWORD, the admin creates two users
(Alice, Bob) through the backend's `users` service, and the real worker logs in with the
worker account. Alice logs in through Marcelle's own login dialog (DataStore.loginWithUI),
generates a digit and follows it; she never sees Bob's runs, neither those made before she
logged in nor the live events of one made while she is there; she logs out. A wrong password
shows Marcelle's login error and no runs; so does a registration while sign-up is off.
"""

from __future__ import annotations

import time

import httpx
import pytest

pytestmark = pytest.mark.backend

PAGE_TITLE = "Backend runs"
CONNECTION = "[data-testid=runs-connection]"
STATUS = "[data-testid=runs-status]"
RESULT = "[data-testid=runs-result]"
HISTORY_ITEM = "[data-testid=runs-history-item]"
GENERATE = "[data-testid=runs-generate] button"  # a Marcelle button inside the hook
ACCOUNT = "[data-testid=runs-account]"

SECRET = "a-browser-test-secret-0123456789"
WORKER = ("worker@marcelle.test", "worker-password-0123")
ADMIN = ("admin@marcelle.test", "admin-password-0123")
ALICE = ("alice@marcelle.test", "alice-password-0123")
BOB = ("bob@marcelle.test", "bob-password-0123")

# Marcelle's login dialog (@marcellejs/core 0.6.5 src/core/data-store/Login.svelte, opened by
# DataStore.loginWithUI): a form with inputs named email and password, a submit button, and a
# red "Login Error" banner with the backend's message on failure.
DIALOG = "form:has(input[name=password])"
LOGIN_ERROR = "text=Login Error"


class Api:
    """REST calls to the backend as one account (POST /authentication, then a Bearer token)."""

    def __init__(self, url: str, email: str, password: str):
        self.http = httpx.Client(base_url=url, timeout=30)
        answer = self.http.post("/authentication", json={"strategy": "local", "email": email, "password": password})
        answer.raise_for_status()
        self.user = answer.json()["user"]
        self.http.headers["Authorization"] = f"Bearer {answer.json()['accessToken']}"

    def call(self, method: str, path: str, **kwargs):
        answer = self.http.request(method, path, **kwargs)
        answer.raise_for_status()
        return answer.json()

    def close(self):
        self.http.close()


@pytest.fixture
def auth_stack(runs_backend):
    """Backend (auth on, sign-up off, admin + worker accounts), Alice and Bob, Bob's first run, a worker."""
    backend, start_worker = runs_backend(
        auth=True,
        secret=SECRET,
        worker_email=WORKER[0],
        worker_password=WORKER[1],
        admin_email=ADMIN[0],
        admin_password=ADMIN[1],
        allow_signup=False,
    )
    apis = []
    try:
        admin = Api(backend.url, *ADMIN)
        apis.append(admin)
        for email, password in (ALICE, BOB):
            admin.call("POST", "/users", json={"email": email, "password": password})
        bob = Api(backend.url, *BOB)
        apis.append(bob)
        bob_first = bob.call(
            "POST", "/runs", json={"model": "digits-generator", "input": {"digit": 7}, "params": {"steps": 10}}
        )
        start_worker(env={"MARCELLE_WORKER_EMAIL": WORKER[0], "MARCELLE_WORKER_PASSWORD": WORKER[1]})
        yield {"backend": backend, "admin": admin, "bob": bob, "bob_first": bob_first}
    finally:
        for api in apis:
            api.close()


def log_in(page, email: str, password: str) -> None:
    dialog = page.locator(DIALOG)
    dialog.locator("input[name=email]").fill(email)
    dialog.locator("input[name=password]").fill(password)
    dialog.locator("button[type=submit]").click()


def history_ids(page) -> list[str]:
    return page.locator(HISTORY_ITEM).evaluate_all("items => items.map(i => i.dataset.id)")


def wait_run(api: Api, run_id: str, status: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = api.call("GET", f"/runs/{run_id}")
        if run["status"] == status or time.monotonic() > deadline:
            return run
        time.sleep(0.5)


def test_a_user_logs_in_with_marcelles_dialog_generates_and_sees_only_their_runs(
    page, open_runs_page, auth_stack, run_watcher
):
    watch_run, run_record = run_watcher
    backend, admin, bob = auth_stack["backend"], auth_stack["admin"], auth_stack["bob"]
    open_runs_page(backend.url)

    # Authentication is on and there is no session: Marcelle's login dialog, nothing usable behind it.
    page.locator(DIALOG).wait_for()
    assert page.locator(CONNECTION).get_attribute("data-status") == "login"
    assert page.locator(GENERATE).is_disabled()
    log_in(page, *ALICE)
    page.wait_for_selector(f"{CONNECTION}[data-status=ready]")
    page.locator(DIALOG).wait_for(state="detached")
    assert ALICE[0] in page.locator(ACCOUNT).inner_text()
    assert history_ids(page) == []  # Bob's first run exists, and is not hers

    # Every run id the history ever shows from now on, and every status and progress value.
    page.evaluate(
        """(historySel) => {
        window.__seen = new Set();
        const record = () => document.querySelectorAll(historySel + ' [data-id]')
            .forEach((item) => window.__seen.add(item.dataset.id));
        new MutationObserver(record).observe(document.querySelector(historySel),
            { childList: true, subtree: true, attributes: true });
    }""",
        "[data-testid=runs-history]",
    )
    watch_run(page)
    # Bob makes a run while Alice is connected: the worker takes it first (creation order), so
    # its created and patched events go out while she waits for hers.
    bob_live = bob.call(
        "POST", "/runs", json={"model": "digits-generator", "input": {"digit": 1}, "params": {"steps": 10}}
    )

    page.locator("[data-testid=runs-digit] select").select_option("4")
    page.locator("[data-testid=runs-steps] input").fill("1000")
    page.locator(GENERATE).click()
    page.wait_for_selector(f"{RESULT}[data-label]")
    assert page.locator(STATUS).get_attribute("data-status") == "succeeded"
    assert page.locator(RESULT).get_attribute("data-label") == "4"
    statuses, seen_progress, images = run_record(page)
    assert "partial" in images and images[-1] == "result", images
    assert "running" in statuses and statuses[-1] == "succeeded", statuses
    assert len({p for p in seen_progress if 0 < p < 1}) >= 2, seen_progress

    # The run is Alice's (the backend stamped her id), and it is the only one she was shown.
    alice = admin.call("GET", "/users", params={"email": ALICE[0]})["data"][0]
    runs = admin.call("GET", "/runs", params={"$sort[createdAt]": 1})["data"]
    mine = [r for r in runs if r.get("userId") == alice["_id"]]
    assert len(mine) == 1 and mine[0]["status"] == "succeeded"
    assert wait_run(bob, bob_live["_id"], "succeeded")["status"] == "succeeded"
    assert history_ids(page) == [mine[0]["_id"]]
    seen = set(page.evaluate("Array.from(window.__seen)"))
    assert seen == {mine[0]["_id"]}, f"Alice was shown runs that are not hers: {seen}"

    # The session survives a reload (Marcelle's DataStore keeps the JWT in localStorage):
    # no dialog, her run is listed.
    page.reload()
    page.get_by_text(PAGE_TITLE, exact=True).first.click()
    page.wait_for_selector(f"{CONNECTION}[data-status=ready]")
    assert page.locator(DIALOG).count() == 0
    page.wait_for_selector(HISTORY_ITEM)
    assert history_ids(page) == [mine[0]["_id"]]

    # Log out (Marcelle's dataStore.logout: the JWT is forgotten, the page reloads): the dialog again.
    # The reload keeps the URL (#backend-runs), so the runs page, and its dialog, open at once.
    page.locator("[data-testid=runs-logout] button").click()
    page.locator(DIALOG).wait_for()
    assert page.locator(CONNECTION).get_attribute("data-status") == "login"
    assert history_ids(page) == []


def test_a_wrong_password_shows_marcelles_error_and_no_runs(page, open_runs_page, auth_stack):
    backend, bob_first = auth_stack["backend"], auth_stack["bob_first"]
    open_runs_page(backend.url)
    page.locator(DIALOG).wait_for()

    log_in(page, BOB[0], "not-bobs-password")
    page.locator(LOGIN_ERROR).wait_for()
    assert "Invalid login" in page.locator(DIALOG).locator("xpath=..").inner_text()
    assert page.locator(DIALOG).is_visible()
    assert page.locator(CONNECTION).get_attribute("data-status") == "login"
    assert page.locator(GENERATE).is_disabled()
    assert history_ids(page) == []

    # The dialog's "Register" form cannot make an account (sign-up is off): the dialog closes
    # without a session, the page offers to log in again and still shows no runs.
    page.locator(DIALOG).locator("xpath=..").get_by_text("Register Here").click()
    log_in(page, "mallory@marcelle.test", "mallory-password-0123")
    page.wait_for_selector(f"{CONNECTION}[data-status=logged-out]")
    assert page.locator(DIALOG).count() == 0
    assert page.locator(GENERATE).is_disabled()
    assert history_ids(page) == []
    page.locator("[data-testid=runs-login] button").click()
    page.locator(DIALOG).wait_for()

    # The dialog takes the right password: Bob's run appears (the checks above were not empty
    # for want of runs).
    log_in(page, *BOB)
    page.wait_for_selector(f"{CONNECTION}[data-status=ready]")
    page.wait_for_selector(HISTORY_ITEM)
    assert history_ids(page) == [bob_first["_id"]]
