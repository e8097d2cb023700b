"""The "Backend runs" page in real Chromium, with the real Marcelle backend and a real worker.

A generation run is created from the page; the page must show the progress advancing, an
intermediate image, and the final digit, which the `digits` classifier recognises. The backend
killed and restarted while a run waits: the page says it is reconnecting, comes back, and shows
the run's outcome.
"""

from __future__ import annotations

import base64

import pytest

pytestmark = pytest.mark.backend

CONNECTION = "[data-testid=runs-connection]"
STATUS = "[data-testid=runs-status]"
RESULT = "[data-testid=runs-result]"
HISTORY_ITEM = "[data-testid=runs-history-item]"
# Each control is a Marcelle widget inside the hook.
DIGIT = "[data-testid=runs-digit]"
STEPS = "[data-testid=runs-steps]"
GENERATE = "[data-testid=runs-generate]"


@pytest.fixture
def backend_and_worker(runs_backend):
    """The backend, started, and ``start_worker()``, which starts the worker (once)."""
    return runs_backend()


def test_a_generation_run_created_from_the_page_shows_progress_and_the_digit(
    page, open_runs_page, backend_and_worker, console_errors, run_watcher, shown_png
):
    watch_run, run_record = run_watcher
    backend, start_worker = backend_and_worker
    start_worker()
    nobody = open_runs_page(backend.url)
    page.wait_for_selector(f"{CONNECTION}[data-status=ready]")

    # The status and the progress the page shows while the run goes (recorded by the page itself).
    watch_run(page)
    page.locator(f"{DIGIT} select").select_option("4")
    page.locator(f"{STEPS} input").fill("1000")
    page.locator(f"{GENERATE} button").click()
    page.wait_for_selector(f"{RESULT}[data-label]")
    assert page.locator(STATUS).get_attribute("data-status") == "succeeded"
    assert page.locator(RESULT).get_attribute("data-label") == "4"
    statuses, seen, images = run_record(page)
    assert "running" in statuses and statuses[-1] == "succeeded", statuses
    intermediate = sorted({p for p in seen if 0 < p < 1})
    assert len(intermediate) >= 2, seen
    assert seen == sorted(seen) and seen[-1] == 1
    assert "partial" in images and images[-1] == "result", images

    # The final image, as the page's imageDisplay shows it, is a digit the classifier reads as
    # a 4; the history lists the run.
    page.wait_for_selector("[data-testid=runs-image][data-drawn=result]")
    result = page.locator("[data-testid=runs-image]").get_attribute("data-src")
    assert classify(base64.b64decode(result.split(",", 1)[1])) == "4", "the run's own image"
    assert classify(shown_png(page, "[data-testid=runs-image]")) == "4", "the image the page shows"
    item = page.locator(HISTORY_ITEM).first
    assert item.get_attribute("data-status") == "succeeded" and "digit 4" in item.inner_text()
    assert page.locator("[data-testid=runs-cancel] button").is_disabled()
    # Only the other pages' refused connections may be logged.
    errors = [e for e in console_errors if nobody not in e and "ERR_CONNECTION_REFUSED" not in e]
    assert errors == [], errors


def test_the_page_reconnects_after_a_backend_restart_and_shows_the_final_state(
    page, open_runs_page, backend_and_worker
):
    backend, start_worker = backend_and_worker
    open_runs_page(backend.url)
    page.wait_for_selector(f"{CONNECTION}[data-status=ready]")
    page.locator(f"{DIGIT} select").select_option("2")
    page.locator(f"{STEPS} input").fill("50")
    page.locator(f"{GENERATE} button").click()
    page.wait_for_selector(f"{STATUS}[data-status=pending]")  # no worker yet

    # Killed with the run pending, away longer than socket.io-client's 5 attempts (~15 s) last.
    backend.kill()
    page.wait_for_selector(f"{CONNECTION}[data-status=reconnecting]")
    assert page.locator(f"{GENERATE} button").is_disabled()
    page.wait_for_timeout(20_000)
    backend.restart()
    # The worker runs the run as soon as it connects, maybe before the page is back: the page
    # shows the outcome either way (a reload of the history, not only the events it sees).
    start_worker()
    page.wait_for_selector(f"{CONNECTION}[data-status=ready]", timeout=60_000)
    page.wait_for_selector(f"{RESULT}[data-label]", timeout=120_000)
    assert page.locator(STATUS).get_attribute("data-status") == "succeeded"
    assert page.locator(RESULT).get_attribute("data-label") == "2"


def classify(png: bytes) -> str:
    import torch

    from marcelle_torch.models import decode_instances, get_spec, load_model, postprocess

    spec = get_spec("digits")
    batch = decode_instances(spec, [{"b64": base64.b64encode(png).decode()}])
    with torch.no_grad():
        return postprocess(spec, load_model(spec)(batch))[0]["label"]
