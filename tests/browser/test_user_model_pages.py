"""A user's model in the web app, as a user meets it: `marcelle-torch up --model FOLDER` with a
model made here (RGB, normalised outside the module, logits out; not a built-in), then each
page in Chromium. Every page offers the model beside the built-ins in its picker (no name in
the app's code), switches its input to upload and webcam for an RGB model, and shows the
user's own numbers for the image it sent."""

from __future__ import annotations

import io
import json
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chart"))

from model_folder import SIZE, make_folder, user_net, users_numbers  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.ray, pytest.mark.backend]

NAME = "ui-shapes"
TOL = 1e-4


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """``up --model`` (the launcher's own start_stack) with the user's folder: (urls, net)."""
    from local_stack import stack_options

    from marcelle_torch.stack.up import start_stack

    workdir = tmp_path_factory.mktemp("user-stack")
    folder = make_folder(workdir, NAME)
    options = stack_options(workdir / "stack", models=(str(folder),))
    running = start_stack(options, say=lambda msg: print(f"[stack] {msg}", flush=True))
    try:
        yield running.urls, user_net()
    finally:
        running.stop(say=lambda msg: print(f"[stack] {msg}", flush=True))


def photo_png(seed: int, size: tuple[int, int] = (40, 30)) -> bytes:
    """A colour picture (not square, not the model's size): the page pads and resizes it."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def options_of(page, picker: str, wanted: set[str]) -> list[str]:
    """The picker's choices once ``wanted`` are all offered (a disabled placeholder is no choice)."""
    offered = (
        "([sel, wanted]) => wanted.every((w) =>"
        " [...document.querySelectorAll(`${sel} option`)].some((o) => o.value === w))"
    )
    page.wait_for_function(offered, arg=[picker, sorted(wanted)])
    return page.locator(f"{picker} option:not([disabled])").evaluate_all("os => os.map((o) => o.value)")


def follows_rgb(page) -> None:
    """The input offers upload and webcam, not the sketchpad, at the model's size."""
    page.wait_for_selector(f"[data-testid=image-input][data-channels='3'][data-size='{SIZE}']")
    assert page.locator("[data-testid=image-input-sketch]").is_hidden()
    assert page.locator("[data-testid=image-input-webcam]").is_visible()
    assert page.locator("[data-testid=image-input-upload]").is_visible()


def test_serve_page_picks_the_users_model_and_shows_its_numbers(stack, page, drawing_input, wait_label):
    urls, net = stack
    page.goto(urls["webapp"])
    picker = "[data-testid=serve-model-picker]"
    assert set(options_of(page, picker, {"digits", NAME})) == {"digits", NAME}
    # The built-in drawing model first (config.model), with the sketchpad.
    page.wait_for_selector(
        "[data-testid=ray-model][data-model=digits] [data-testid=ray-model-status][data-status=ready]"
    )
    assert page.locator("[data-testid=image-input-sketch]").is_visible()
    page.select_option(picker, NAME)
    page.wait_for_selector(
        f"[data-testid=ray-model][data-model={NAME}] [data-testid=ray-model-status][data-status=ready]"
    )
    assert "circle square triangle" in page.locator("[data-testid=ray-model-info]").inner_text()
    follows_rgb(page)
    drawing_input.upload(photo_png(1))
    sent = drawing_input.model_input_png()
    label, confidence = wait_label(page, "[data-testid=serve-label]")
    expected = users_numbers(net, sent)
    assert label == max(expected, key=expected.get)
    assert confidence == pytest.approx(expected[label], abs=TOL)


def test_onnx_page_picks_the_users_bundle_and_shows_its_numbers(stack, page, drawing_input):
    urls, net = stack
    page.goto(urls["webapp"])
    page.get_by_text("ONNX in the browser", exact=True).first.click()
    picker = "[data-testid=onnx-model-picker]"
    assert set(options_of(page, picker, {"onnx/digits/", f"onnx/{NAME}/"})) == {"onnx/digits/", f"onnx/{NAME}/"}
    page.select_option(picker, f"onnx/{NAME}/")
    page.wait_for_selector("[data-testid=onnx-model-status][data-status=ready]")
    assert f"{NAME} v" in page.locator("[data-testid=onnx-model-info]").inner_text()
    follows_rgb(page)
    drawing_input.upload(photo_png(2))
    sent = drawing_input.model_input_png()
    label = page.locator("[data-testid=onnx-label]")
    label.wait_for()
    shown = json.loads(label.get_attribute("data-confidences"))
    assert shown == pytest.approx(users_numbers(net, sent), abs=TOL)


def test_runs_page_offers_what_the_worker_serves_and_runs_the_users_model(stack, page, drawing_input):
    urls, net = stack
    page.goto(urls["webapp"])
    page.get_by_text("Backend runs", exact=True).first.click()
    classifiers = "[data-testid=runs-classifier-model]"
    assert set(options_of(page, classifiers, {"digits", NAME})) == {"digits", NAME}
    assert options_of(page, "[data-testid=runs-generator-model]", {"digits-generator"}) == ["digits-generator"]
    page.select_option(f"{classifiers} select", NAME)
    follows_rgb(page)
    drawing_input.upload(photo_png(3))
    sent = drawing_input.model_input_png()
    page.wait_for_selector("[data-testid=runs-classify] button:not([disabled])")
    page.click("[data-testid=runs-classify] button")
    page.wait_for_selector("[data-testid=runs-status][data-status=succeeded]")
    shown = page.locator("[data-testid=runs-result]").get_attribute("data-label")
    with urllib.request.urlopen(f"{urls['backend']}/runs?$sort[createdAt]=-1&$limit=1", timeout=30) as response:
        body = json.loads(response.read())
    run = (body.get("data") if isinstance(body, dict) else body)[0]
    assert run["model"] == NAME and run["result"]["label"] == shown
    assert run["result"]["confidences"] == pytest.approx(users_numbers(net, sent), abs=TOL)


def test_the_webcam_feeds_an_rgb_model(stack, page, drawing_input):
    """Chromium's synthetic camera: a captured frame is the model input, and the page's numbers
    for it are the user's. Capture is clicked the moment the camera is switched on."""
    urls, net = stack
    page.goto(urls["webapp"])
    page.get_by_text("ONNX in the browser", exact=True).first.click()
    page.select_option("[data-testid=onnx-model-picker]", f"onnx/{NAME}/")
    page.wait_for_selector("[data-testid=onnx-model-status][data-status=ready]")
    follows_rgb(page)
    page.locator("[data-testid=image-input-webcam]").get_by_text("activate video").click()
    # Captured at once, as a user may: a click before the camera's first frame takes that frame.
    page.locator("[data-testid=image-input-capture] button").click()
    sent = drawing_input.model_input_png()
    label = page.locator("[data-testid=onnx-label]")
    label.wait_for()
    assert json.loads(label.get_attribute("data-confidences")) == pytest.approx(users_numbers(net, sent), abs=TOL)
    assert Image.open(io.BytesIO(sent)).size == (SIZE, SIZE)
