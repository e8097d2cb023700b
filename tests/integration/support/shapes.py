"""Stars drawn as a person draws them on the 128x128 sketchpad (models/digits.py ``drawn_star``):
the new label the built-in ``digits`` is taught in the training tests."""

from __future__ import annotations

import numpy as np
import torch

from marcelle_torch.models.digits import drawn_star


def stars(n: int, seed: int) -> list[torch.Tensor]:
    """``n`` stars as the model's input tensors (1x128x128 in [0, 1])."""
    rng = np.random.default_rng(seed)
    return [torch.from_numpy(drawn_star(rng).astype(np.float32) / 255)[None] for _ in range(n)]
