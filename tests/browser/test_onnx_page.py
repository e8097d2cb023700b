"""The "ONNX in the browser" page in real Chromium with the exported bundle.

The digit is drawn with mouse moves on Marcelle's sketchpad; the label the page shows must
be the one PyTorch gives for the very image the page fed the model, no request may leave the
page while it predicts (the drawing stays in the browser), and it still predicts with the
network cut once the model is loaded.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from urllib.parse import urljoin, urlparse

import pytest

pytestmark = pytest.mark.browser

LABEL = "[data-testid=onnx-label]"
STATUS = "[data-testid=onnx-model-status]"
ERROR = "[data-testid=onnx-model-error]"
PAGE_TITLE = "ONNX in the browser"
# The other pages of the app talk to their servers on their own (polling, reconnecting):
# point them at a path of the app itself, so their requests are known and told apart.
ELSEWHERE = "/elsewhere/"
CONFIG = {"onnxBundle": "onnx/digits/", "serveUrl": ELSEWHERE + "serve", "backendUrl": ELSEWHERE + "backend"}


def served_bundle(url: str) -> dict:
    """The bundle's model.json as the built app serves it (the build must include it)."""
    try:
        with urllib.request.urlopen(urljoin(url, "onnx/digits/model.json"), timeout=30) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        pytest.fail(
            f"the built app has no ONNX bundle (HTTP {exc.code}): run `marcelle-torch export-onnx digits` "
            "before `npm run build`"
        )


def assert_bundle_matches(bundle: dict, spec) -> None:
    """The app must carry a bundle of the weights PyTorch uses here, or the comparison means nothing."""
    from marcelle_torch.models import resolve_weights
    from marcelle_torch.models.weights import sha256_of

    here = sha256_of(resolve_weights(spec))
    made_from = bundle["created_from"].get("weights_sha256")
    if (bundle["version"], made_from) != (spec.version, here):
        pytest.fail(
            f"the built app's ONNX bundle (digits v{bundle['version']}, weights {str(made_from)[:12]}) is not "
            f"the model under test (v{spec.version}, weights {here[:12]}): run `marcelle-torch export-onnx "
            "digits` with the same MARCELLE_TORCH_CACHE, then `npm run build`"
        )


def test_drawn_digits_are_predicted_in_the_browser_and_stay_there(
    webapp_factory, page, console_errors, drawing_input, digits_model, wait_label
):
    url = webapp_factory(CONFIG)
    bundle = served_bundle(url)
    assert_bundle_matches(bundle, digits_model.spec)
    origin = urlparse(url).netloc
    requests = []  # (method, url, body) of every request the page makes
    page.on("request", lambda r: requests.append((r.method, r.url, r.post_data_buffer)))
    sockets = []  # frames any websocket of the page sends
    page.on("websocket", lambda ws: ws.on("framesent", lambda frame: sockets.append(frame)))

    def leaked(since: int) -> list:
        """Requests since ``since`` that could carry the drawing: any with a body, any not the other
        pages' own, or the page's check of its bundle's version (a GET of model.json, every few s)."""
        return [
            r
            for r in requests[since:]
            if r[0] != "GET"
            or r[2]
            or not (ELSEWHERE in urlparse(r[1]).path or urlparse(r[1]).path.endswith("/onnx/digits/model.json"))
        ]

    page.goto(url)
    page.get_by_text(PAGE_TITLE, exact=True).first.click()
    page.wait_for_selector(f"{STATUS}[data-status=ready]")
    hook = page.locator("[data-testid=onnx-model-backend]")
    assert hook.get_attribute("data-backend").startswith("wasm")
    # Served cross-origin isolated; one WASM thread by default (bench/out/parity.md: faster here).
    assert page.evaluate("globalThis.crossOriginIsolated") is True
    assert (hook.get_attribute("data-ep"), hook.get_attribute("data-isolated")) == ("wasm", "true")
    assert hook.get_attribute("data-threads") == "1" and hook.get_attribute("data-simd") == "true"
    info = page.locator("[data-testid=onnx-model-info]").inner_text()
    assert f"digits v{bundle['version']}" in info and " ".join(bundle["labels"]) in info

    # Everything the page loaded came from the app itself (no CDN), the model and ORT's wasm included.
    loaded = [u for _, u, _ in requests]
    assert all(urlparse(u).netloc == origin for u in loaded if urlparse(u).scheme in ("http", "https")), loaded
    assert any(u.endswith("/onnx/digits/model.onnx") for u in loaded), loaded
    assert any(u.endswith(".wasm") for u in loaded), loaded
    assert not [r for r in requests if r[0] != "GET" or r[2]]
    after_load, frames_at_load = len(requests), len(sockets)

    # Online: a drawing is predicted without a single request.
    drawing_input.draw_digit("1")
    sent = drawing_input.model_input_png()
    shown, confidence = wait_label(page, LABEL)
    expected = digits_model.predict(sent)
    assert shown == expected["label"] == "1"
    assert confidence == pytest.approx(expected["confidences"][shown], abs=1e-4)
    assert leaked(after_load) == []
    time_ms = float(page.locator("[data-testid=onnx-time]").get_attribute("data-ms"))
    assert time_ms > 0

    # Network cut: the page keeps predicting.
    page.context.set_offline(True)
    try:
        for digit in ("0", "7"):
            drawing_input.clear()
            drawing_input.draw_digit(digit)
            sent = drawing_input.model_input_png(changed_from=sent)
            shown, confidence = wait_label(page, LABEL, previous=shown)
            expected = digits_model.predict(sent)
            assert shown == expected["label"] == digit
            assert confidence == pytest.approx(expected["confidences"][digit], abs=1e-4)
    finally:
        page.context.set_offline(False)

    assert leaked(after_load) == [], "the page sent requests while predicting"
    assert sockets[frames_at_load:] == [], "the page sent websocket frames while predicting"
    assert page.locator(ERROR).count() == 0
    # The other pages' polling fails while offline (logged by Chromium); anything else is a fault.
    assert not [e for e in console_errors if "Failed to load resource" not in e], console_errors


def test_missing_bundle_is_reported_on_the_page(webapp_factory, page):
    url = webapp_factory({**CONFIG, "onnxBundle": "onnx/no-such-model/"})
    page.goto(url)
    page.get_by_text(PAGE_TITLE, exact=True).first.click()
    page.wait_for_selector(f"{STATUS}[data-status=error]")
    message = page.locator(ERROR).inner_text()
    assert "onnx/no-such-model/model.json" in message and "HTTP 404" in message
    assert "export-onnx" in message


def test_wasm_threads_when_asked_run_in_workers_of_the_app_itself(
    webapp_factory, page, console_errors, drawing_input, digits_model, wait_label
):
    url = webapp_factory({**CONFIG, "onnxThreads": 2})
    workers = []
    page.on("worker", lambda worker: workers.append(worker.url))
    page.goto(url)
    page.get_by_text(PAGE_TITLE, exact=True).first.click()
    page.wait_for_selector(f"{STATUS}[data-status=ready]")
    hook = page.locator("[data-testid=onnx-model-backend]")
    # ORT really runs two threads: it set numThreads back to 1 had the page not been isolated,
    # and its second thread is a web worker started from the app's own copy of ORT's glue.
    assert hook.get_attribute("data-threads") == "2", hook.get_attribute("data-backend")
    assert hook.get_attribute("data-backend") == "wasm (SIMD, 2 threads)"
    assert workers and all(urlparse(w).netloc == urlparse(url).netloc for w in workers), workers
    assert any("ort-wasm-simd-threaded" in w for w in workers), workers

    drawing_input.draw_digit("7")
    sent = drawing_input.model_input_png()
    shown, confidence = wait_label(page, LABEL)
    expected = digits_model.predict(sent)
    assert shown == expected["label"] == "7"
    assert confidence == pytest.approx(expected["confidences"][shown], abs=1e-4)
    assert page.locator(ERROR).count() == 0
    # The other pages' calls to ELSEWHERE are 404s (the app's server has no SPA fallback).
    assert not [e for e in console_errors if "Failed to load resource" not in e], console_errors
