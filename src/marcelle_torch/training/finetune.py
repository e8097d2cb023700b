"""Fine-tuning a model folder on labelled examples, into a new immutable model version.

``fine_tune(folder, examples, store=...)`` trains the parameters the manifest's ``train`` section
names (models/trainable.py) on the examples (``(image tensor in [0,1], label)`` pairs, decoded as
every path decodes a request), a share of each label's examples kept aside to measure it. A label
the model does not know yet grows the head by one row. The result is a model folder in the store,
``<store>/<name>/<version>/``, content-addressed (the version is its weights' sha256, 12 digits),
whose manifest records its parent version, the examples' digest and the held-out metrics: Serve,
the ONNX exporter and the worker load it as any other model folder.

Progress goes to ``on_status(event)`` after every batch and every epoch; ``should_stop()`` is asked
between batches (a canceled training writes no version). With ``checkpoint`` (a file), each epoch
is saved there and a later call with the same model and examples resumes after the last saved
epoch, so a training that was killed finishes once.

Rehearsal: a folder whose ``train.rehearsal`` names examples of the labels it knows mixes in up to
REHEARSAL_KEPT of each, so ten drawings of a new label teach that label without the model
forgetting the others. Each version keeps a rehearsal file of its own (the user's examples first,
then its parent's), so the next training remembers this one's.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import InvalidInput, MarcelleTorchError
from ..files import atomic_write
from ..models.folder import MANIFEST, Trainable, load_folder, load_trainable
from ..models.spec import ModelSpec
from ..models.trainable import MAX_EXAMPLES, TrainConfig, resize_head

WEIGHTS_FILE = "model.pth"
REHEARSAL_FILE = "rehearsal.npz"
REHEARSAL_KEPT = 50  # examples per label rehearsed, and kept in a version for the next training
Example = tuple[torch.Tensor, str]  # an input tensor (the model's input shape) and its label
StatusFn = Callable[[dict], None]


class TrainingCanceled(MarcelleTorchError):
    status = 409
    code = "canceled"


@dataclass(frozen=True)
class Version:
    """A model version written by ``fine_tune``."""

    folder: Path
    spec: ModelSpec
    version: str
    parent: str
    metrics: dict


def examples_digest(examples: Sequence[Example]) -> str:
    """The sha256 of the examples (tensors and labels, in order): which data a version learnt from."""
    digest = hashlib.sha256()
    for x, label in examples:
        digest.update(label.encode() + b"\0")
        digest.update(x.detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def _check_examples(examples: Sequence[Example], spec: ModelSpec) -> None:
    if not examples:
        raise InvalidInput("no examples to learn from")
    if len(examples) > MAX_EXAMPLES:
        raise InvalidInput(f"{len(examples)} examples: at most {MAX_EXAMPLES} in one training")
    shape = tuple(spec.input.shape)
    for i, (x, label) in enumerate(examples):
        if tuple(x.shape) != shape:
            raise InvalidInput(f"example {i}: shape {list(x.shape)}, the model takes {list(shape)}")
        if not isinstance(label, str) or not label.strip() or len(label) > 64:
            raise InvalidInput(f"example {i}: a label is a non-empty name of at most 64 characters")


def split(examples: Sequence[Example], labels: Sequence[str], holdout: float, seed: int = 0):
    """(train, held out) index lists: each label keeps ``holdout`` of its examples aside (at least
    one when it has two or more), the same split for the same examples."""
    generator = torch.Generator().manual_seed(seed)
    train: list[int] = []
    held: list[int] = []
    for label in labels:
        mine = [i for i, (_, y) in enumerate(examples) if y == label]
        order = [mine[j] for j in torch.randperm(len(mine), generator=generator).tolist()]
        keep = round(len(order) * holdout)
        if holdout > 0 and len(order) >= 2:
            keep = max(keep, 1)
        held += order[:keep]
        train += order[keep:]
    return sorted(train), sorted(held)


def _shifted(batch: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each image moved by up to ``shift`` pixels (its edges repeated into the gap)."""
    if shift == 0:
        return batch
    padded = F.pad(batch, (shift, shift, shift, shift), mode="replicate")
    h, w = batch.shape[-2:]
    out = torch.empty_like(batch)
    for i in range(batch.shape[0]):
        dy, dx = torch.randint(0, 2 * shift + 1, (2,), generator=generator).tolist()
        out[i] = padded[i, :, dy : dy + h, dx : dx + w]
    return out


def _evaluate(model: torch.nn.Module, xs: torch.Tensor, ys: torch.Tensor) -> tuple[float, float]:
    if len(xs) == 0:
        return float("nan"), float("nan")
    with torch.no_grad():
        probs = model(xs)
        loss = F.nll_loss(torch.log(probs.clamp_min(1e-8)), ys).item()
        accuracy = (probs.argmax(dim=1) == ys).float().mean().item()
    return loss, accuracy


def _optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.learning_rate, momentum=0.9)
    return torch.optim.Adam(params, lr=config.learning_rate)


def fine_tune(
    folder: Path,
    examples: Sequence[Example],
    *,
    store: Path,
    on_status: StatusFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint: Path | None = None,
    epochs: int | None = None,
    device: str | None = None,
) -> Version:
    """Fine-tune the model folder at ``folder`` on ``examples``; write and return the new version.
    ``device``: where to train (default: the GPU when torch sees one, else the CPU)."""
    model = load_trainable(Path(folder))
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    config = model.config if epochs is None else replace(model.config, epochs=epochs)
    spec = model.spec
    _check_examples(examples, spec)
    report = on_status or (lambda event: None)
    stop = should_stop or (lambda: False)
    new_labels = sorted({y for _, y in examples} - set(spec.labels))
    labels = [*spec.labels, *new_labels]
    inner = model.inner  # the user's own module, inside the normalisation and softmax
    resize_head(inner, config.head, len(labels))
    for name, param in inner.named_parameters():
        param.requires_grad_(config.trains(name))
    trained = [p for p in inner.parameters() if p.requires_grad]
    if not trained:
        raise InvalidInput(f"train.layers {list(config.layers)} names none of the model's parameters")
    # Eval mode while training the chosen layers: frozen BatchNorm statistics, no dropout noise on
    # a few dozen examples, and the same numbers as the served model for the same weights.
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    wrapped = model.module.to(device).eval()
    optimizer = _optimizer(config, trained)

    digest = examples_digest(examples)
    rehearsed = rehearsal(model, labels, REHEARSAL_KEPT)
    user_examples = list(examples)
    examples = [*user_examples, *rehearsed]
    index = {label: i for i, label in enumerate(labels)}
    xs = torch.stack([x.to(torch.float32) for x, _ in examples])
    ys = torch.tensor([index[y] for _, y in examples])
    train_idx, held_idx = split(examples, labels, config.holdout)
    xs, ys = xs.to(device), ys.to(device)
    train_x, train_y = xs[train_idx], ys[train_idx]
    held_x, held_y = xs[held_idx], ys[held_idx]
    batches = max(1, -(-len(train_idx) // config.batch_size))

    history: list[dict] = []
    first_epoch = 1
    generator = torch.Generator().manual_seed(0)
    resume_key = {"parent": spec.version, "dataset": digest, "labels": labels, "config": config.to_manifest()}
    if checkpoint is not None and checkpoint.is_file():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if saved.get("key") == resume_key:
            inner.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            generator.set_state(saved["generator"])
            history = saved["history"]
            first_epoch = saved["epoch"] + 1

    report({"status": "start", "epoch": first_epoch - 1, "epochs": config.epochs, "labels": labels,
            "examples": len(train_idx), "held_out": len(held_idx), "rehearsed": len(rehearsed),
            "resumed": first_epoch > 1})  # fmt: skip
    for epoch in range(first_epoch, config.epochs + 1):
        order = torch.randperm(len(train_idx), generator=generator)
        seen, loss_sum, correct = 0, 0.0, 0
        for batch in range(batches):
            if stop():
                raise TrainingCanceled(f"training of {spec.name} canceled in epoch {epoch}")
            pick = order[batch * config.batch_size : (batch + 1) * config.batch_size]
            x, y = _shifted(train_x[pick], config.shift, generator), train_y[pick]
            probs = wrapped(x)
            loss = F.nll_loss(torch.log(probs.clamp_min(1e-8)), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(pick)
            loss_sum += loss.item() * len(pick)
            correct += int((probs.argmax(dim=1) == y).sum())
            report({"status": "batch", "epoch": epoch, "epochs": config.epochs, "batch": batch + 1,
                    "batches": batches, "loss": loss_sum / seen, "accuracy": correct / seen})  # fmt: skip
        held_loss, held_accuracy = _evaluate(wrapped, held_x, held_y)
        logs = {"loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1),
                "lossVal": held_loss, "accuracyVal": held_accuracy}  # fmt: skip
        history.append(logs)
        if checkpoint is not None:
            state = {
                "key": resume_key,
                "epoch": epoch,
                "model": inner.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(),
                "history": history,
            }
            atomic_write(checkpoint, partial(torch.save, state))
        report({"status": "epoch", "epoch": epoch, "epochs": config.epochs, "data": logs})

    metrics = _metrics(wrapped, held_x, held_y, labels, history)
    kept = [*user_examples, *rehearsal(model, labels, REHEARSAL_KEPT)]
    version = write_version(model, labels, metrics, digest, Path(store), kept)
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)  # done: a rerun trains afresh, it does not resume
    report({"status": "success", "epoch": config.epochs, "epochs": config.epochs, "version": version.version,
            "data": history[-1]})  # fmt: skip
    return version


def _metrics(model, held_x, held_y, labels: Sequence[str], history: list[dict]) -> dict:
    """The version's held-out scores: the last epoch's (the weights have not changed since), and
    its accuracy per label."""
    last = history[-1]
    per_label = {}
    if len(held_x):
        with torch.no_grad():
            predicted = model(held_x).argmax(dim=1)
        for i, label in enumerate(labels):
            mine = held_y == i
            if mine.any():
                per_label[label] = round(float((predicted[mine] == i).float().mean()), 4)
    return {
        "held_out": int(len(held_x)),
        "accuracy": None if len(held_x) == 0 else round(last["accuracyVal"], 4),
        "loss": None if len(held_x) == 0 else round(last["lossVal"], 4),
        "train_accuracy": round(last["accuracy"], 4),
        "per_label": per_label,
        "epochs": len(history),
    }


def rehearsal(model: Trainable, labels: Sequence[str], per_label: int, seed: int = 0) -> list[Example]:
    """Up to ``per_label`` examples of each label from the folder's rehearsal file (none without
    one), the same ones for the same call."""
    import numpy as np

    name = model.config.rehearsal
    if name is None or per_label <= 0:
        return []
    with np.load(model.folder / name, allow_pickle=False) as data:
        xs, ys = data["x"], data["y"]
    shape = tuple(model.spec.input.shape)
    if xs.dtype != np.uint8 or tuple(xs.shape[1:]) != shape or len(ys) != len(xs):
        raise InvalidInput(
            f"model {model.spec.name}: {name} must hold x (N x {' x '.join(map(str, shape))} uint8) and y (N labels)"
        )
    generator = torch.Generator().manual_seed(seed)
    out: list[Example] = []
    for label in labels:
        mine = [i for i, y in enumerate(ys) if str(y) == label]
        order = [mine[j] for j in torch.randperm(len(mine), generator=generator).tolist()][:per_label]
        out += [(torch.from_numpy(xs[i].astype(np.float32) / 255.0), label) for i in order]
    return out


def _write_rehearsal(path: Path, examples: Sequence[Example], labels: Sequence[str]) -> None:
    """The version's rehearsal file: up to REHEARSAL_KEPT examples per label, in order given."""
    import numpy as np

    kept: list[Example] = []
    for label in labels:
        kept += [e for e in examples if e[1] == label][:REHEARSAL_KEPT]
    xs = np.stack([(x.clamp(0, 1) * 255).round().to(torch.uint8).numpy() for x, _ in kept])
    with path.open("wb") as f:
        np.savez_compressed(f, x=xs, y=np.array([y for _, y in kept]))


def write_version(
    model: Trainable,
    labels: Sequence[str],
    metrics: dict,
    dataset: str,
    store: Path,
    rehearse: Sequence[Example] = (),
) -> Version:
    """The fine-tuned module as a model folder ``<store>/<name>/<version>/``: written beside and
    renamed once it loads, so the store holds whole versions only; the same weights are one version."""
    import yaml

    buffer = io.BytesIO()
    torch.save({key: value.cpu() for key, value in model.inner.state_dict().items()}, buffer)
    weights = buffer.getvalue()
    sha256 = hashlib.sha256(weights).hexdigest()
    version = sha256[:12]
    parent = model.spec.version
    manifest = {
        key: value
        for key, value in model.manifest.items()
        if key not in ("weights", "sha256", "labels", "version", "parent", "dataset", "metrics")
    }
    manifest.update(
        weights=WEIGHTS_FILE,
        sha256=sha256,
        labels=list(labels),
        version=version,
        parent=parent,
        dataset=dataset,
        metrics=metrics,
    )
    if rehearse:
        manifest["train"] = {**manifest["train"], "rehearsal": REHEARSAL_FILE}
    target = store / model.spec.name / version
    if (target / MANIFEST).is_file():
        return Version(target, load_folder(target), version, parent, metrics)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{version}.", suffix=".part"))
    try:
        (tmp / WEIGHTS_FILE).write_bytes(weights)
        if rehearse:
            _write_rehearsal(tmp / REHEARSAL_FILE, rehearse, labels)
        (tmp / MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=False))
        load_folder(tmp)  # the version loads as every path will load it, or it is not kept
        tmp.chmod(0o755)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / MANIFEST).is_file():  # not another writer of the same version
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Version(target, load_folder(target), version, parent, metrics)


def examples_from_dir(root: Path, spec: ModelSpec) -> list[Example]:
    """Examples from ``root/<label>/<image>`` (PNG or JPEG), decoded as a request's image is."""
    import base64

    from ..models.inputs import decode_instances

    root = Path(root)
    if not root.is_dir():
        raise InvalidInput(f"examples {root}: no such folder (one subfolder of images per label)")
    examples: list[Example] = []
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for image in sorted(p for p in label_dir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")):
            try:
                (x,) = decode_instances(spec, [{"b64": base64.b64encode(image.read_bytes()).decode()}])
            except InvalidInput as exc:
                raise InvalidInput(f"{image}: {exc}") from None
            examples.append((x, label_dir.name))
    if not examples:
        raise InvalidInput(f"examples {root}: no images (one subfolder of .png/.jpg images per label)")
    return examples
