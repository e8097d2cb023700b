"""The protocols users' clients already speak, driven against a real ``marcelle-torch serve`` (the
built-in ``digits`` and a user's model folder) by clients nobody here wrote: KServe's Python SDK
(v1 and v2) and Triton's ``tritonclient.http``. Their labels and probabilities must equal what the
v1 ``:predict`` path answers for the same images.

The clients run in a venv of their own, built once under ``.cache/protocol-clients/`` and reused
(about a minute from PyPI on the 2-core machine): ``kserve==0.21.0`` pulls dependencies (psutil,
protobuf, grpcio, kubernetes, ...) at versions the project's venv must not be moved to, so they are
not test extras; the client script (support/protocol_clients.py) runs there in a subprocess.

Upstream shapes these follow (kserve 0.21.0, as installed in that venv):
python/kserve/kserve/protocol/rest/server.py (``GET /`` -> dataplane.live ``{"status": "alive"}``),
python/kserve/kserve/protocol/rest/v1_endpoints.py (model status ``{"name", "ready"}``, 503 when
not ready), python/kserve/kserve/protocol/rest/v2_endpoints.py and protocol/dataplane.py (v2 health,
metadata, infer), python/kserve/kserve/errors.py (``{"error": "<message>"}`` per status), and
python/kserve/kserve/inference_client.py (what InferenceRESTClient calls and reads).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from nginx_host import NGINX, run_nginx

from marcelle_torch.processes import free_port

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
SUPPORT = Path(__file__).with_name("support")
CLIENT_PINS = ["kserve==0.21.0", "tritonclient[http]==2.73.0"]
CLIENTS_DIR = REPO / ".cache" / "protocol-clients"
TIMEOUT = httpx.Timeout(180.0)
FOLDER_MODEL = "shapes"


def client_python() -> Path:
    """The client venv's python, built on first use (under a lock: parallel sessions share it)."""
    key = hashlib.sha256(" ".join([sys.version.split()[0], *CLIENT_PINS]).encode()).hexdigest()[:12]
    venv = CLIENTS_DIR / key
    python = venv / "bin" / "python"
    done = venv / ".complete"
    if done.exists():
        return python
    CLIENTS_DIR.mkdir(parents=True, exist_ok=True)
    with open(CLIENTS_DIR / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return python
        started = time.monotonic()
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *CLIENT_PINS],
            check=True,
            timeout=900,
        )
        done.write_text(f"built in {time.monotonic() - started:.0f}s: {' '.join(CLIENT_PINS)}\n")
    return python


@pytest.fixture(scope="module")
def protocols_serve(tmp_path_factory, start_serve, trained_digits):
    """Serve with the built-in digits and a user's model folder (tests/chart/model_folder.py)."""
    sys.path.insert(0, str(REPO / "tests" / "chart"))
    try:
        from model_folder import make_folder
    finally:
        sys.path.remove(str(REPO / "tests" / "chart"))
    tmp = tmp_path_factory.mktemp("protocols")
    folder = make_folder(tmp, FOLDER_MODEL)
    server = start_serve(tmp / "serve.log", ["--model", "digits", "--model", str(folder)])
    server.refs = {"digits": "digits", FOLDER_MODEL: str(folder)}  # model name -> what get_spec takes
    yield server
    assert not server.stop(), "processes left after serve stopped"


@pytest.fixture(scope="module")
def nginx_url(tmp_path_factory, protocols_serve):
    """The web app image's nginx (services/frontend/nginx.conf, run by the real binary) in front of
    the server: both protocols must work under its ``/serve/`` prefix."""
    if NGINX is None:
        pytest.skip("no nginx binary (Debian's nginx-light: make system-deps)")
    tmp = tmp_path_factory.mktemp("nginx")
    html = tmp / "html"
    html.mkdir()
    (html / "index.html").write_text("<!doctype html><title>app</title>")
    with run_nginx(tmp, html, f"127.0.0.1:{protocols_serve.port}", f"127.0.0.1:{free_port()}") as url:
        yield url


def pngs_for(model: str, make_digit) -> list[str]:
    if model == "digits":
        return [make_digit(i, seed=i, light_background=bool(i % 2))[0]["b64"] for i in range(5)]
    from PIL import Image

    rng = np.random.default_rng(3)
    out = []
    for _ in range(3):
        buf = __import__("io").BytesIO()
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), mode="RGB").save(buf, format="PNG")
        out.append(base64.b64encode(buf.getvalue()).decode())
    return out


def v1_predictions(url: str, model: str, pngs: list[str]) -> list[dict]:
    r = httpx.post(f"{url}/v1/models/{model}:predict", json={"instances": [{"b64": p} for p in pngs]}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def decoded(ref: str, pngs: list[str]) -> np.ndarray:
    """The images as the v1 path decodes them: the FP32 tensor a v2 client would send."""
    from marcelle_torch.models import decode_instances, get_spec

    return decode_instances(get_spec(ref), [{"b64": p} for p in pngs]).numpy()


def assert_same(outputs: dict, reference: list[dict], labels: list[str], where: str) -> None:
    assert outputs["label"] == [p["label"] for p in reference], where
    expected = [[p["confidences"][label] for label in labels] for p in reference]
    assert np.allclose(np.asarray(outputs["probabilities"]).reshape(len(reference), -1), expected, atol=1e-6), where


@pytest.mark.parametrize("model", ["digits", FOLDER_MODEL])
@pytest.mark.parametrize("through", ["direct", "nginx"])
def test_kserve_and_triton_clients_get_the_v1_answers(protocols_serve, make_digit, tmp_path, model, through, request):
    reference = v1_predictions(protocols_serve.url, model, pngs := pngs_for(model, make_digit))
    url = protocols_serve.url if through == "direct" else request.getfixturevalue("nginx_url") + "/serve/"
    labels = list(reference[0]["confidences"])
    request = tmp_path / "request.json"
    request.write_text(
        json.dumps(
            {"url": url, "model": model, "png_b64": pngs, "tensor": decoded(protocols_serve.refs[model], pngs).tolist()}
        )
    )
    run = subprocess.run(
        [str(client_python()), str(SUPPORT / "protocol_clients.py"), str(request)],
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
    )
    assert run.returncode == 0, run.stderr[-4000:]
    got = json.loads(run.stdout.splitlines()[-1])

    kserve = got["kserve"]
    assert kserve["v1_live"] is True and kserve["v1_model_ready"] is True
    assert kserve["v1_infer"] == reference
    assert kserve["v2_live"] is True and kserve["v2_ready"] is True and kserve["v2_model_ready"] is True
    assert kserve["v2_unknown_model_ready"] is False
    for kind in ("fp32", "bytes"):
        for encoding in ("binary", "json"):
            assert_same(kserve[f"v2_infer_{kind}_{encoding}"], reference, labels, f"kserve {kind} {encoding}")

    triton = got["triton"]
    assert triton["live"] and triton["ready"] and triton["model_ready"]
    assert triton["unknown_model_ready"] is False
    assert triton["server_metadata"]["name"] == "marcelle-torch"
    meta = triton["model_metadata"]
    shape = [-1, *httpx.get(f"{protocols_serve.url}/v1/models/{model}", timeout=TIMEOUT).json()["input"]["shape"]]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": shape}]
    assert meta["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(labels)]},
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
    ]
    for kind in ("fp32", "bytes"):
        for encoding in ("binary", "json"):
            assert_same(triton[f"infer_{kind}_{encoding}"], reference, labels, f"triton {kind} {encoding}")
    assert triton["version_ready"] is True and triton["other_version_ready"] is False
    assert triton["infer_version"]["label"] == [p["label"] for p in reference]
    assert triton["bad_input"]["status"] == "400" and "does not match" in triton["bad_input"]["message"]


# ----------------------------------------------------------------------------- the protocol over plain HTTP


def test_v1_liveness_and_model_status_as_kserve_answers_them(protocols_serve):
    url = protocols_serve.url
    root = httpx.get(url + "/", timeout=TIMEOUT)
    assert root.status_code == 200 and root.json() == {"status": "alive"}
    meta = httpx.get(f"{url}/v1/models/digits", timeout=TIMEOUT).json()
    assert meta["name"] == "digits" and meta["ready"] is True
    assert {"labels", "input", "version", "device", "batching", "replicas"} <= set(meta)  # the project's fields


def test_v2_health_metadata_and_infer_over_plain_http(protocols_serve, make_digit):
    url = protocols_serve.url
    assert httpx.get(f"{url}/v2/health/live", timeout=TIMEOUT).json() == {"live": True}
    assert httpx.get(f"{url}/v2/health/ready", timeout=TIMEOUT).json() == {"ready": True}
    assert httpx.get(f"{url}/v2/models/digits/ready", timeout=TIMEOUT).json() == {"name": "digits", "ready": True}
    server = httpx.get(f"{url}/v2", timeout=TIMEOUT).json()
    assert server["name"] == "marcelle-torch" and "binary_tensor_data" in server["extensions"]
    meta = httpx.get(f"{url}/v2/models/digits", timeout=TIMEOUT).json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 128, 128]}]
    (version,) = meta["versions"]
    assert httpx.get(f"{url}/v2/models/digits/versions/{version}", timeout=TIMEOUT).json() == meta
    ready = httpx.get(f"{url}/v2/models/digits/versions/{version}/ready", timeout=TIMEOUT)
    assert ready.json() == {"name": "digits", "ready": True}
    for path in (f"/versions/{version}x", f"/versions/{version}x/ready"):
        other = httpx.get(f"{url}/v2/models/digits{path}", timeout=TIMEOUT)
        assert other.status_code == 404 and "has no version" in other.json()["error"], other.text

    pngs = pngs_for("digits", make_digit)[:2]
    reference = v1_predictions(url, "digits", pngs)
    body = {
        "id": "abc",
        "inputs": [{"name": "input", "shape": [2], "datatype": "BYTES", "data": pngs}],
        "outputs": [{"name": "label"}],
    }
    other = httpx.post(f"{url}/v2/models/digits/versions/{version}x/infer", json=body, timeout=TIMEOUT)
    assert other.status_code == 404 and "has no version" in other.json()["error"], other.text
    r = httpx.post(f"{url}/v2/models/digits/versions/{version}/infer", json=body, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["id"] == "abc" and answer["model_name"] == "digits"
    assert answer["outputs"] == [
        {"name": "label", "datatype": "BYTES", "shape": [2], "data": [p["label"] for p in reference]}
    ]
    nested = decoded("digits", pngs).tolist()  # nested data in the declared shape, not flat
    fp32 = {"inputs": [{"name": "input", "shape": [2, 1, 128, 128], "datatype": "FP32", "data": nested}]}
    r = httpx.post(f"{url}/v2/models/digits/infer", json=fp32, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    probabilities = next(o for o in r.json()["outputs"] if o["name"] == "probabilities")
    assert probabilities["shape"] == [2, 10]
    expected = [p["confidences"][str(i)] for p in reference for i in range(10)]
    assert np.allclose(probabilities["data"], expected, atol=1e-6)


@pytest.mark.parametrize(
    "method, path, body, status, message",
    [
        ("POST", "/v2/models/digits/infer", b"{not json", 400, "not valid JSON"),
        ("POST", "/v2/models/digits/infer", b'{"inputs": 3}', 400, '{"inputs": ['),
        ("POST", "/v2/models/digits/infer", b'{"inputs": []}', 400, "exactly one input"),
        (
            "POST",
            "/v2/models/digits/infer",
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}',
            400,
            "unknown input 'x'",
        ),
        (
            "POST",
            "/v2/models/digits/infer",
            b'{"inputs": [{"name": "input", "shape": [1, 1, 2], "datatype": "FP32", "data": [1, 2]}]}',
            400,
            "does not match [-1, 1, 128, 128]",
        ),
        (
            "POST",
            "/v2/models/digits/infer",
            b'{"inputs": [{"name": "input", "shape": [1], "datatype": "INT8", "data": [1]}]}',
            400,
            "datatype 'INT8' is not accepted",
        ),
        (
            "POST",
            "/v2/models/digits/infer",
            b'{"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ["aGVsbG8="]}]}',
            400,
            "does not hold an image",
        ),
        (
            "POST",
            "/v2/models/digits/infer",
            b'{"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ["x"]}], '
            b'"outputs": [{"name": "logits"}]}',
            400,
            "unknown output 'logits'",
        ),
        ("POST", "/v2/models/no-such-model/infer", b"{}", 404, "unknown model"),
        ("GET", "/v2/models/no-such-model", None, 404, "unknown model"),
        ("GET", "/v2/models/no-such-model/ready", None, 404, "unknown model"),
        ("GET", "/v2/models/digits/infer", None, 405, "method not allowed"),
        ("GET", "/v2/nothing-here", None, 404, "no route"),
    ],
)
def test_v2_errors_are_the_protocols(protocols_serve, method, path, body, status, message):
    r = httpx.request(method, protocols_serve.url + path, content=body, timeout=TIMEOUT)
    assert r.status_code == status, r.text
    assert list(r.json()) == ["error"] and isinstance(r.json()["error"], str), r.text
    assert message in r.json()["error"], r.text


def test_openapi_describes_both_protocols(protocols_serve):
    doc = httpx.get(f"{protocols_serve.url}/openapi.json", timeout=TIMEOUT).json()
    paths = doc["paths"]
    for path in ("/", "/v1/models/{name}:predict", "/v1/models/{name}", "/v2", "/v2/health/live"):
        assert path in paths, sorted(paths)
    for path in (
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/versions/{version}",
        "/v2/models/{name}/versions/{version}/ready",
    ):
        assert "get" in paths[path], path
    assert "post" in paths["/v2/models/{name}/versions/{version}/infer"]
    infer = paths["/v2/models/{name}/infer"]["post"]
    assert "inputs" in infer["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert infer["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/InferResponse")
    assert infer["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorV2")
