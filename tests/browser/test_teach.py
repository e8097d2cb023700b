"""The Teach page, the whole loop, as a user meets it: `marcelle-torch up` (the launcher's own
start_stack: real Ray Serve, Marcelle backend, worker and web app, with a model store), in
Chromium.

Ten drawings of a class the model does not have (a five-pointed star, one stroke, randomly
jittered) are drawn on the page's sketchpad with real mouse moves, labelled and added to the
Marcelle dataset; the model is trained on it (a training run), the new version published; then,
on held-out drawings, each path predicts with the new version: Ray Serve (the Teach page's
prediction, which names the version that answered), the ONNX page (which loads the published
bundle when it is shown) and backend runs (the runs page). The new class must be read on at
least 90% of its held-out drawings and the digits on at least 95% of theirs, on every path.
Then "Roll back": Serve answers with the model's own version again.

Kept short on purpose: one stack, one test, 10 new + 20 digit drawings per path (the jittered
digits of conftest's DIGIT_STROKES, 4 each of 0, 1, 2, 4, 7).

With MARCELLE_TORCH_DOCS_SCREENSHOTS=1 it also saves the page's training plot, as the README
shows it, to docs/teach-training-plot.png.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import urllib.request

import pytest
from conftest import DIGIT_STROKES, ROOT

pytestmark = [pytest.mark.browser, pytest.mark.ray, pytest.mark.backend]

NEW = "star"
EXAMPLES = 10
HELD_OUT_NEW = 10
HELD_OUT_DIGITS = 4  # per digit of DIGIT_STROKES (5 digits): 20
MIN_NEW, MIN_DIGITS = 0.90, 0.95
TRAIN_TIMEOUT_S = 600
SERVED_TIMEOUT_S = 60
SCREENSHOT = ROOT / "docs" / "teach-training-plot.png"

TEACH = "Teach"
CONNECTION = "[data-testid=teach-connection]"
SERVE_STATUS = "[data-testid=ray-model-status]"
PREDICTION = "[data-testid=teach-prediction]"
SERVE_LABEL = "[data-testid=teach-serve-label]"
PUBLISHED = "[data-testid=teach-published]"
ONNX_MODEL = "[data-testid=onnx-model]"
ONNX_LABEL = "[data-testid=onnx-label]"
RUNS_RESULT = "[data-testid=runs-result]"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """``up`` (its model store beside the backend's data, in its workdir): (the stack's URLs, its logs folder)."""
    from local_stack import stack_options

    from marcelle_torch.stack.up import start_stack

    workdir = tmp_path_factory.mktemp("teach-stack")
    options = stack_options(workdir / "stack")
    say = lambda msg: print(f"[stack] {msg}", flush=True)  # noqa: E731
    running = start_stack(options, say=say)
    try:
        yield running.urls, running.logs
    finally:
        running.stop(say=say)


# --- drawings ---------------------------------------------------------------------------


def star(rng: random.Random) -> list[list[tuple[float, float]]]:
    """A five-pointed star in one stroke (a pentagram), at a random place, size and angle."""
    cx, cy = 0.5 + rng.uniform(-0.05, 0.05), 0.5 + rng.uniform(-0.05, 0.05)
    r = rng.uniform(0.28, 0.36)
    turn = rng.uniform(-0.2, 0.2)
    points = []
    for k in range(6):
        a = -math.pi / 2 + turn + k * 4 * math.pi / 5
        shake = rng.uniform(-0.015, 0.015), rng.uniform(-0.015, 0.015)
        points.append((cx + r * math.cos(a) + shake[0], cy + r * math.sin(a) + shake[1]))
    return [points]


def jittered(strokes, rng: random.Random) -> list[list[tuple[float, float]]]:
    """A digit's strokes moved, scaled and shaken a little, as another hand would draw them."""
    dx, dy, s = rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04), rng.uniform(0.9, 1.08)

    def move(x, y):
        return (
            0.5 + (x - 0.5) * s + dx + rng.uniform(-0.012, 0.012),
            0.5 + (y - 0.5) * s + dy + rng.uniform(-0.012, 0.012),
        )

    return [[move(x, y) for x, y in stroke] for stroke in strokes]


def held_out(seed: int) -> list[tuple[str, list]]:
    """(true label, strokes): HELD_OUT_NEW stars and HELD_OUT_DIGITS of each digit, shuffled."""
    rng = random.Random(seed)
    drawings = [(NEW, star(rng)) for _ in range(HELD_OUT_NEW)]
    drawings += [(d, jittered(DIGIT_STROKES[d], rng)) for d in DIGIT_STROKES for _ in range(HELD_OUT_DIGITS)]
    rng.shuffle(drawings)
    return drawings


def score(results: list[tuple[str, str]]) -> tuple[float, float]:
    """(share of the new class read as such, share of the digits read right) of (truth, shown)."""
    new = [shown == truth for truth, shown in results if truth == NEW]
    digits = [shown == truth for truth, shown in results if truth != NEW]
    return sum(new) / len(new), sum(digits) / len(digits)


# --- the pages --------------------------------------------------------------------------


def open_page(page, title: str) -> None:
    page.get_by_text(title, exact=True).first.click()


def draw(page, drawing_input, strokes, first: bool) -> None:
    if not first:
        drawing_input.clear()
    drawing_input.draw_strokes(strokes)


def serve_prediction(page, drawing_input, strokes, first: bool) -> tuple[str, str]:
    """Draw on the Teach page: the (label, version) Ray Serve answers the whole drawing with."""
    before = int(page.locator(PREDICTION).get_attribute("data-requested") or 0)
    draw(page, drawing_input, strokes, first)
    page.wait_for_function(
        """([box, label, before]) => {
            const requested = Number(document.querySelector(box).dataset.requested || 0);
            const shown = document.querySelector(label);
            return requested > before && shown && Number(shown.dataset.for) === requested;
        }""",
        arg=[PREDICTION, SERVE_LABEL, before],
    )
    label = page.locator(SERVE_LABEL)
    return label.get_attribute("data-label"), label.get_attribute("data-version")


def onnx_prediction(page, drawing_input, strokes, first: bool) -> tuple[str, str]:
    """Draw on the ONNX page: each stroke is predicted, in order; the last one is the drawing's."""
    label = page.locator(ONNX_LABEL)
    before = int(label.get_attribute("data-count")) if label.count() else 0
    draw(page, drawing_input, strokes, first)
    page.wait_for_function(
        "([sel, n]) => Number(document.querySelector(sel)?.dataset.count) >= n",
        arg=[ONNX_LABEL, before + len(strokes)],
    )
    return label.get_attribute("data-label"), label.get_attribute("data-version")


def newest_run(backend: str) -> dict | None:
    with urllib.request.urlopen(f"{backend}/runs?$sort[createdAt]=-1&$limit=1", timeout=30) as response:
        body = json.loads(response.read())
    runs = body.get("data") if isinstance(body, dict) else body
    return runs[0] if runs else None


def run_prediction(page, drawing_input, strokes, first: bool, backend: str) -> tuple[str, str]:
    """Draw on the runs page and classify: the (label, model_version) of the run's result."""
    previous = newest_run(backend)
    sent = drawing_input.model_input_png() if not first else None
    draw(page, drawing_input, strokes, first)
    drawing_input.model_input_png(changed_from=sent)
    page.click("[data-testid=runs-classify] button")
    deadline = time.monotonic() + 120
    while True:
        run = newest_run(backend)
        done = run and run["_id"] != (previous or {}).get("_id") and run["status"] in ("succeeded", "failed")
        if done:
            break
        assert time.monotonic() < deadline, f"no classification run ended: {run}"
        time.sleep(0.1)
    assert run["status"] == "succeeded", run.get("error")
    page.wait_for_selector(f"{RUNS_RESULT}[data-label]")
    return str(run["result"]["label"]), str(run["result"].get("model_version"))


def served_version(serve: str) -> str:
    with urllib.request.urlopen(f"{serve}/v1/models/digits", timeout=30) as response:
        return str(json.loads(response.read())["version"])


def wait_served(serve: str, version: str) -> None:
    deadline = time.monotonic() + SERVED_TIMEOUT_S
    while served_version(serve) != version:
        assert time.monotonic() < deadline, f"Serve still answers {served_version(serve)}, not {version}"
        time.sleep(0.25)


def assert_scores(path: str, results: list[tuple[str, str]]) -> None:
    new, digits = score(results)
    wrong = [(truth, shown) for truth, shown in results if truth != shown]
    print(f"{path}: {NEW} {new:.0%} of {HELD_OUT_NEW}, digits {digits:.0%} of {len(results) - HELD_OUT_NEW}")
    assert new >= MIN_NEW and digits >= MIN_DIGITS, f"{path}: {NEW} {new:.0%}, digits {digits:.0%}; wrong: {wrong}"


def logs_tail(logs, lines: int = 40) -> str:
    """The last lines of the stack's logs (the worker's, Serve's), for a failure's message."""
    tails = []
    for log in sorted(logs.glob("*.log")):
        tails.append(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
    return "\n".join(tails)


def test_teach_a_new_class_publish_it_everywhere_and_roll_back(stack, page, drawing_input, console_errors):
    urls, logs = stack
    page.goto(urls["webapp"])
    open_page(page, TEACH)
    page.wait_for_selector(f"{CONNECTION}[data-status=ready]")
    page.wait_for_selector(f"{SERVE_STATUS}[data-status=ready]")
    base = served_version(urls["serve"])

    # 1. Ten stars, drawn, labelled and added to the dataset.
    page.locator("[data-testid=teach-label] input").fill(NEW)
    rng = random.Random(1)
    sent = None
    for i in range(EXAMPLES):
        draw(page, drawing_input, star(rng), first=i == 0)
        sent = drawing_input.model_input_png(changed_from=sent)
        page.click("[data-testid=teach-add] button")
        page.wait_for_selector(f"[data-testid=teach-count][data-count='{i + 1}']")
    assert page.locator("[data-testid=teach-dataset] img").count() >= 1  # Marcelle's datasetBrowser shows them

    # 2. Train: a training run, followed by Marcelle's trainingProgress and trainingPlot.
    page.click("[data-testid=teach-train] button")
    training = page.locator("[data-testid=teach-training]")
    page.wait_for_selector(
        "[data-testid=teach-training][data-status=done], [data-testid=teach-training][data-status=failed]",
        timeout=TRAIN_TIMEOUT_S * 1000,
    )
    error = page.locator("[data-testid=teach-run-error]").inner_text()
    assert training.get_attribute("data-status") == "done", f"{error}\n{logs_tail(logs)}"
    version = training.get_attribute("data-version")
    row = page.locator(f"[data-testid=teach-version][data-version='{version}']")
    row.wait_for()
    assert float(row.get_attribute("data-accuracy")) > 0.5
    assert page.locator("[data-testid=teach-plot] canvas").count() >= 2  # loss and accuracy
    if os.environ.get("MARCELLE_TORCH_DOCS_SCREENSHOTS"):
        page.wait_for_timeout(1000)  # the charts' last animation frame
        page.locator("[data-testid=teach-plot]").screenshot(path=str(SCREENSHOT))

    # 3. Publish it: Serve answers with it (the page re-predicts the drawing until it does).
    page.locator("[data-testid=teach-version-select] select").select_option(version)
    page.click("[data-testid=teach-publish] button")
    page.wait_for_selector(f"{PUBLISHED}[data-status=done][data-version='{version}']")
    wait_served(urls["serve"], version)
    row = page.locator(f"[data-testid=teach-version][data-version='{version}']")
    assert row.get_attribute("data-published") == "true"

    drawings = held_out(seed=2)
    # Ray Serve, through the Teach page's prediction.
    results = []
    for truth, strokes in drawings:
        shown, answered = serve_prediction(page, drawing_input, strokes, first=False)
        assert answered == version, f"Serve answered with {answered}, not the published {version}"
        results.append((truth, shown))
    assert_scores("Ray Serve", results)

    # The ONNX page: it loads the published bundle when shown.
    open_page(page, "ONNX in the browser")
    page.wait_for_selector(f"{ONNX_MODEL}[data-version='{version}'] [data-testid=onnx-model-status][data-status=ready]")
    results = []
    for i, (truth, strokes) in enumerate(drawings):
        shown, answered = onnx_prediction(page, drawing_input, strokes, first=i == 0)
        assert answered == version
        results.append((truth, shown))
    assert_scores("ONNX", results)

    # Backend runs, through the runs page.
    open_page(page, "Backend runs")
    page.wait_for_selector("[data-testid=runs-connection][data-status=ready]")
    page.wait_for_selector("[data-testid=runs-classify] button:not([disabled])")
    results = []
    for i, (truth, strokes) in enumerate(drawings):
        shown, answered = run_prediction(page, drawing_input, strokes, first=i == 0, backend=urls["backend"])
        assert answered == version, f"the worker answered with {answered}, not {version}"
        results.append((truth, shown))
    assert_scores("backend runs", results)

    # 4. Roll back: the model's own weights again, on Serve and on the page.
    open_page(page, TEACH)
    page.click("[data-testid=teach-rollback] button")
    page.wait_for_selector(f"{PUBLISHED}[data-status=done][data-version='']")
    wait_served(urls["serve"], base)
    shown, answered = serve_prediction(page, drawing_input, DIGIT_STROKES["7"], first=False)
    assert (shown, answered) == ("7", base)
    assert page.locator("[data-testid=teach-version][data-published=true]").count() == 0

    assert page.locator("[data-testid=teach-run-error]").inner_text() == ""
    assert console_errors == [], console_errors
