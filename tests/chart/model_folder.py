"""A user's model, for the tests that run one through the stack, the chart or the web app: an RGB
classifier exported with torch.export, normalised by its manifest, answering logits (not a
built-in), made into a model folder by the project's own `write_folder` (what `model init` runs).
``users_numbers`` is what its user computes for an image: the reference every path must give."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

LABELS = ["circle", "square", "triangle"]
SIZE = 16
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
SEED = 5


def user_net(seed: int = SEED):
    """The user's module (the same weights for the same seed)."""
    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.Flatten(), torch.nn.LazyLinear(len(LABELS)))
    net(torch.zeros(1, 3, SIZE, SIZE))
    return net.eval()


def make_folder(workdir: Path, name: str, folder: Path | None = None, seed: int = SEED) -> Path:
    """The model folder of ``name`` (at ``folder``, default ``workdir/name``) of ``user_net(seed)``."""
    import torch

    from marcelle_torch.models.folder import write_folder

    batch = torch.export.Dim("batch")
    program = torch.export.export(user_net(seed), (torch.rand(2, 3, SIZE, SIZE),), dynamic_shapes=({0: batch},))
    weights = workdir / f"{name}.pt2"
    torch.export.save(program, weights)
    out = folder or workdir / name
    write_folder(
        weights,
        out,
        name=name,
        labels=",".join(LABELS),
        input_text=f"image:{SIZE}x{SIZE}x3",
        output="logits",
        mean=MEAN,
        std=STD,
    )
    return out


def make_archive(folder: Path, archive: Path) -> str:
    """``folder`` as a .tar.gz at ``archive`` (one folder at its top); returns its sha256."""
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(folder, arcname=folder.name)
    return hashlib.sha256(archive.read_bytes()).hexdigest()


def users_numbers(net, png: bytes) -> dict[str, float]:
    """The user's module on the image's normalised [0,1] pixels, then softmax: label -> probability."""
    import numpy as np
    import torch
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.size == (SIZE, SIZE), f"the reference is on the model's own size, not {image.size}"
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return dict(zip(LABELS, torch.softmax(net(x), dim=1)[0].tolist(), strict=True))
