"""A user model (loaded by import path) whose forward pass takes longer than the
test server's request timeout."""

import time

import torch
from torch import nn

from marcelle_torch.models import ImageInput, ModelSpec

DELAY_S = 3.0


class SlowModule(nn.Module):
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        time.sleep(DELAY_S)
        return torch.full((image.shape[0], 2), 0.5)


def spec() -> ModelSpec:
    return ModelSpec(
        name="slow",
        task="classification",
        build=SlowModule,
        input=ImageInput(size=8),
        labels=("a", "b"),
        description="sleeps in forward",
    )
