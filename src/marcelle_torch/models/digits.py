"""Built-in ``digits``: a small CNN on scikit-learn's handwritten digits.

The module takes a drawn canvas (N, 1, 128, 128) in [0, 1] and returns class
probabilities; the dataset's own preprocessing happens inside (see ``optdigits``).
It trains deterministically in well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .optdigits import OptdigitsPreprocess, load_split, render_canvas
from .spec import ImageInput, ModelSpec, Weights

CANVAS = 128
LABELS = tuple(str(i) for i in range(10))


class DigitsCNN(nn.Module):
    """8x8 block counts (scaled to 0..1) -> 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.25), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10)
        )

    def forward(self, counts: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(counts / 16.0))


class DigitsClassifier(nn.Module):
    """Canvas -> probabilities; preprocessing and softmax live inside, so no path can drift."""

    def __init__(self, size: int = CANVAS):
        super().__init__()
        self.preprocess = OptdigitsPreprocess(size)
        self.net = DigitsCNN()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.net(self.preprocess(image)), dim=1)


def synthetic_canvases(
    images: np.ndarray, labels: np.ndarray, per_image: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Canvases drawn from dataset digits at random sizes, positions, widths and polarities."""
    rng = np.random.default_rng(seed)
    canvases, targets = [], []
    for counts, label in zip(images, labels, strict=True):
        for _ in range(per_image):
            canvases.append(render_canvas(counts, CANVAS, rng, light_background=bool(rng.random() < 0.5)))
            targets.append(label)
    return torch.from_numpy(np.stack(canvases))[:, None], torch.tensor(np.array(targets), dtype=torch.long)


def accuracy(
    model: DigitsClassifier,
    canvases: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    counts: torch.Tensor | None = None,
) -> float:
    model.eval()
    with torch.no_grad():
        if counts is not None:
            preds = model.net(counts).argmax(1)
        elif canvases is not None:
            preds = torch.cat([model(c).argmax(1) for c in canvases.split(256)])
        else:
            raise ValueError("accuracy() needs canvases or counts")
    return float((preds == targets).float().mean())


def train(spec: ModelSpec, target: Path, progress: bool = False, epochs: int = 30, seed: int = 0) -> dict:
    """Train on the dataset's own 8x8 counts plus canvases made from the same training
    digits and passed through the model's preprocessing, so the classifier also knows what
    the preprocessing makes of real drawings. Saves weights and metrics to ``target``."""
    from tqdm import tqdm

    from .weights import atomic_write

    started = time.monotonic()
    torch.manual_seed(seed)
    x_train, x_test, y_train, y_test = load_split(seed)
    model = DigitsClassifier()
    canvases, canvas_targets = synthetic_canvases(x_train, y_train, per_image=2, seed=seed)
    with torch.no_grad():
        drawn_counts = torch.cat([model.preprocess(c) for c in canvases.split(256)])
    counts = torch.cat([torch.from_numpy(x_train)[:, None], drawn_counts])
    targets = torch.cat([torch.from_numpy(y_train).long(), canvas_targets])

    optimiser = torch.optim.Adam(model.net.parameters(), lr=2e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, epochs)
    generator = torch.Generator().manual_seed(seed)
    bar = tqdm(range(epochs), desc=f"train {spec.name}", unit="epoch", disable=not progress)
    for _ in bar:
        model.net.train()
        order = torch.randperm(len(counts), generator=generator)
        total = 0.0
        for batch in order.split(64):
            # Small jitter of the counts: the pen and the scanner are never exactly alike.
            noisy = (counts[batch] + torch.randn(counts[batch].shape, generator=generator) * 0.5).clamp(0, 16)
            loss = F.cross_entropy(model.net(noisy), targets[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
        scheduler.step()
        bar.set_postfix(loss=f"{total / len(counts):.4f}")

    test_canvases, test_canvas_targets = synthetic_canvases(x_test, y_test, per_image=1, seed=seed + 1)
    metrics = {
        "heldout_accuracy": accuracy(
            model, counts=torch.from_numpy(x_test)[:, None], targets=torch.from_numpy(y_test).long()
        ),
        "heldout_canvas_accuracy": accuracy(model, test_canvases, test_canvas_targets),
        "heldout_size": int(len(y_test)),
        "train_seconds": round(time.monotonic() - started, 1),
        "epochs": epochs,
    }
    atomic_write(target, lambda tmp: torch.save({"state_dict": model.state_dict(), "metrics": metrics}, tmp))
    return metrics


def drawn_star(rng: np.random.Generator) -> np.ndarray:
    """A five-pointed star in one stroke, upright, at a random place, size and width (CANVAS x
    CANVAS uint8, ink 255 on 0): a shape no digit looks like, the new label the tests and the
    training benchmark teach ``digits``."""
    import math

    from PIL import Image, ImageDraw

    image = Image.new("L", (CANVAS, CANVAS), 0)
    middle = CANVAS / 2
    cx, cy = middle + rng.uniform(-0.1, 0.1) * CANVAS, middle + rng.uniform(-0.1, 0.1) * CANVAS
    r, turn = rng.uniform(0.23, 0.39) * CANVAS, -math.pi / 2 + rng.uniform(-0.25, 0.25)
    points = [
        (cx + r * math.cos(turn + i * 4 * math.pi / 5), cy + r * math.sin(turn + i * 4 * math.pi / 5)) for i in range(6)
    ]
    ImageDraw.Draw(image).line(points, fill=255, width=int(rng.uniform(5, 10)))
    return np.asarray(image, np.uint8)


def drawn_examples(n: int, seed: int = 0) -> np.ndarray:
    """Held-out digits drawn onto canvases as the app's sketchpad draws them, both polarities
    (N x 1 x CANVAS x CANVAS in [0, 1]): the spec's examples, which the ONNX parity check runs."""
    rng = np.random.default_rng(seed)
    _, x_test, _, _ = load_split(seed)
    drawn = [render_canvas(counts, CANVAS, rng, light_background=bool(i % 2)) for i, counts in enumerate(x_test[:n])]
    return np.stack(drawn)[:, None].astype(np.float32)


# How the page's Teach loop fine-tunes it: the classifier head on the preprocessed counts, with
# dataset digits rehearsed beside the user's drawings (see training/finetune.py).
TRAIN = {"head": "net.head.4", "layers": ["net.head"], "learning_rate": 0.002, "epochs": 15, "batch_size": 16,
         "holdout": 0.2, "rehearsal": "rehearsal.npz"}  # fmt: skip
REHEARSAL_PER_LABEL = 50


def trainable_folder(spec: ModelSpec, root: Path) -> Path:
    """``digits`` as a trainable model folder under ``root`` (its trained weights as a state_dict,
    the module by import path, TRAIN, and drawn dataset digits to rehearse), made once per weights.
    ``root`` is writable where the cache may not be (the images' cache is read-only)."""
    import tempfile

    from .folder import write_folder
    from .weights import load_state_dict, resolve_weights, sha256_of

    weights = resolve_weights(spec, train_if_missing=True)
    assert weights is not None  # a built-in that trains into the cache
    out = Path(root) / f"{spec.name}-{spec.version}-{sha256_of(weights)[:12]}"
    if out.is_dir():
        return out
    x_train, _, y_train, _ = load_split(0)
    picked = np.concatenate([np.flatnonzero(y_train == d)[:REHEARSAL_PER_LABEL] for d in range(10)])
    canvases, targets = synthetic_canvases(x_train[picked], y_train[picked], per_image=1, seed=7)
    Path(root).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        state = Path(tmp) / "model.pth"
        torch.save(load_state_dict(weights), state)
        rehearsal = Path(tmp) / str(TRAIN["rehearsal"])
        with rehearsal.open("wb") as f:
            x = (canvases * 255).round().to(torch.uint8).numpy()
            np.savez_compressed(f, x=x, y=np.array([LABELS[t] for t in targets.tolist()]))
        staged = Path(tmp) / "folder"
        write_folder(
            state,
            staged,
            name=spec.name,
            labels=",".join(LABELS),
            input_text=f"image:{CANVAS}x{CANVAS}x1",
            output="probabilities",
            module=f"{__name__}:DigitsClassifier",
            description=spec.description,
            train=TRAIN,
            extra_files=[rehearsal],
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            staged.rename(out)
        except OSError:
            if not out.is_dir():  # not another process's same folder
                raise
    return out


def spec() -> ModelSpec:
    return ModelSpec(
        name="digits",
        task="classification",
        build=DigitsClassifier,
        input=ImageInput(size=CANVAS, channels=1),
        weights=Weights(train=train),
        examples=drawn_examples,
        labels=LABELS,
        version="3",
        trainable=trainable_folder,
        description="Handwritten digit classifier (CNN on scikit-learn's optdigits, 8x8 block counts)",
    )
