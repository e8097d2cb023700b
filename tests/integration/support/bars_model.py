"""A user's trainable model, for the fine-tuning tests: a small CNN (bars_net:BarsNet, written into
a folder of the test's own, as a user's package) saved as a state_dict, taught horizontal and
vertical bars, in a model folder whose manifest has a `train:` section. ``drawings`` makes labelled
examples of the bars and of a label the model does not know yet (a cross)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch

SIZE = 16
OLD = ["horizontal", "vertical"]
NEW = "cross"
MODULE = textwrap.dedent(
    """
    import torch


    class BarsNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features = torch.nn.Sequential(
                torch.nn.Conv2d(1, 8, 5, padding=2), torch.nn.ReLU(), torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten()
            )
            self.fc = torch.nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(self.features(x))
    """
)
TRAIN = {"head": "fc", "layers": ["all"], "epochs": 12, "batch_size": 8, "learning_rate": 0.01, "holdout": 0.2}


def drawing(label: str, generator: torch.Generator) -> torch.Tensor:
    """A 1x16x16 image in [0,1]: dark strokes on white, at a random place, with noise."""
    image = torch.ones(1, SIZE, SIZE)
    a, b = torch.randint(3, SIZE - 3, (2,), generator=generator).tolist()
    if label in ("horizontal", "cross"):
        image[0, a, 2:-2] = 0.0
    if label in ("vertical", "cross"):
        image[0, 2:-2, b] = 0.0
    noise = torch.rand(image.shape, generator=generator) * 0.2
    return (image - noise).clamp(0, 1)


def drawings(labels: list[str], each: int, seed: int) -> list[tuple[torch.Tensor, str]]:
    generator = torch.Generator().manual_seed(seed)
    return [(drawing(label, generator), label) for label in labels for _ in range(each)]


def png(x: torch.Tensor) -> bytes:
    """A 1xHxW tensor in [0,1] as a greyscale PNG."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray((x[0] * 255).round().to(torch.uint8).numpy(), mode="L").save(out, format="PNG")
    return out.getvalue()


def write_user_package(root: Path) -> Path:
    """The user's module as ``root/bars_net.py``: put ``root`` on the path to import it."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "bars_net.py").write_text(MODULE)
    return root


def make_trainable_folder(workdir: Path, package: Path) -> Path:
    """The user's model (bars_net importable from ``package``), taught the two bars, as a
    trainable model folder ``workdir/bars``."""
    import importlib
    import sys

    from marcelle_torch.models.folder import write_folder

    sys.path.insert(0, str(package))
    try:
        net = importlib.import_module("bars_net").BarsNet
        torch.manual_seed(0)
        net = net()
    finally:
        sys.path.remove(str(package))
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    data = drawings(OLD, 30, seed=1)
    xs = torch.stack([x for x, _ in data])
    ys = torch.tensor([OLD.index(y) for _, y in data])
    for _ in range(30):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(xs), ys).backward()
        optimizer.step()
    torch.save(net.state_dict(), workdir / "bars.pth")
    folder = workdir / "bars"
    write_folder(
        workdir / "bars.pth",
        folder,
        name="bars",
        labels=",".join(OLD),
        input_text=f"image:{SIZE}x{SIZE}x1",
        output="logits",
        module="bars_net:BarsNet",
        train=TRAIN,
    )
    return folder
