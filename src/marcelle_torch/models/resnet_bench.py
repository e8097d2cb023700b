"""A compute-bound benchmark module shaped like ResNet-18 (3x224x224 in, 1000 scores out).

Its weights are random (seeded): it measures throughput, it classifies nothing, so it is
not in the registry of models offered to users. Written with plain torch layers (no
torchvision), following the layer plan of He et al., "Deep Residual Learning" (Table 1, 18-layer).
"""

from __future__ import annotations

import torch
from torch import nn

from .spec import ModelSpec

INPUT_SHAPE = (3, 224, 224)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet18Shaped(nn.Module):
    def __init__(self, num_outputs: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(512, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def build(seed: int = 0) -> ResNet18Shaped:
    """The module with seeded random weights, in eval mode."""
    torch.manual_seed(seed)
    return ResNet18Shaped().eval()


def spec() -> ModelSpec:
    """A ModelSpec for Serve benchmarks (``marcelle_torch.models.resnet_bench:spec``).

    A classification spec only so that Ray Serve takes it (``spec.require("serve")``): its 1000
    labels are synthetic and its weights random, so it is not in the registry and
    ``marcelle-torch list`` does not offer it. Input: a 224x224 RGB image (a base64 PNG/JPEG per
    instance, decoded in the replica like any image model), so a request is small and the work is
    the forward pass.
    """
    from .spec import ImageInput

    return ModelSpec(
        name="resnet-bench",
        task="classification",
        build=build,
        input=ImageInput(size=INPUT_SHAPE[1], channels=INPUT_SHAPE[0]),
        labels=tuple(f"class-{i}" for i in range(1000)),
        description="benchmark only: ResNet-18-shaped, random weights, classifies nothing",
    )
