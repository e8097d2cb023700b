"""Bad run requests through the Marcelle backend: malformed documents and oversized inputs are
refused at create with a JSON error that says what is wrong, and so is a model the connected
workers do not serve (a run created while no worker is connected waits, and fails after the
pending timeout: tests/integration/test_worker_faults.py); inputs out of range and absurd
params end ``failed`` with a readable error; and the worker keeps serving the next run.
Real backend, one real worker (the built-in models)."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
from faults import FINAL, record

pytestmark = pytest.mark.backend

PENDING_TIMEOUT = 4  # seconds a run may wait for a worker before it fails


def big_png() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (5000, 4000), 255).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


REFUSED_AT_CREATE = [
    # (what, document, words the error must contain)
    ("a list of runs", [{"model": "digits", "input": [0]}], "one run at a time"),
    ("no model", {"input": [0]}, "model is missing"),
    ("a numeric model", {"model": 7, "input": [0]}, "model must be string"),
    ("an empty model", {"model": "", "input": [0]}, "model must NOT have fewer than 1 characters"),
    ("a 300-character model", {"model": "m" * 300, "input": [0]}, "model must NOT have more than 200 characters"),
    ("no input", {"model": "digits"}, "input is missing"),
    ("params as a list", {"model": "digits-generator", "input": {"digit": 1}, "params": [1]}, "params must be object"),
    ("params as a string", {"model": "digits-generator", "input": {"digit": 1}, "params": "x"}, "params must be"),
    ("a field the server writes", {"model": "digits", "input": [0], "status": "succeeded"}, '"status" is not allowed'),
    # The worker is connected and serves digits and digits-generator (services/backend/workers.js).
    ("an unknown model", {"model": "no-such-model", "input": [0]}, 'no worker serves the model "no-such-model"'),
]

FAILED_BY_THE_WORKER = [
    ("a digit out of range", {"model": "digits-generator", "input": {"digit": 42}}, "input.digit"),
    ("a digit as text", {"model": "digits-generator", "input": {"digit": "seven"}}, "input.digit"),
    ("10^9 steps", {"model": "digits-generator", "input": {"digit": 1}, "params": {"steps": 10**9}}, "params.steps"),
    (
        "steps as text",
        {"model": "digits-generator", "input": {"digit": 1}, "params": {"steps": "many"}},
        "params.steps",
    ),
    (
        "a negative guidance",
        {"model": "digits-generator", "input": {"digit": 1}, "params": {"guidance": -1}},
        "params.guidance",
    ),
    ("a huge seed", {"model": "digits-generator", "input": {"digit": 1}, "params": {"seed": 10**30}}, "params.seed"),
    (
        "an unknown param",
        {"model": "digits-generator", "input": {"digit": 1}, "params": {"temperature": 9}},
        "unknown params",
    ),
    ("pixels out of range", {"model": "digits", "input": [[2.0] * 128] * 128}, "values must lie in"),
    ("a 5000x4000 image", {"model": "digits", "input": big_png()}, "more than"),
    (
        "not an image",
        {"model": "digits", "input": {"b64": base64.b64encode(b"hello").decode()}},
        "does not hold an image",
    ),
    ("a null input", {"model": "digits", "input": None}, "run.input is missing"),
    ("an input of the wrong shape", {"model": "digits", "input": [[0.5]]}, "wrong shape"),
]


def test_bad_runs_are_refused_or_fail_readably_and_the_worker_serves_the_next(
    make_backend, make_worker, connect, wait_until
):
    from marcelle_torch.worker.client import BackendError

    backend = make_backend(pending_timeout_s=PENDING_TIMEOUT)
    worker = make_worker(backend.url, "steadfast", "--heartbeat", "0.5", "--lease-timeout", "3")
    client = connect(backend.url)

    for what, document, words in REFUSED_AT_CREATE:
        with pytest.raises(BackendError) as refused:
            client.create("runs", document)
        assert refused.value.name == "BadRequest" and words in refused.value.message, (what, refused.value.message)

    created = {what: client.create("runs", doc) for what, doc, _ in FAILED_BY_THE_WORKER}
    # A client cannot create a run already finished (refused above, "a field the server writes").
    good = [
        client.create("runs", {"model": "digits-generator", "input": {"digit": 7}, "params": {"steps": 5}}),
        client.create("runs", {"model": "digits", "input": [[1.0] * 128] * 128}),
    ]

    def final(run):
        doc = client.get("runs", run["_id"])
        return doc if doc["status"] in FINAL else None

    for what, _doc, words in FAILED_BY_THE_WORKER:
        done = wait_until(lambda what=what: final(created[what]), 120, f"the run with {what} to end")
        assert done["status"] == "failed", (what, done)
        assert isinstance(done["error"], str) and words in done["error"], (what, done["error"])
        assert "Traceback" not in done["error"] and len(done["error"]) < 500, (what, done["error"])
    for run in good:
        done = wait_until(lambda run=run: final(run), 120, "a good run to end")
        assert done["status"] == "succeeded" and done["result"]["label"] != "forged", done
    assert worker.alive(), worker.log_tail(30)
    assert "the model failed" not in worker.log_text(), "a bad input was taken for a model failure"
    record(
        "bad_runs",
        {
            "refused_at_create": len(REFUSED_AT_CREATE),
            "failed_readably": len(FAILED_BY_THE_WORKER),
            "good_runs_after": 1 + len(good),
            "worker_restarts": 0,
        },
    )


def test_an_oversized_input_over_socketio_is_refused_with_an_error(make_backend, connect):
    from marcelle_torch.worker.client import BackendError

    backend = make_backend()
    client = connect(backend.url)
    # Over the runs hook's 4 MB: refused by the hook with its reason, not by the transport.
    with pytest.raises(BackendError, match="larger than"):
        client.create("runs", {"model": "digits", "input": "A" * (4 << 20) + "A" * (512 << 10)})
    assert client.connected, "the backend dropped the connection instead of answering"
    # Under it, over the transport's old 1 MB: accepted.
    assert client.create("runs", {"model": "digits", "input": "A" * (2 << 20)})["status"] == "pending"


def test_malformed_rest_bodies_are_refused_with_a_4xx(make_backend):
    backend = make_backend()
    bodies = {
        "not JSON": b"{model: digits",
        "NaN": b'{"model": "digits", "input": [NaN]}',
        "a form": b"model=digits",
        "an input over 5 MB": json.dumps({"model": "digits", "input": "A" * (5 << 20)}).encode(),
    }
    answers = {}
    for what, body in bodies.items():
        response = httpx.post(
            f"{backend.url}/runs", content=body, headers={"content-type": "application/json"}, timeout=60
        )
        answers[what] = (response.status_code, response.json().get("message"))
    assert all(400 <= status < 500 for status, _ in answers.values()), answers
    assert answers["an input over 5 MB"][0] == 413, answers
    # Over express's old 100 kB default, well under the runs hook's 4 MB: a run like any other.
    big = httpx.post(f"{backend.url}/runs", json={"model": "digits", "input": "A" * (200 << 10)}, timeout=60)
    assert big.status_code == 201, big.text[:300]
