"""The `runs` service of the real Marcelle backend (services/backend): conditional patches,
validation, authentication and ownership."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from marcelle_torch.worker.client import BackendError

pytestmark = pytest.mark.backend

SECRET = "a-test-secret-of-some-length-0123456789"
WORKER = ("worker@marcelle.test", "worker-password-1")


def new_run(client, digit=3):
    return client.create("runs", {"model": "digits-generator", "input": {"digit": digit}, "params": {"steps": 5}})


def test_a_claim_is_a_conditional_patch_that_only_one_caller_wins(make_backend, connect):
    backend = make_backend()
    first, second = connect(backend.url), connect(backend.url)
    run = new_run(first)
    claimed = first.patch("runs", run["_id"], {"status": "running", "worker": "w1"}, {"status": "pending"})
    assert claimed["status"] == "running" and claimed["worker"] == "w1"
    with pytest.raises(BackendError, match="NotFound"):
        second.patch("runs", run["_id"], {"status": "running", "worker": "w2"}, {"status": "pending"})
    assert second.get("runs", run["_id"])["worker"] == "w1"
    # A write conditioned on the holder applies (and answers the run) only for the holder.
    assert first.patch("runs", run["_id"], {"progress": 0.5}, {"status": "running", "worker": "w1"})["progress"] == 0.5
    with pytest.raises(BackendError, match="NotFound"):
        second.patch("runs", run["_id"], {"progress": 0.9}, {"status": "running", "worker": "w2"})


def test_new_runs_are_validated_and_start_pending(make_backend, connect):
    client = connect(make_backend().url)
    # A client sends model, input and params; nothing else (the server writes the rest).
    for field in ("status", "result", "worker", "_id", "userId"):
        with pytest.raises(BackendError, match=f'"{field}" is not allowed'):
            client.create("runs", {"model": "digits", "input": [1], field: "forged"})
    run = client.create("runs", {"model": "digits", "input": [1]})
    assert (run["status"], run["result"], run["worker"], run["progress"]) == ("pending", None, None, 0)
    for data, message in (
        ({"input": 1}, "model is missing"),
        ({"model": "digits"}, "input is missing"),
        ({"model": "digits", "input": 1, "params": [1]}, "params must be object"),
        ([{"model": "digits", "input": 1}], "one run at a time"),
    ):
        with pytest.raises(BackendError, match=message):
            client.create("runs", data)
    with pytest.raises(BackendError, match="status must be one of pending, running"):
        client.patch("runs", run["_id"], {"status": "done"})
    with pytest.raises(BackendError, match="progress must be <= 1"):
        client.patch("runs", run["_id"], {"progress": 3})


@pytest.fixture
def auth_backend(make_backend):
    return make_backend(auth=True, secret=SECRET, worker_email=WORKER[0], worker_password=WORKER[1], allow_signup=True)


def sign_up(connect, url, email, password="a-user-password"):
    client = connect(url)
    # A role of one's choosing is refused: every account made through the API is an editor.
    with pytest.raises(BackendError, match='"role" is not allowed'):
        client.create("users", {"email": email, "password": password, "role": "worker"})
    client.create("users", {"email": email, "password": password})
    client.user = client.authenticate(email, password)["user"]
    return client


def test_with_auth_anonymous_clients_can_neither_create_nor_read_runs(auth_backend, connect):
    anonymous = connect(auth_backend.url)
    for call in (lambda: new_run(anonymous), lambda: anonymous.find("runs"), lambda: anonymous.get("runs", "any-id")):
        with pytest.raises(BackendError, match="NotAuthenticated"):
            call()
    with pytest.raises(BackendError, match="NotAuthenticated"):
        anonymous.authenticate(WORKER[0], "wrong password")


def test_with_auth_users_see_only_their_own_runs_and_the_worker_sees_all(auth_backend, connect):
    alice = sign_up(connect, auth_backend.url, "alice@marcelle.test")
    bob = sign_up(connect, auth_backend.url, "bob@marcelle.test")
    worker = connect(auth_backend.url, *WORKER)
    bob_events = []
    bob.on("runs created", bob_events.append)

    run = new_run(alice)
    assert alice.find("runs")["total"] == 1
    assert bob.find("runs")["total"] == 0
    with pytest.raises(BackendError, match="NotFound|Forbidden"):
        bob.get("runs", run["_id"])
    with pytest.raises(BackendError, match="NotFound|Forbidden"):
        bob.patch("runs", run["_id"], {"status": "canceled"})

    # The worker sees every run and writes to it; the run stays Alice's.
    assert [r["_id"] for r in worker.find("runs", {"status": "pending"})["data"]] == [run["_id"]]
    claimed = worker.patch("runs", run["_id"], {"status": "running", "worker": "w"}, {"status": "pending"})
    assert claimed["userId"] == run["userId"]
    done = worker.patch(
        "runs", run["_id"], {"status": "succeeded", "result": {"label": "3"}}, {"status": "running", "worker": "w"}
    )
    assert done["userId"] == run["userId"]
    assert alice.get("runs", run["_id"])["result"] == {"label": "3"}
    assert bob.find("runs")["total"] == 0
    assert bob_events == []  # no real-time event about someone else's run

    # A user may only cancel; the role given at sign-up is always `editor`, and cannot be changed.
    with pytest.raises(BackendError, match="may only cancel"):
        alice.patch("runs", run["_id"], {"result": "forged"})
    me = alice.user
    assert me["role"] == "editor"
    with pytest.raises(BackendError, match="BadRequest|Forbidden|NotFound"):
        alice.patch("users", me["_id"], {"role": "worker"})
    assert connect(auth_backend.url).authenticate("alice@marcelle.test", "a-user-password")["user"]["role"] == "editor"


@pytest.mark.parametrize(
    "secret, message",
    [
        (None, "no JWT secret is set"),
        ("ZjXdk3pXZLVpvcEMGGuh6LYdi9o=", "public example secret"),
        ("short", "too short"),
    ],
)
def test_with_auth_the_backend_refuses_to_start_without_a_real_secret(backend_installed, tmp_path, secret, message):
    env = {**os.environ, "MARCELLE_BACKEND_AUTH": "true", "MARCELLE_BACKEND_DATA": str(tmp_path), "PORT": "0"}
    env.pop("MARCELLE_BACKEND_SECRET", None)
    if secret:
        env["MARCELLE_BACKEND_SECRET"] = secret
    done = subprocess.run(
        ["node", "start.js"], cwd=backend_installed, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_run_of_a_model_no_connected_worker_serves_is_refused_at_create(make_backend, connect):
    backend = make_backend()
    client = connect(backend.url)
    # No worker connected: the run is accepted and waits (the workers' pending timeout ends it).
    assert client.create("runs", {"model": "later", "input": 1})["status"] == "pending"
    # Connections that announce models, as workers do (services/backend/workers.js); names that
    # are not model names are ignored.
    connect(backend.url, serves="digits,../users,")
    leaving = connect(backend.url, serves="digits-generator")
    with pytest.raises(
        BackendError, match='no worker serves the model "later": the connected workers serve digits, digits-generator$'
    ):
        client.create("runs", {"model": "later", "input": 1})
    assert client.create("runs", {"model": "digits", "input": 1})["status"] == "pending"
    # A worker that has just left (a restart) keeps its models accepted for a while.
    leaving.disconnect()
    assert client.create("runs", {"model": "digits-generator", "input": 1})["status"] == "pending"
    with pytest.raises(BackendError, match="the connected workers serve digits$"):
        client.create("runs", {"model": "../users", "input": 1})


def test_served_models_lists_what_the_connected_workers_announce(make_backend, connect, wait_until):
    """`served-models` (find, REST and Socket.IO): each model once, with its task, an image
    classifier's channels and size, and how many workers serve it; what is not announced as a
    model (a bad name, an unknown task, a bad image, extra fields) is left out or left blank."""
    import json
    import urllib.error
    import urllib.request

    backend = make_backend()
    client = connect(backend.url)
    assert client.find("served-models") == []
    connect(backend.url, serves="digits:classification:1x128,shapes:classification:3x64,digits-generator:generation")
    second = connect(
        backend.url, serves="shapes:classification:3x64,odd:painting:9,bad:classification:2x9,../x,a:b:c:d,y"
    )
    blank = {"task": None, "channels": None, "size": None, "workers": 1}
    want = [
        {"name": "bad", "task": "classification", "channels": None, "size": None, "workers": 1},
        {"name": "digits", "task": "classification", "channels": 1, "size": 128, "workers": 1},
        {"name": "digits-generator", "task": "generation", "channels": None, "size": None, "workers": 1},
        {"name": "odd", **blank},
        {"name": "shapes", "task": "classification", "channels": 3, "size": 64, "workers": 2},
        {"name": "y", **blank},
    ]
    assert client.find("served-models") == want
    with urllib.request.urlopen(f"{backend.url}/served-models", timeout=10) as response:
        assert json.loads(response.read()) == want
    # Read-only, and its query takes nothing.
    for method, url, body in [
        ("POST", f"{backend.url}/served-models", b"{}"),
        ("GET", f"{backend.url}/served-models?name=digits", None),
    ]:
        request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code in (400, 405), (method, url, refused.value.code)
    second.disconnect()
    wait_until(lambda: [m["name"] for m in client.find("served-models")] == ["digits", "digits-generator", "shapes"])
    assert client.find("served-models")[-1]["workers"] == 1


def test_with_auth_only_the_worker_accounts_connections_announce_models(auth_backend, connect):
    connect(auth_backend.url, serves="digits")  # anonymous
    alice = sign_up(connect, auth_backend.url, "alice@marcelle.test")
    sign_up(connect, auth_backend.url, "mallory@marcelle.test")
    connect(auth_backend.url, "mallory@marcelle.test", "a-user-password", serves="digits")
    # Neither the anonymous nor the user's connection counts as a worker: the run waits.
    assert new_run(alice)["status"] == "pending"
    connect(auth_backend.url, *WORKER, serves="digits")
    with pytest.raises(BackendError, match='no worker serves the model "digits-generator"'):
        new_run(alice)


def test_finished_runs_are_removed_after_the_kept_time_and_active_ones_never(make_backend, connect, wait_until):
    # With authentication on: the removal is the backend's own, an internal call (no provider),
    # which the package's hooks let through: @feathersjs/authentication 4.5.21
    # lib/hooks/authenticate.js throws NotAuthenticated only with a provider, and feathers-casl
    # 0.7.2 dist/hooks/authorize/authorize.hook.before.js ignores calls with no ability.
    backend = make_backend(
        auth=True,
        secret=SECRET,
        worker_email=WORKER[0],
        worker_password=WORKER[1],
        allow_signup=True,
        keep_finished_runs_s=2,
    )
    alice = sign_up(connect, backend.url, "alice@marcelle.test")
    worker = connect(backend.url, *WORKER)
    removed = []
    alice.on("runs removed", lambda run: removed.append(run["_id"]))
    runs = {status: new_run(alice) for status in ("succeeded", "failed", "canceled", "running", "pending")}
    for status in ("running", "succeeded", "failed"):
        worker.patch("runs", runs[status]["_id"], {"status": status, "worker": "w"}, {"status": "pending"})
    alice.patch("runs", runs["canceled"]["_id"], {"status": "canceled"})

    finished = {runs[s]["_id"] for s in ("succeeded", "failed", "canceled")}
    # Watching pages are told, as for any removal.
    wait_until(lambda: finished <= set(removed), 60, "the finished runs to be removed")
    for status in ("succeeded", "failed", "canceled"):
        with pytest.raises(BackendError, match="NotFound"):
            alice.get("runs", runs[status]["_id"])
    # Active runs stay, however old: a few more sweeps (one a second here) leave them alone.
    wait_until(lambda: backend.log_path.read_text().count("removed ") >= 1, 30, "the removal in the log")
    time.sleep(3)
    assert {r["_id"]: r["status"] for r in worker.find("runs")["data"]} == {
        runs["running"]["_id"]: "running",
        runs["pending"]["_id"]: "pending",
    }
    assert set(removed) == finished


@pytest.mark.parametrize("value", ["-1", "1.5", '"a day"'])
def test_the_backend_refuses_a_kept_time_that_is_not_whole_seconds(backend_installed, tmp_path, value):
    env = {**os.environ, "MARCELLE_BACKEND_DATA": str(tmp_path), "PORT": "0", "MARCELLE_RUNS_KEEP_FINISHED_S": value}
    done = subprocess.run(
        ["node", "start.js"], cwd=backend_installed, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done
    assert "MARCELLE_RUNS_KEEP_FINISHED_S) must be 0 (keep every run) or a number of seconds" in done.stderr
