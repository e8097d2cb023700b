"""A shape no digit looks like, drawn as a person draws it on the 128x128 sketchpad: the new label
the built-in ``digits`` is taught in the training tests."""

from __future__ import annotations

import math

import numpy as np
import torch


def star(rng: np.random.Generator) -> torch.Tensor:
    """A five-pointed star in one stroke, upright, at a random place, size and width (1x128x128)."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (128, 128), 0)
    cx, cy, r = 64 + rng.uniform(-12, 12), 64 + rng.uniform(-12, 12), rng.uniform(30, 50)
    turn = -math.pi / 2 + rng.uniform(-0.25, 0.25)
    points = [
        (cx + r * math.cos(turn + i * 4 * math.pi / 5), cy + r * math.sin(turn + i * 4 * math.pi / 5)) for i in range(6)
    ]
    ImageDraw.Draw(image).line(points, fill=255, width=int(rng.uniform(5, 10)))
    return torch.from_numpy(np.asarray(image, np.float32) / 255)[None]


def stars(n: int, seed: int) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    return [star(rng) for _ in range(n)]
