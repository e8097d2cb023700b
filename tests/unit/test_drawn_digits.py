"""Digits drawn the way people draw them (pen strokes, not the dataset's own scans) are
recognised at any size, position, pen width and polarity."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

# One pen path per digit, in a unit box (x, y in 0..1), as a person would draw it.
STROKES = {
    "0": [(0.5, 0), (0.85, 0.2), (0.9, 0.5), (0.8, 0.85), (0.5, 1), (0.2, 0.85), (0.1, 0.5), (0.2, 0.15), (0.5, 0)],
    "1": [(0.3, 0.2), (0.55, 0), (0.55, 1)],
    "2": [(0.1, 0.2), (0.4, 0), (0.8, 0.1), (0.85, 0.35), (0.1, 1), (0.9, 1)],
    "3": [(0.1, 0.1), (0.5, 0), (0.85, 0.2), (0.5, 0.5), (0.9, 0.75), (0.5, 1), (0.1, 0.9)],
    "4": [(0.7, 1), (0.7, 0), (0.05, 0.7), (0.95, 0.7)],
    "5": [(0.85, 0), (0.2, 0), (0.15, 0.45), (0.6, 0.4), (0.85, 0.65), (0.6, 1), (0.1, 0.9)],
    "6": [
        (0.8, 0.05),
        (0.4, 0.1),
        (0.15, 0.5),
        (0.2, 0.9),
        (0.5, 1),
        (0.8, 0.85),
        (0.75, 0.55),
        (0.45, 0.5),
        (0.2, 0.65),
    ],
    "7": [(0.05, 0), (0.95, 0), (0.35, 1)],
    "8": [(0.5, 0.5), (0.15, 0.25), (0.5, 0), (0.85, 0.25), (0.5, 0.5), (0.1, 0.75), (0.5, 1), (0.9, 0.75), (0.5, 0.5)],
    "9": [(0.85, 0.3), (0.5, 0.5), (0.15, 0.3), (0.5, 0), (0.85, 0.3), (0.8, 1)],
}
# (left, top, width, height) of the digit on a 300x300 drawing, and the pen width.
PLACEMENTS = [
    ((30, 20, 200, 260), 18),
    ((100, 100, 60, 80), 8),
    ((20, 10, 260, 280), 30),
    ((180, 150, 80, 120), 12),
    ((40, 40, 150, 200), 6),
    ((10, 60, 120, 160), 10),
    ((60, 20, 180, 270), 4),
]


def draw(digit: str, box, pen: int, light: bool, size: int = 300) -> np.ndarray:
    img = Image.new("L", (size, size), 255 if light else 0)
    left, top, width, height = box
    ImageDraw.Draw(img).line(
        [(left + x * width, top + y * height) for x, y in STROKES[digit]],
        fill=0 if light else 255,
        width=pen,
        joint="curve",
    )
    return np.asarray(img.resize((128, 128), Image.BILINEAR), dtype=np.float32) / 255.0


@pytest.fixture(scope="module")
def model(trained_digits):
    from marcelle_torch.models import load_model

    return load_model(trained_digits)


def test_hand_drawn_digits_are_recognised_at_any_size_position_and_polarity(model):
    wrong = []
    total = 0
    for digit in STROKES:
        for light in (True, False):
            batch = torch.from_numpy(np.stack([draw(digit, box, pen, light) for box, pen in PLACEMENTS]))[:, None]
            with torch.no_grad():
                predicted = model(batch).argmax(1).tolist()
            total += len(predicted)
            wrong += [
                (digit, box, pen, light, p)
                for (box, pen), p in zip(PLACEMENTS, predicted, strict=True)
                if str(p) != digit
            ]
    assert len(wrong) <= 0.05 * total, f"{len(wrong)}/{total} drawings misread: {wrong}"
