"""The end-to-end scenarios, written once and run against every target (local stack, kind).

A target is any object with these attributes (see conftest.Target):
  webapp          base URL of the web app (it serves the page, /config.json and the ONNX bundle)
  serve           base URL of the Ray Serve API (on kind: the web app's /serve proxy)
  backend         base URL of the Marcelle backend (on kind: the web app's /backend proxy)
  socketio_path   the backend's socket.io path as seen from `backend`'s origin
  metrics         {"serve": URL, "worker": URL} of Prometheus endpoints
  credentials     optional (email, password) of a backend user, when authentication is on
Each scenario raises AssertionError with a message saying what was wrong.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

HTTP_TIMEOUT_S = 120  # a busy machine, a cold replica: generous, never a timing assertion


def http(method: str, url: str, body: dict | None = None, timeout: float = HTTP_TIMEOUT_S, headers: dict | None = None):
    """(status, headers, bytes) without raising on HTTP errors."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={**({"Content-Type": "application/json"} if data else {}), **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def predict_through_serve(target, make_digit) -> None:
    """Drawn digits (held-out) are classified by the Ray Serve API; errors are JSON."""
    status, _, body = http("GET", f"{target.serve}/v1/models/digits")
    assert status == 200, f"model metadata: HTTP {status}: {body[:300]!r}"
    metadata = json.loads(body)
    assert metadata.get("labels") == [str(d) for d in range(10)], metadata

    instances, labels = zip(*(make_digit(i) for i in range(8)), strict=True)
    status, _, body = http("POST", f"{target.serve}/v1/models/digits:predict", {"instances": list(instances)})
    assert status == 200, f"predict: HTTP {status}: {body[:300]!r}"
    predictions = json.loads(body)["predictions"]
    assert len(predictions) == len(labels)
    for p in predictions:
        assert abs(sum(p["confidences"].values()) - 1) < 1e-3, p
    right = sum(p["label"] == label for p, label in zip(predictions, labels, strict=True))
    assert right >= 7, (
        f"only {right}/8 held-out digits classified right: {[p['label'] for p in predictions]} vs {labels}"
    )

    status, _, body = http("POST", f"{target.serve}/v1/models/digits:predict", {"instances": [{"b64": "not-an-image"}]})
    assert status == 400 and "error" in json.loads(body), f"bad input: HTTP {status}: {body[:300]!r}"


def onnx_bundle_served_by_webapp(target) -> None:
    """The page, its run-time config and the ONNX bundle come from the web app; the model runs."""
    import numpy as np
    import onnxruntime as ort

    status, _, body = http("GET", f"{target.webapp}/")
    assert status == 200 and b"<html" in body.lower(), f"index: HTTP {status}"
    status, _, body = http("GET", f"{target.webapp}/config.json")
    assert status == 200, f"config.json: HTTP {status}"
    config = json.loads(body)
    bundle = config.get("onnxBundle", "onnx/digits/")
    status, _, body = http("GET", f"{target.webapp}/{bundle}model.json")
    assert status == 200, f"{bundle}model.json: HTTP {status}"
    manifest = json.loads(body)
    status, _, model = http("GET", f"{target.webapp}/{bundle}{manifest.get('file', 'model.onnx')}")
    assert status == 200 and len(model) > 1000, f"{bundle}model.onnx: HTTP {status}, {len(model)} bytes"
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    (out,) = session.run(None, {inp.name: np.zeros(shape, dtype=np.float32)})
    assert out.shape[-1] == 10, f"ONNX output shape {out.shape}"


def log_in(target) -> str | None:
    """A JWT of the target's backend user (Feathers' local strategy over REST), or None when the
    target's backend has authentication off."""
    credentials = getattr(target, "credentials", None)
    if not credentials:
        return None
    email, password = credentials
    status, _, body = http(
        "POST", f"{target.backend}/authentication", {"strategy": "local", "email": email, "password": password}
    )
    assert status in (200, 201), f"log in as {email}: HTTP {status}: {body[:300]!r}"
    return json.loads(body)["accessToken"]


def backend_run_completes_with_progress(target, steps: int = 12, timeout_s: float = 600) -> dict:
    """A client creates a run; the worker claims it and reports progress until it succeeds.
    Progress is followed live over the backend's socket.io events, as the web app does."""
    import socketio

    run_id: list[str] = []
    seen: list[dict] = []
    done = threading.Event()

    client = socketio.Client(reconnection=True)

    @client.on("runs patched")
    def on_patched(run):
        if run_id and run.get("_id") == run_id[0]:
            seen.append(run)
            if run.get("status") in ("succeeded", "failed", "canceled"):
                done.set()

    origin = urllib.parse.urlsplit(target.backend)
    client.connect(f"{origin.scheme}://{origin.netloc}", socketio_path=target.socketio_path, transports=["websocket"])
    auth = {}
    try:
        token = log_in(target)
        if token:
            # The socket logs in with the JWT so that the backend's channels send it this user's
            # `runs patched` events.
            auth = {"Authorization": f"Bearer {token}"}
            answer = client.call(
                "create", ("authentication", {"strategy": "jwt", "accessToken": token}), timeout=HTTP_TIMEOUT_S
            )
            error = answer[0] if isinstance(answer, tuple) else answer
            assert not error, f"socket log in: {error}"
        status, _, body = http(
            "POST",
            f"{target.backend}/runs",
            {"model": "digits-generator", "input": {"digit": 7}, "params": {"steps": steps}},
            headers=auth,
        )
        assert status == 201 or status == 200, f"create run: HTTP {status}: {body[:300]!r}"
        run = json.loads(body)
        assert run["status"] == "pending", run
        run_id.append(run["_id"])
        deadline = time.monotonic() + timeout_s
        while not done.wait(2):
            # Events are the fast path; polling covers a run that finished before we subscribed.
            status, _, body = http("GET", f"{target.backend}/runs/{run['_id']}", headers=auth)
            if status == 200 and json.loads(body).get("status") in ("succeeded", "failed", "canceled"):
                break
            assert time.monotonic() < deadline, f"run {run['_id']} not finished after {timeout_s}s: {seen[-1:]}"
    finally:
        client.disconnect()

    status, _, body = http("GET", f"{target.backend}/runs/{run_id[0]}", headers=auth)
    final = json.loads(body)
    assert final["status"] == "succeeded", f"run ended {final['status']}: {final.get('error')}"
    assert final["progress"] == 1 and final.get("result"), final
    progress = [r.get("progress") for r in seen if isinstance(r.get("progress"), (int, float))]
    assert any(0 < p < 1 for p in progress), f"no intermediate progress was seen: {progress}"
    assert progress == sorted(progress), f"progress went backwards: {progress}"
    return final


def metrics_answer(target, make_digit, timeout_s: float = 300) -> None:
    """Serve and the worker export Prometheus metrics, including this project's own (after a
    prediction and a run made here, so the check stands on its own)."""
    predict_through_serve(target, make_digit)
    backend_run_completes_with_progress(target)
    wanted = {
        "serve": ("ray_serve_", "ray_marcelle_torch_predictions"),
        "worker": ("marcelle_torch_worker_up", "marcelle_torch_worker_runs_total"),
    }
    texts = {}
    for name, prefixes in wanted.items():
        url = target.metrics[name]
        deadline = time.monotonic() + timeout_s
        while True:
            status, _, body = http("GET", url, timeout=60)
            text = body.decode(errors="replace")
            missing = [p for p in prefixes if p not in text]
            if status == 200 and not missing:
                break
            # Ray exports on an interval: the counters appear a little after the first request.
            assert time.monotonic() < deadline, f"{name} metrics at {url}: HTTP {status}, missing {missing}"
            time.sleep(5)
        texts[name] = text
    up = [line for line in texts["worker"].splitlines() if line.startswith("marcelle_torch_worker_up")]
    assert up and up[0].split()[-1] in ("1", "1.0"), f"worker not connected: {up}"


def predictions_while(target, make_digit, busy, interval_s: float = 0.2, timeout: float = 30) -> dict:
    """Send predictions through the Serve API one after another while ``busy()`` is true (e.g.
    during a `helm upgrade` and the Ray cluster swap it causes). Returns {"sent", "failed",
    "failures": [first 20 failures]}; a failure is any answer but 200 with predictions, or no
    answer within ``timeout``."""
    instance, _ = make_digit(0)
    sent, failures = 0, []
    while busy():
        sent += 1
        try:
            status, _, body = http(
                "POST", f"{target.serve}/v1/models/digits:predict", {"instances": [instance]}, timeout=timeout
            )
            ok = status == 200 and len(json.loads(body).get("predictions", [])) == 1
            if not ok:
                failures.append(f"{time.strftime('%H:%M:%S')} HTTP {status}: {body[:200]!r}")
        except (OSError, ValueError) as exc:
            failures.append(f"{time.strftime('%H:%M:%S')} {type(exc).__name__}: {exc}")
        time.sleep(interval_s)
    return {"sent": sent, "failed": len(failures), "failures": failures[:20]}


def user_model_on_three_paths(target, timeout_s: float = 300) -> None:
    """The model added beside the built-ins (a user's model folder) answers the same numbers on
    the three paths: Ray Serve, its ONNX bundle from the web app in onnxruntime (listed in the
    app's /config.json), and a run."""
    import base64
    import io

    import numpy as np
    import onnxruntime as ort
    from PIL import Image

    name = target.user_model
    status, _, body = http("GET", f"{target.serve}/v1/models/{name}")
    assert status == 200, f"{name} metadata: HTTP {status}: {body[:300]!r}"
    metadata = json.loads(body)
    labels, size = metadata["labels"], metadata["input"]["size"]
    pixels = np.random.default_rng(4).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    instance = {"b64": base64.b64encode(buffer.getvalue()).decode()}

    status, _, body = http("POST", f"{target.serve}/v1/models/{name}:predict", {"instances": [instance]})
    assert status == 200, f"{name} predict: HTTP {status}: {body[:300]!r}"
    served = [json.loads(body)["predictions"][0]["confidences"][label] for label in labels]

    status, _, body = http("GET", f"{target.webapp}/config.json")
    bundles = json.loads(body).get("onnxBundles", []) if status == 200 else []
    assert f"onnx/{name}/" in bundles, f"/config.json: HTTP {status}, onnxBundles {bundles}"
    status, _, body = http("GET", f"{target.webapp}/onnx/{name}/model.json")
    assert status == 200, f"{name}'s ONNX bundle manifest: HTTP {status}"
    assert json.loads(body)["labels"] == labels, body[:300]
    status, _, model = http("GET", f"{target.webapp}/onnx/{name}/model.onnx")
    assert status == 200, f"{name}'s ONNX bundle: HTTP {status}"
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    x = (pixels.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
    (browser,) = session.run(None, {session.get_inputs()[0].name: x})
    assert np.allclose(browser[0], served, atol=1e-4), f"ONNX {browser[0].tolist()} vs Serve {served}"

    token = log_in(target)
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    status, _, body = http("POST", f"{target.backend}/runs", {"model": name, "input": instance}, headers=auth)
    assert status in (200, 201), f"create run: HTTP {status}: {body[:300]!r}"
    run_id = json.loads(body)["_id"]
    deadline = time.monotonic() + timeout_s
    while True:
        status, _, body = http("GET", f"{target.backend}/runs/{run_id}", headers=auth)
        run = json.loads(body)
        if run.get("status") in ("succeeded", "failed", "canceled"):
            break
        assert time.monotonic() < deadline, f"run of {name} not finished after {timeout_s}s: {run}"
        time.sleep(0.5)
    assert run["status"] == "succeeded", f"run of {name} ended {run['status']}: {run.get('error')}"
    ran = [run["result"]["confidences"][label] for label in labels]
    assert run["result"]["label"] == labels[int(np.argmax(ran))], run["result"]
    assert np.allclose(ran, served, atol=1e-5), f"run {ran} vs Serve {served}"


def _stars(n: int, seed: int) -> list:
    """Drawn stars (a shape no digit looks like) as PNG data URLs, as the Teach page sends them:
    tests/integration/support/shapes.py, loaded by its path (the tiers' `support` differ)."""
    import base64
    import importlib.util
    import io
    from pathlib import Path

    from PIL import Image

    path = Path(__file__).resolve().parents[1] / "integration" / "support" / "shapes.py"
    spec = importlib.util.spec_from_file_location("marcelle_torch_test_shapes", path)
    shapes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shapes)
    urls = []
    for x in shapes.stars(n, seed=seed):
        out = io.BytesIO()
        Image.fromarray((x[0] * 255).round().byte().numpy(), mode="L").save(out, format="PNG")
        urls.append("data:image/png;base64," + base64.b64encode(out.getvalue()).decode())
    return urls


def _finished_run(target, body: dict, auth: dict, timeout_s: float) -> dict:
    """Create a run through the backend (REST) and poll it until it ends."""
    status, _, answer = http("POST", f"{target.backend}/runs", body, headers=auth)
    assert status in (200, 201), f"create run {body.get('params')}: HTTP {status}: {answer[:300]!r}"
    run_id = json.loads(answer)["_id"]
    deadline = time.monotonic() + timeout_s
    while True:
        status, _, answer = http("GET", f"{target.backend}/runs/{run_id}", headers=auth)
        run = json.loads(answer) if status == 200 else {}
        if run.get("status") in ("succeeded", "failed", "canceled"):
            return run
        assert time.monotonic() < deadline, f"run {run_id} {body.get('params')} not finished after {timeout_s}s: {run}"
        time.sleep(1)


def _served(target, instances: list) -> dict:
    status, _, body = http("POST", f"{target.serve}/v1/models/digits:predict", {"instances": instances})
    assert status == 200, f"predict: HTTP {status}: {body[:300]!r}"
    return json.loads(body)


def _until(what: str, check, timeout_s: float = 180):
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not after {timeout_s}s"
        time.sleep(1)


def teach_publish_rollback(target, make_digit, trainers: tuple[str, ...] = (), timeout_s: float = 900) -> dict:
    """Training in the loop, as the admin, through the target's backend and Serve only: a training
    run teaches the built-in ``digits`` ten drawn stars (Marcelle's {x, y} instances) into a new
    version; a publish run moves Serve and the web app's ONNX bundle to it (Serve answers
    ``model_version`` = the version and calls held-out stars "star", the digits kept); a rollback
    run moves both back to the model's own weights. ``trainers``: names of the workers that may
    claim the training (its run's ``worker`` starts with one). Returns timings (s) of each step."""
    token = log_in(target)
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    status, _, body = http("GET", f"{target.serve}/v1/models/digits")
    assert status == 200, f"digits metadata: HTTP {status}: {body[:300]!r}"
    base = json.loads(body)["version"]
    held_out = _stars(10, seed=50)
    assert _served(target, held_out[:1])["model_version"] == base
    timings = {}

    t0 = time.monotonic()
    examples = [{"x": x, "y": "star"} for x in _stars(10, seed=0)]
    training = _finished_run(
        target, {"model": "digits", "input": {"examples": examples}, "params": {"train": {}}}, auth, timeout_s
    )
    timings["train"] = time.monotonic() - t0
    assert training["status"] == "succeeded", f"training ended {training['status']}: {training.get('error')}"
    version = training["result"]["version"]
    assert training["result"]["labels"][-1] == "star", training["result"]
    if trainers:
        assert training["worker"].startswith(tuple(f"{name}-" for name in trainers)), (
            f"the training was claimed by {training['worker']}, not by {trainers}"
        )

    t0 = time.monotonic()
    published = _finished_run(target, {"model": "digits", "input": None, "params": {"publish": version}}, auth, 600)
    assert published["status"] == "succeeded", f"publish ended {published['status']}: {published.get('error')}"
    assert published["result"] == {"model": "digits", "version": version, "previous": None}, published["result"]
    _until("Serve on the published version", lambda: _served(target, held_out[:1])["model_version"] == version)
    timings["publish"] = time.monotonic() - t0

    answer = _served(target, held_out)
    assert answer["model_version"] == version, answer["model_version"]
    stars_right = sum(p["label"] == "star" for p in answer["predictions"])
    assert stars_right >= 9, (
        f"{stars_right}/10 held-out stars called star: {[p['label'] for p in answer['predictions']]}"
    )
    digits, labels = zip(*(make_digit(i) for i in range(8)), strict=True)
    answer = _served(target, list(digits))
    digits_right = sum(p["label"] == label for p, label in zip(answer["predictions"], labels, strict=True))
    assert digits_right >= 7, f"the version forgot the digits: {digits_right}/8 right"
    status, _, body = http("GET", f"{target.serve}/v1/models/digits")
    meta = json.loads(body)
    assert meta["version"] == version and meta["labels"][-1] == "star", meta

    # The web app's nginx serves the published version's bundle (made by the publish run).
    status, _, body = http("GET", f"{target.webapp}/onnx/digits/model.json")
    assert status == 200, f"/onnx/digits/model.json: HTTP {status}"
    bundle = json.loads(body)
    assert bundle["version"] == version and bundle["labels"][-1] == "star", {
        k: bundle.get(k) for k in ("version", "labels")
    }
    status, _, model = http("GET", f"{target.webapp}/onnx/digits/{bundle.get('file', 'model.onnx')}")
    assert status == 200 and len(model) > 1000, f"the published model.onnx: HTTP {status}, {len(model)} bytes"

    t0 = time.monotonic()
    rollback = _finished_run(target, {"model": "digits", "input": None, "params": {"publish": None}}, auth, 600)
    assert rollback["status"] == "succeeded", f"rollback ended {rollback['status']}: {rollback.get('error')}"
    assert rollback["result"] == {"model": "digits", "version": None, "previous": version}, rollback["result"]
    _until("Serve back on its own weights", lambda: _served(target, held_out[:1])["model_version"] == base)
    timings["rollback"] = time.monotonic() - t0
    status, _, body = http("GET", f"{target.webapp}/onnx/digits/model.json")
    assert status == 200 and json.loads(body)["version"] == base, (
        f"/onnx/digits/model.json after the rollback: {body[:200]!r}"
    )
    print(
        f"teach/publish/rollback: version {version} (from {base}), stars {stars_right}/10, digits {digits_right}/8, "
        f"claimed by {training['worker']}; " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())
    )
    return timings
