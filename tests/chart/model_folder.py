"""A user's model folder for the tests of the chart's `models` (tests/chart, tests/cluster): an
RGB classifier exported with torch.export, normalised by its manifest, answering logits (not a
built-in), written by the project's own `write_folder` (what `model init` runs)."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

LABELS = "circle,square,triangle"
SIZE = 16


def make_folder(workdir: Path, name: str, folder: Path | None = None, seed: int = 5) -> Path:
    """The model folder of ``name`` (at ``folder``, default ``workdir/name``)."""
    import torch

    from marcelle_torch.models.folder import write_folder

    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.Flatten(), torch.nn.LazyLinear(3))
    net(torch.zeros(1, 3, SIZE, SIZE))
    batch = torch.export.Dim("batch")
    program = torch.export.export(net.eval(), (torch.rand(2, 3, SIZE, SIZE),), dynamic_shapes=({0: batch},))
    weights = workdir / f"{name}.pt2"
    torch.export.save(program, weights)
    out = folder or workdir / name
    write_folder(
        weights,
        out,
        name=name,
        labels=LABELS,
        input_text=f"image:{SIZE}x{SIZE}x3",
        output="logits",
        mean=[0.485, 0.456, 0.406],
        std=[0.229, 0.224, 0.225],
    )
    return out


def make_archive(folder: Path, archive: Path) -> str:
    """``folder`` as a .tar.gz at ``archive`` (one folder at its top); returns its sha256."""
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(folder, arcname=folder.name)
    return hashlib.sha256(archive.read_bytes()).hexdigest()
