"""Teaching the built-in ``digits`` a new label and publishing it, through the real parts: a
Marcelle backend, a `marcelle-torch worker` and a `marcelle-torch serve` that share one model
store (models/store.py).

A training run makes a version; a publish run exports its ONNX bundle and points the store at it;
Serve's replicas, the worker and the web app follow. Predictions keep going the whole time, and
none fails: the replicas load the new version beside the old one and swap (no restart). Every
answer says which version gave it, and a rollback is the same move back.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import urllib.error
import urllib.request

import pytest
from support.shapes import stars

pytestmark = pytest.mark.backend

BASE = "3"  # the built-in digits' own version (models/digits.py)


def data_url(x) -> str:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray((x[0] * 255).round().byte().numpy(), mode="L").save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def predict(url: str, xs) -> dict:
    body = json.dumps({"instances": [data_url(x) for x in xs]}).encode()
    request = urllib.request.Request(f"{url}/v1/models/digits:predict", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


class Load:
    """Predictions one after another from two threads until stopped: every status and version."""

    def __init__(self, url: str, x):
        self.url, self.x = url, x
        self.answers: list[tuple[int, str | None]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(2)]

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                self.answers.append((200, predict(self.url, [self.x])["model_version"]))
            except urllib.error.HTTPError as exc:
                self.answers.append((exc.code, None))
            except OSError as exc:
                self.answers.append((0, repr(exc)))

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


@pytest.fixture
def stack(make_backend, make_worker, start_serve, connect, tmp_path):
    store = tmp_path / "store"
    env = {"MARCELLE_TORCH_STORE": str(store)}
    backend = make_backend()
    # A trainer takes the training and publish runs, a run worker the others (as on the chart).
    make_worker(backend.url, "trainer", "--store", str(store), "--runs", "train", models=["digits"])
    make_worker(backend.url, "runner", "--store", str(store), "--runs", "infer", models=["digits"])
    serve = start_serve(tmp_path / "serve.log", env=env)
    yield backend, connect(backend.url), serve, store
    serve.stop()


def done(client, run, wait_until, timeout=300):
    def finished():
        current = client.get("runs", run["_id"])
        return current if current["status"] in ("succeeded", "failed", "canceled") else None

    return wait_until(finished, timeout=timeout, what=f"run {run['_id']} to finish")


def test_a_taught_version_is_published_to_every_path_without_a_failed_request_and_rolled_back(stack, wait_until):
    _backend, client, serve, store = stack
    taught = [{"x": data_url(x), "y": "star"} for x in stars(10, seed=0)]
    training = done(client, client.create("runs", {"model": "digits", "input": {"examples": taught},
                                                   "params": {"train": {}}}), wait_until)  # fmt: skip
    assert training["status"] == "succeeded", training.get("error")
    version = training["result"]["version"]
    assert training["worker"].startswith("trainer-")
    assert training["result"]["labels"][-1] == "star"

    held_out = stars(10, seed=50)
    assert predict(serve.url, held_out[:1])["model_version"] == BASE
    with Load(serve.url, held_out[0]) as load:
        published = done(client, client.create("runs", {"model": "digits", "input": None,
                                                        "params": {"publish": version}}), wait_until)  # fmt: skip
        assert published["status"] == "succeeded", published.get("error")
        assert published["result"] == {"model": "digits", "version": version, "previous": None}
        wait_until(lambda: predict(serve.url, held_out[:1])["model_version"] == version, what="Serve on the version")

        answer = predict(serve.url, held_out)
        assert answer["model_version"] == version
        assert sum(p["label"] == "star" for p in answer["predictions"]) >= 9, answer["predictions"]
        meta = json.load(urllib.request.urlopen(f"{serve.url}/v1/models/digits", timeout=30))
        assert meta["version"] == version and meta["labels"][-1] == "star"

        # The worker follows too: a backend run of a held-out star is answered by the version.
        run = done(client, client.create("runs", {"model": "digits", "input": data_url(held_out[1])}), wait_until)
        assert run["result"]["label"] == "star" and run["result"]["model_version"] == version
        assert run["worker"].startswith("runner-") and published["worker"].startswith("trainer-")

        # The ONNX bundle the web app serves now is the version's, made by the publish.
        bundle = json.loads((store / "digits" / "published" / "onnx" / "model.json").read_text())
        assert bundle["version"] == version and bundle["labels"][-1] == "star"

        rollback = done(client, client.create("runs", {"model": "digits", "input": None,
                                                       "params": {"publish": None}}), wait_until)  # fmt: skip
        assert rollback["result"] == {"model": "digits", "version": None, "previous": version}
        wait_until(lambda: predict(serve.url, held_out[:1])["model_version"] == BASE, what="Serve back on its own")
    assert load.answers and all(status == 200 for status, _ in load.answers), [a for a in load.answers if a[0] != 200]
    seen = [v for _, v in load.answers]
    assert {BASE, version} <= set(seen), "the load saw both versions"
    assert not (store / "digits" / "published").exists()


def test_a_publish_that_cannot_be_done_fails_with_its_reason_and_changes_nothing(stack, wait_until):
    _backend, client, serve, store = stack
    unknown = done(client, client.create("runs", {"model": "digits", "input": None,
                                                  "params": {"publish": "0123456789ab"}}), wait_until)  # fmt: skip
    assert unknown["status"] == "failed" and "has no version 0123456789ab" in unknown["error"]
    nothing = done(client, client.create("runs", {"model": "digits", "input": None,
                                                  "params": {"publish": None}}), wait_until)  # fmt: skip
    assert nothing["status"] == "failed" and "nothing to roll back" in nothing["error"]
    assert not (store / "digits" / "published").exists()
    assert predict(serve.url, stars(1, seed=3))["model_version"] == BASE
