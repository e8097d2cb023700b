"""The Serve application over real HTTP, on a real local Ray (`marcelle-torch serve`)."""

from __future__ import annotations

import base64
import concurrent.futures
import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import yaml

from marcelle_torch.serving.config import DEFAULT_CONFIG, load_serve_config, model_applications

pytestmark = pytest.mark.ray

TIMEOUT = httpx.Timeout(180.0)
SUPPORT = Path(__file__).with_name("support")


def post(url, **kwargs):
    return httpx.post(url, timeout=TIMEOUT, **kwargs)


def test_predictions_equal_the_in_process_model(serve_url, trained_digits, make_digit):
    from marcelle_torch.models import decode_instances, load_model, postprocess

    instances = [make_digit(i, seed=i, light_background=bool(i % 2))[0] for i in range(12)]
    instances.append(np.zeros((128, 128)).tolist())  # a nested-list instance too
    response = post(f"{serve_url}/v1/models/digits:predict", json={"instances": instances})
    assert response.status_code == 200, response.text
    served = response.json()["predictions"]

    model = load_model(trained_digits)
    with torch.no_grad():
        local = postprocess(trained_digits, model(decode_instances(trained_digits, instances)))
    assert [p["label"] for p in served] == [p["label"] for p in local]
    for s, mine in zip(served, local, strict=True):
        assert s["confidences"].keys() == mine["confidences"].keys()
        assert np.allclose(list(s["confidences"].values()), list(mine["confidences"].values()), atol=1e-5)


def test_predictions_are_right(serve_url, make_digit):
    pairs = [make_digit(i) for i in range(20)]
    response = post(f"{serve_url}/v1/models/digits:predict", json={"instances": [p[0] for p in pairs]})
    labels = [p["label"] for p in response.json()["predictions"]]
    assert sum(a == b for a, (_, b) in zip(labels, pairs, strict=True)) >= 18, (labels, [b for _, b in pairs])


NOT_AN_IMAGE = base64.b64encode(b"this is not a picture").decode()


@pytest.mark.parametrize(
    "path, body, status, code, message",
    [
        ("/v1/models/digits:predict", b"{not json", 400, "invalid_input", "not valid JSON"),
        ("/v1/models/digits:predict", b"\xff\xfe", 400, "invalid_input", "not valid JSON"),
        ("/v1/models/digits:predict", b"[1, 2]", 400, "invalid_input", '{"instances": [...]}'),
        ("/v1/models/digits:predict", b'{"inputs": []}', 400, "invalid_input", '{"instances": [...]}'),
        ("/v1/models/digits:predict", b'{"instances": 3}', 400, "invalid_input", "'instances' must be a list"),
        ("/v1/models/digits:predict", b'{"instances": []}', 400, "invalid_input", "'instances' is empty"),
        (
            "/v1/models/digits:predict",
            b'{"instances": [[[0.5, 0.5]]]}',
            400,
            "invalid_input",
            "wrong shape [1, 2], expected [1, 128, 128]",
        ),
        (
            "/v1/models/digits:predict",
            b'{"instances": [{"b64": "%s"}]}' % NOT_AN_IMAGE.encode(),
            400,
            "invalid_input",
            "does not hold an image",
        ),
        ("/v1/models/digits:predict", b'{"instances": [{"b64": "***"}]}', 400, "invalid_input", "not valid base64"),
        ("/v1/models/digits:predict", b'{"instances": ["abc", 7]}', 400, "invalid_input", "instance 0"),
        ("/v1/models/no-such-model:predict", b'{"instances": [1]}', 404, "model_not_found", "unknown model"),
        ("/v1/models/no-such-model", None, 404, "model_not_found", "served models: digits"),
        ("/v3/anything", None, 404, "not_found", "no route"),
        # Parser limits: Python's json recurses per nesting level, and refuses over 4300 digits.
        (
            "/v1/models/digits:predict",
            b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            400,
            "invalid_input",
            "nested too deeply",
        ),
        ("/v1/models/digits:predict", b'{"instances": [' + b"9" * 5000 + b"]}", 400, "invalid_input", "not valid JSON"),
    ],
)
def test_bad_requests_get_their_status_and_json(serve_url, path, body, status, code, message):
    if body is None:
        response = httpx.get(serve_url + path, timeout=TIMEOUT)
    else:
        response = post(serve_url + path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert message in error["message"]


def test_too_large_is_413(serve_url):
    big = b'{"instances": ["' + b"A" * (5 * 1024 * 1024) + b'"]}'
    response = post(f"{serve_url}/v1/models/digits:predict", content=big)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_too_large_without_content_length_is_413(serve_url):
    def chunks():
        yield b'{"instances": ["'
        for _ in range(80):
            yield b"A" * 65536
        yield b'"]}'

    response = post(f"{serve_url}/v1/models/digits:predict", content=chunks())
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_wrong_method_is_405(serve_url):
    response = httpx.get(f"{serve_url}/v1/models/digits:predict", timeout=TIMEOUT)
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_health_readiness_and_metadata(serve_url, trained_digits):
    assert httpx.get(f"{serve_url}/healthz", timeout=TIMEOUT).json() == {"status": "ok"}
    ready = httpx.get(f"{serve_url}/readyz", timeout=TIMEOUT)
    assert ready.status_code == 200
    assert ready.json()["models"] == {"digits": "ready"}

    meta = httpx.get(f"{serve_url}/v1/models/digits", timeout=TIMEOUT).json()
    assert meta["name"] == "digits"
    assert meta["labels"] == [str(i) for i in range(10)]
    assert meta["input"]["shape"] == [1, 128, 128]
    assert meta["version"] == trained_digits.version
    assert meta["device"] == "cpu"
    configured = model_applications(load_serve_config())[0]["deployments"][0]["user_config"]
    assert meta["batching"] == configured  # the deployment's user_config, as the replica applied it
    assert meta["replicas"] >= 1

    listing = httpx.get(f"{serve_url}/v1/models", timeout=TIMEOUT).json()
    assert [m["name"] for m in listing["models"]] == ["digits"]


def test_cors_allow_list(serve_url):
    url = f"{serve_url}/v1/models/digits:predict"
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    allowed = httpx.options(url, headers={"Origin": "http://allowed.test", **preflight}, timeout=TIMEOUT)
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == "http://allowed.test"
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert allowed.headers["access-control-allow-headers"] == "content-type"

    # Any port on loopback is allowed by the "http://127.0.0.1:*" entry.
    loopback = httpx.options(url, headers={"Origin": "http://127.0.0.1:4321", **preflight}, timeout=TIMEOUT)
    assert loopback.headers["access-control-allow-origin"] == "http://127.0.0.1:4321"

    refused = httpx.options(url, headers={"Origin": "http://evil.test", **preflight}, timeout=TIMEOUT)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in refused.headers

    # Simple requests: the header only for an allowed origin (the browser hides the rest).
    ok = httpx.get(f"{serve_url}/v1/models/digits", headers={"Origin": "http://allowed.test"}, timeout=TIMEOUT)
    assert ok.headers["access-control-allow-origin"] == "http://allowed.test"
    other = httpx.get(f"{serve_url}/v1/models/digits", headers={"Origin": "http://evil.test"}, timeout=TIMEOUT)
    assert "access-control-allow-origin" not in other.headers


def test_a_page_of_another_site_is_refused_by_its_host_name(serve_url, make_digit):
    """DNS rebinding: another site's name made to resolve to this loopback server. Its Host is
    refused by every application (metadata, and the predict route of a model's own application)."""
    port = serve_url.rsplit(":", 1)[1]
    evil = {"Host": f"evil.example:{port}"}
    meta = httpx.get(f"{serve_url}/v1/models/digits", headers=evil, timeout=TIMEOUT)
    assert meta.status_code == 403 and meta.json()["error"]["code"] == "host_not_allowed", meta.text
    body = {"instances": [make_digit(3)[0]]}
    predict = post(f"{serve_url}/v1/models/digits:predict", json=body, headers=evil)
    assert predict.status_code == 403 and predict.json()["error"]["code"] == "host_not_allowed", predict.text
    mine = post(f"{serve_url}/v1/models/digits:predict", json=body, headers={"Host": f"localhost:{port}"})
    assert mine.status_code == 200, mine.text


def _metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


BURST = 16  # the packaged config's max_batch_size: what one pass may take


@pytest.fixture(scope="module")
def gated_serve(tmp_path_factory, start_serve):
    """Serve with the gated model only (support/gated_model.py), one replica, the packaged batching."""
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    app = next(a for a in config["applications"] if a["name"] == "model-digits")
    (deployment,) = app["deployments"]
    deployment.pop("autoscaling_config", None)  # `--model gated_model:spec` gets a copy of these settings
    deployment["num_replicas"] = 1
    assert deployment["user_config"]["max_batch_size"] == BURST
    tmp = tmp_path_factory.mktemp("gated")
    path = tmp / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    server = start_serve(
        tmp / "serve.log", ["--config", str(path), "--model", "gated_model:spec"], env={"PYTHONPATH": str(SUPPORT)}
    )
    yield server
    assert not server.stop(), "processes left after serve stopped"


def test_concurrent_requests_are_batched_and_metrics_exported(gated_serve):
    """A burst of BURST one-instance requests: the model holds its first pass until the rest are
    queued (whatever the machine's load), so the batcher must answer them in exactly two passes."""
    url = f"{gated_serve.url}/v1/models/gated:predict"

    def one(_):
        return post(url, json={"instances": [[BURST]]})

    with concurrent.futures.ThreadPoolExecutor(BURST) as pool:
        responses = list(pool.map(one, range(BURST)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200][:3]
    assert all(len(r.json()["predictions"]) == 1 for r in responses)
    bad = post(url, json={"instances": [[0.0, 0.0]]})  # one bad_input for the counter
    assert bad.status_code == 400, bad.text

    # As Prometheus sees it (Ray exports every few seconds).
    deadline = time.monotonic() + 120
    text = ""
    while time.monotonic() < deadline:
        text = httpx.get(gated_serve.metrics_url, timeout=TIMEOUT).text
        ok = _metric(text, "ray_marcelle_torch_predictions_total", model="gated", outcome="ok")
        bad_input = _metric(text, "ray_marcelle_torch_predictions_total", model="gated", outcome="bad_input")
        passes = _metric(text, "ray_marcelle_torch_batch_size_count", model="gated")
        if ok >= BURST and bad_input >= 1 and passes >= 2:
            break
        time.sleep(2)
    assert ok == BURST and bad_input == 1, re.findall(r"^ray_marcelle_torch_predictions_total.*$", text, re.M)
    # The pass that held, with what had arrived when it started, then one pass with all the rest
    # (counted in passes: ray 2.60 exports a histogram's _sum made of its buckets' midpoints,
    # _private/telemetry/open_telemetry_metric_recorder.py).
    sizes = re.findall(r"^ray_marcelle_torch_batch_size.*$", text, re.M)
    assert _metric(text, "ray_marcelle_torch_batch_size_count", model="gated") == 2, sizes
    assert _metric(text, "ray_marcelle_torch_batch_size_bucket", model="gated", le="1.0") <= 1, sizes
    assert _metric(text, "ray_marcelle_torch_model_latency_seconds_count", model="gated", device="cpu") == 2


def test_openapi_document_describes_every_route_and_error(serve_url):
    """The published OpenAPI document names every route of the contract, its method, its body and
    response schemas, and the JSON error schema of each error status the route can answer."""
    response = httpx.get(f"{serve_url}/openapi.json", timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    doc = response.json()
    paths = doc["paths"]
    expected = {
        "/v1/models/{name}:predict": ("post", {400, 404, 405, 413, 500, 503, 504}),
        "/v1/models/{name}": ("get", {404, 405, 500, 503, 504}),
        "/v1/models": ("get", {405, 500, 503, 504}),
        "/healthz": ("get", {405}),
        "/readyz": ("get", {405, 503}),
    }
    assert set(expected) <= set(paths), sorted(paths)
    schemas = doc["components"]["schemas"]
    assert set(schemas["ErrorResponse"]["properties"]) == {"error"}
    assert set(schemas["ErrorDetail"]["properties"]) == {"code", "message"}
    for path, (method, errors) in expected.items():
        op = paths[path][method]
        statuses = {int(s) for s in op["responses"]}
        assert errors | {200} <= statuses, (path, statuses)
        for status in errors:
            ref = op["responses"][str(status)]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ErrorResponse"), (path, status, ref)
        ok = op["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok.get("$ref") or ok.get("properties"), (path, ok)
    predict = paths["/v1/models/{name}:predict"]["post"]
    body = predict["requestBody"]["content"]["application/json"]["schema"]
    assert "instances" in body["properties"] and body["required"] == ["instances"]
    assert predict["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/PredictResponse")
    assert "Retry-After" in predict["responses"]["503"]["headers"]
    # Every error the document lists is one the server answers in that shape: a live check of three.
    for method, path, status in (
        ("GET", "/v1/models/digits:predict", 405),
        ("GET", "/v1/models/nope", 404),
        ("POST", "/v1/models/digits:predict", 400),
    ):
        r = httpx.request(method, serve_url + path, content=b"{}", timeout=TIMEOUT)
        assert r.status_code == status and set(r.json()) == {"error"}, (path, r.status_code, r.text)
    assert httpx.get(f"{serve_url}/docs", timeout=TIMEOUT).status_code == 200
