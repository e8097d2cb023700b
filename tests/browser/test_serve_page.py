"""The "Ray Serve" page in real Chromium against a real Ray Serve application.

The digit is drawn with mouse moves on Marcelle's sketchpad (or uploaded); the label the page
shows must be the one the in-process model gives for the very image the page sent.
"""

from __future__ import annotations

import re
import socket

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.ray]

LABEL = "[data-testid=serve-label]"
STATUS = "[data-testid=ray-model-status]"
ERROR = "[data-testid=ray-model-error]"


def open_serve_page(page, url: str) -> None:
    page.goto(url)
    page.locator(STATUS).wait_for()


def test_drawn_digits_are_predicted_by_serve(
    serve_url, webapp_factory, page, drawing_input, console_errors, digits_model, wait_label
):
    url = webapp_factory({"serveUrl": serve_url, "model": "digits"})
    open_serve_page(page, url)
    page.wait_for_selector(f"{STATUS}[data-status=ready]")
    info = page.locator("[data-testid=ray-model-info]").inner_text()
    assert "digits" in info and "0 1 2 3 4 5 6 7 8 9" in info

    previous_png = None
    previous_label = None
    for digit in ("1", "0"):
        if previous_png is not None:
            drawing_input.clear()
        drawing_input.draw_digit(digit)
        sent = drawing_input.model_input_png(changed_from=previous_png)
        shown, confidence = wait_label(page, LABEL, previous_label)
        expected = digits_model.predict(sent)
        assert shown == expected["label"] == digit
        assert confidence == pytest.approx(expected["confidences"][digit], abs=1e-3)
        # The full-size drawing, resized by the server instead of the browser, reads the same.
        assert digits_model.predict(drawing_input.sketchpad_png())["label"] == digit
        assert page.locator(STATUS).get_attribute("data-status") == "ready"
        previous_png, previous_label = sent, shown

    assert page.locator(ERROR).count() == 0
    assert console_errors == []


def test_uploaded_image_light_on_dark_is_predicted(
    serve_url, webapp_factory, page, drawing_input, digit_png, console_errors, digits_model, wait_label
):
    url = webapp_factory({"serveUrl": serve_url, "model": "digits"})
    open_serve_page(page, url)
    drawing_input.upload(digit_png("7", ink=255, ground=0))
    sent = drawing_input.model_input_png()
    shown, _ = wait_label(page, LABEL)
    assert shown == digits_model.predict(sent)["label"] == "7"
    assert console_errors == []


def test_unreachable_serve_shows_a_clear_error(webapp_factory, page, drawing_input, console_errors):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    url = webapp_factory({"serveUrl": dead, "model": "digits"})
    open_serve_page(page, url)
    error = page.locator(ERROR)
    error.wait_for()
    assert error.inner_text().startswith(f"cannot reach Ray Serve at {dead}")
    assert page.locator(STATUS).get_attribute("data-status") == "unavailable"

    drawing_input.draw_digit("1")
    drawing_input.model_input_png()  # the drawing was taken and sent...
    page.wait_for_selector(f"{STATUS}[data-status=error]")
    assert page.locator(LABEL).count() == 0  # ...and no label was made up
    assert f"cannot reach Ray Serve at {dead}" in error.inner_text()
    # The browser logs the refused connections; nothing else may go wrong on the page.
    assert console_errors and all(re.search(r"ERR_CONNECTION_REFUSED", e) for e in console_errors), console_errors


def test_serve_json_error_message_is_shown(serve_url, webapp_factory, page):
    url = webapp_factory({"serveUrl": serve_url, "model": "no-such-model"})
    open_serve_page(page, url)
    error = page.locator(ERROR)
    error.wait_for()
    text = error.inner_text()
    assert "unknown model 'no-such-model'" in text and "digits" in text
    assert "HTTP 404" in text and "model_not_found" in text
