"""Training runs through the real Marcelle backend, done by a real `marcelle-torch worker`.

A run of the user's trainable model folder (support/bars_model.py) with ``params.train`` and
Marcelle's dataset shape as input (``{examples: [{x, y}]}``) fine-tunes it into a new version in the
worker's store, streaming Marcelle's TrainingStatus as the run's partial. The new version is then
what a worker serves. Cancel, a worker killed mid-training (the next one resumes from the
checkpoint in the shared store) and bad training runs are checked too. A run may name a Marcelle
dataset instead (``{dataset: "teach"}``): the worker reads its instances from the backend's
``instances-teach``, made through the REST API as the web app's Teach page makes them, and with
authentication on, only the run owner's.
"""

from __future__ import annotations

import base64
import collections
import json
import signal
import threading
import types
import urllib.error
import urllib.request

import pytest
import yaml
from support.bars_model import NEW, OLD, drawings, make_trainable_folder, png, write_user_package

pytestmark = pytest.mark.backend

LEASE = ("--heartbeat", "0.5", "--lease-timeout", "3")
LONG_EACH = 200  # examples per label: 200 epochs of them take seconds, long enough to act on


@pytest.fixture(scope="module")
def bars(tmp_path_factory):
    """(the trainable folder, the environment a worker needs to import the user's module)."""
    package = write_user_package(tmp_path_factory.mktemp("userpkg"))
    folder = make_trainable_folder(tmp_path_factory.mktemp("bars"), package)
    return folder, {"PYTHONPATH": str(package)}


@pytest.fixture
def setting(make_backend, make_worker, connect, bars, tmp_path):
    """A backend, a client of it, the store, and ``trainer(name, *flags, models=None)``: a worker
    of the user's model (or of ``models``) that writes its versions to that store."""
    folder, env = bars
    backend = make_backend()
    store = tmp_path / "store"

    def trainer(name: str, *flags: str, models: list[str] | None = None):
        # One torch thread: two, beside the backend and the test on 2 cores, made the tiny model's
        # training many times slower (threads waiting on each other).
        return make_worker(
            backend.url, name, "--store", str(store), "--threads", "1", *flags, models=models or [str(folder)], env=env
        )

    return types.SimpleNamespace(backend=backend, client=connect(backend.url), store=store, trainer=trainer)


def examples(each: int, seed: int = 2) -> list[dict]:
    """Marcelle dataset instances {x, y}: the two bars and the new cross."""
    return [{"x": {"b64": base64.b64encode(png(x)).decode()}, "y": y} for x, y in drawings([*OLD, NEW], each, seed)]


def training(client, each: int = 10, epochs: int = 8) -> dict:
    return client.create(
        "runs", {"model": "bars", "input": {"examples": examples(each)}, "params": {"train": {"epochs": epochs}}}
    )


def finished(client, run):
    current = client.get("runs", run["_id"])
    return current if current["status"] in ("succeeded", "failed", "canceled") else None


def rest(url: str, method: str, path: str, body=None, token: str | None = None) -> tuple[int, object]:
    """A call on the backend's REST API, as a page's fetch makes it: (status, JSON answer)."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def teach(url: str, each: int, labels: list[str], token: str | None = None, seed: int = 2, name=None) -> None:
    """Instances of the Teach page's dataset, as Marcelle's dataset('teach') makes them (x: an
    image data URL; the label ``name`` in place of the drawing's own, if given)."""
    for x, y in drawings(labels, each, seed):
        image = "data:image/png;base64," + base64.b64encode(png(x)).decode()
        instance = {"x": image, "y": name or y, "thumbnail": image, "datasetName": "teach"}
        status, answer = rest(url, "POST", "/instances-teach", instance, token)
        assert status == 201, answer


def record_partials(client):
    seen = collections.defaultdict(list)
    lock = threading.Lock()

    def on_patched(run):
        if run.get("status") == "running" and isinstance(run.get("partial"), dict):
            with lock:
                seen[run["_id"]].append((run["progress"], run["partial"]))

    client.on("runs patched", on_patched)
    return seen


def test_a_training_run_makes_a_new_version_that_a_worker_then_serves(setting, wait_until):
    client, store = setting.client, setting.store
    partials = record_partials(client)
    trainer = setting.trainer("trainer", "--max-updates-per-second", "50")
    run = training(client)
    done = wait_until(lambda: finished(client, run), what="the training run to finish")
    assert done["status"] == "succeeded", done
    result = done["result"]
    assert result["model"] == "bars" and result["labels"] == [*OLD, NEW]
    assert result["metrics"]["accuracy"] == 1.0 and result["metrics"]["epochs"] == 8
    version = store / "bars" / result["version"]
    manifest = yaml.safe_load((version / "marcelle-model.yaml").read_text())
    assert manifest["parent"] == result["parent"] and manifest["labels"] == [*OLD, NEW]

    # What the page saw: Marcelle's TrainingStatus, epoch by epoch, with losses, progress rising.
    seen = wait_until(lambda: partials[run["_id"]] or None, what="training status updates")
    statuses = [p for _, p in seen]
    assert all(s["status"] in ("start", "epoch") and s["epochs"] == 8 for s in statuses), statuses
    assert any("loss" in s.get("data", {}) for s in statuses), statuses
    progress = [p for p, _ in seen]
    assert progress == sorted(progress) and progress[-1] < 1

    # The new version, served by a worker: it knows the cross.
    trainer.stop()
    setting.trainer("server", models=[str(version)])
    (cross, _), *_ = drawings([NEW], 1, seed=9)
    run = client.create("runs", {"model": "bars", "input": {"b64": base64.b64encode(png(cross)).decode()}})
    answered = wait_until(lambda: finished(client, run), what="the classification run")
    assert answered["status"] == "succeeded" and answered["result"]["label"] == NEW, answered


def test_bad_training_runs_fail_with_their_reason_and_cancel_writes_no_version(setting, bars, wait_until):
    client, store = setting.client, setting.store
    worker = setting.trainer("w", models=[str(bars[0]), "digits-generator"])
    for model, data, params, reason in (
        ("bars", {"examples": examples(2)}, {"train": {"epochs": 0}}, "params.train.epochs must be a whole number"),
        ("bars", {"examples": examples(2)}, {"train": {"lr": 1}}, "params.train: unknown key 'lr'"),
        ("bars", {"images": []}, {"train": {}}, 'a training run\'s input is {"examples"'),
        ("bars", {"examples": [{"x": {"b64": "bm90IGFuIGltYWdl"}, "y": "a"}]}, {"train": {}}, "input.examples:"),
        ("digits-generator", {"examples": []}, {"train": {}}, "generation model: only classifiers are trained"),
    ):
        run = client.create("runs", {"model": model, "input": data, "params": params})
        failed = wait_until(lambda run=run: finished(client, run), what="the bad run to fail")
        assert failed["status"] == "failed" and reason in failed["error"], failed

    run = training(client, each=LONG_EACH, epochs=200)
    wait_until(lambda: client.get("runs", run["_id"])["progress"] > 0.05, what="the training to be under way")
    assert client.patch("runs", run["_id"], {"status": "canceled"})["status"] == "canceled"
    wait_until(lambda: f"run {run['_id']}: stopped (canceled)" in worker.log_text(), what="the worker to stop")
    assert not (store / "bars").exists() or not any((store / "bars").iterdir()), "a canceled training wrote a version"


def test_a_worker_killed_mid_training_is_resumed_from_its_checkpoint_by_the_next(setting, wait_until):
    client, store = setting.client, setting.store
    doomed = setting.trainer("doomed", *LEASE)
    run = training(client, each=LONG_EACH, epochs=200)
    wait_until(lambda: client.get("runs", run["_id"])["progress"] > 0.1, what="some epochs to be done")
    doomed.signal(signal.SIGKILL)
    assert client.get("runs", run["_id"])["status"] == "running", "the training ended before the kill"
    assert any((store / ".checkpoints").iterdir()), "no checkpoint in the shared store"

    rescuer = setting.trainer("rescuer", *LEASE)
    done = wait_until(lambda: finished(client, run), what="the resumed training to finish")
    assert done["status"] == "succeeded" and done["worker"].startswith("rescuer-"), done
    assert f"run {run['_id']}: training resumed from its checkpoint after epoch" in rescuer.log_text()
    assert done["result"]["metrics"]["epochs"] == 200
    assert [p.name for p in (store / "bars").iterdir()] == [done["result"]["version"]]
    assert not any((store / ".checkpoints").iterdir()), "a finished training leaves its checkpoint behind"


def test_a_training_past_the_workers_time_limit_fails_with_the_reason_and_leaves_nothing(setting, wait_until):
    client, store = setting.client, setting.store
    setting.trainer("hasty", "--max-training-seconds", "1")
    run = training(client, each=LONG_EACH, epochs=200)
    failed = wait_until(lambda: finished(client, run), what="the long training to be stopped")
    assert failed["status"] == "failed" and "past this worker's time limit (1s" in failed["error"], failed
    assert not (store / "bars").exists() or not any((store / "bars").iterdir()), "a stopped training wrote a version"
    assert not (store / ".checkpoints").exists() or not any((store / ".checkpoints").iterdir())


def test_a_training_run_learns_from_the_teach_dataset_in_the_backend(setting, wait_until):
    client, url = setting.client, setting.backend.url
    setting.trainer("trainer")
    empty = client.create("runs", {"model": "bars", "input": {"dataset": "teach"}, "params": {"train": {}}})
    unknown = client.create("runs", {"model": "bars", "input": {"dataset": "other"}, "params": {"train": {}}})
    for run, reason in ((empty, "dataset 'teach' has no instances"), (unknown, "keeps no such dataset")):
        failed = wait_until(lambda run=run: finished(client, run), what="a run of no instances to fail")
        assert failed["status"] == "failed" and reason in failed["error"], failed

    teach(url, 10, [*OLD, NEW])
    run = client.create("runs", {"model": "bars", "input": {"dataset": "teach"}, "params": {"train": {"epochs": 8}}})
    done = wait_until(lambda: finished(client, run), what="the training run to finish")
    assert done["status"] == "succeeded", done
    result = done["result"]
    assert result["dataset"] == "teach" and result["labels"] == [*OLD, NEW], result
    assert result["metrics"]["accuracy"] == 1.0, result
    assert (setting.store / "bars" / result["version"]).is_dir()


def test_with_authentication_a_user_trains_on_their_own_instances_only(
    make_backend, make_worker, bars, wait_until, tmp_path
):
    folder, env = bars
    worker = ("worker@marcelle.test", "worker-password-1")
    backend = make_backend(
        auth=True,
        secret="a-test-secret-of-some-length-0123456789",
        worker_email=worker[0],
        worker_password=worker[1],
        allow_signup=True,
    )
    url = backend.url
    tokens = {}
    for user in ("a", "b"):
        account = {"email": f"{user}@marcelle.test", "password": "a-user-password-1"}
        assert rest(url, "POST", "/users", account)[0] == 201
        status, login = rest(url, "POST", "/authentication", {"strategy": "local", **account})
        assert status == 201, login
        tokens[user] = login["accessToken"]
    teach(url, 10, [*OLD, NEW], tokens["a"])
    teach(url, 10, [NEW], tokens["b"], seed=5, name="not-a-label-of-a")  # B's: never A's training data
    make_worker(url, "trainer", "--store", str(tmp_path / "store"), models=[str(folder)], env=env,
                email=worker[0], password=worker[1])  # fmt: skip
    body = {"model": "bars", "input": {"dataset": "teach"}, "params": {"train": {"epochs": 8}}}
    status, run = rest(url, "POST", "/runs", body, tokens["a"])
    assert status == 201, run

    def done():
        answer = rest(url, "GET", f"/runs/{run['_id']}", token=tokens["a"])[1]
        return answer if answer["status"] in ("succeeded", "failed", "canceled") else None

    trained = wait_until(done, what="user A's training run to finish")
    assert trained["status"] == "succeeded", trained
    assert trained["result"]["labels"] == [*OLD, NEW], "the run learned from another user's instances"
