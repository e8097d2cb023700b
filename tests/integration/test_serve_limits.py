"""Overload (503) and timeout (504) on a real Serve with tight limits: a full request queue
is refused at once, and a model slower than the request timeout is answered 504, both as
JSON errors; the server keeps serving afterwards."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from marcelle_torch.serving.config import DEFAULT_CONFIG

pytestmark = pytest.mark.ray

SUPPORT = Path(__file__).with_name("support")
SLOW = "slow_model:spec"


@pytest.fixture(scope="module")
def tight_serve(tmp_path_factory, trained_digits, start_serve):
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    # The model applications answer 504 and 503 themselves; `--model slow_model:spec` below
    # gets a copy of the digits application's settings.
    app = next(a for a in config["applications"] if a["name"] == "model-digits")
    app["args"]["request_timeout_s"] = 1.0
    (digits,) = app["deployments"]
    digits.pop("autoscaling_config", None)
    # One replica, one instance per forward pass, a queue of one request.
    digits.update(
        num_replicas=1, user_config={"max_batch_size": 1, "batch_wait_timeout_s": 0.0, "max_queued_requests": 1}
    )
    tmp = tmp_path_factory.mktemp("tight")
    path = tmp / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    server = start_serve(
        tmp / "serve.log",
        ["--config", str(path), "--model", "digits", "--model", SLOW],
        env={"PYTHONPATH": str(SUPPORT)},
    )
    yield server.url
    assert not server.stop(), "processes left after serve stopped"


def test_a_full_queue_is_refused_with_503_json(tight_serve, make_digit):
    instance, _ = make_digit(0)

    def predict(_):
        return httpx.post(f"{tight_serve}/v1/models/digits:predict", json={"instances": [instance] * 8}, timeout=120)

    # Threads, not asyncio: a session's browser fixture may already run an event loop here.
    with ThreadPoolExecutor(max_workers=48) as pool:
        responses = list(pool.map(predict, range(48)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503, 504}, statuses
    refused = [r for r in responses if r.status_code == 503]
    assert refused, f"no request was refused with a queue of 1: {statuses}"
    assert refused[0].json()["error"]["code"] == "overloaded"
    assert 200 in statuses, "the server must still answer the requests it accepted"


def test_a_model_slower_than_the_timeout_is_answered_504_json(tight_serve):
    response = httpx.post(f"{tight_serve}/v1/models/slow:predict", json={"instances": [[[0.0] * 8] * 8]}, timeout=60)
    assert response.status_code == 504, response.text
    error = response.json()["error"]
    assert error["code"] == "timeout" and "slow" in error["message"]
    # The server keeps serving other models.
    assert httpx.get(f"{tight_serve}/readyz", timeout=30).status_code == 200


def test_a_generation_model_is_refused_at_once_in_one_line():
    import subprocess

    from marcelle_torch.processes import cli_argv

    proc = subprocess.run(
        [*cli_argv(), "serve", "--model", "digits-generator", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "marcelle-torch serve: error: model digits-generator is a generation model: Ray Serve takes "
        "classification models only (one forward pass per request); run it through the backend worker"
    ]
    assert "serving on" not in proc.stdout  # refused before any Ray process started
