"""A training run: a run of a trainable model folder with ``params.train``, done by the worker.

The run's ``input`` is Marcelle's dataset shape, ``{"examples": [{"x": <image>, "y": <label>}, ...]}``
(an image as a classification run takes one: a data URL, ``{"b64": ...}`` or a nested list), or
``{"dataset": "<name>"}``: the instances of that Marcelle dataset in the backend (the run owner's
only, when the run has a ``userId``: training_data.py), and
``params.train`` is ``{}`` or ``{"epochs": n}``. The worker fine-tunes the model (training/finetune.py)
and streams, as the run's ``partial``, Marcelle's ``TrainingStatus`` (``status`` 'start' | 'epoch',
``epoch``, ``epochs``, ``data``: loss and accuracy, and on the held-out examples lossVal and
accuracyVal), after every batch. The result is the new version: ``{model, version, parent, labels,
metrics}`` (and ``dataset``, the dataset's name, when it learned from one); it lies in the worker's
model store (``--store``), ``<store>/<model>/<version>/``.

Each epoch is checkpointed in the store under the run's id, so a run taken back from a worker that
died is resumed by the next one (when the workers share the store, as the chart's PVC is shared).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InvalidInput
from ..models.spec import ModelSpec
from ..models.trainable import MAX_EPOCHS

CHECKPOINTS = ".checkpoints"


class TrainingTooLong(InvalidInput):
    pass


log = logging.getLogger("marcelle_torch.worker")


def training_params(params: dict) -> int | None:
    """The epochs asked for (None: the manifest's), from ``params.train``."""
    train = params.get("train")
    if not isinstance(train, dict):
        raise InvalidInput('params.train must be an object: {} or {"epochs": n}')
    unknown = sorted(set(train) - {"epochs"})
    if unknown:
        raise InvalidInput(f"params.train: unknown key {unknown[0]!r} (known: epochs)")
    epochs = train.get("epochs")
    whole = isinstance(epochs, int) and not isinstance(epochs, bool)
    if epochs is not None and not (whole and 1 <= epochs <= MAX_EPOCHS):
        raise InvalidInput(f"params.train.epochs must be a whole number from 1 to {MAX_EPOCHS}")
    return epochs


INPUT_SHAPES = '{"examples": [{"x": <image>, "y": <label>}, ...]} or {"dataset": <name>}'


def decode_examples(spec: ModelSpec, data: Any, where: str = "input.examples") -> list:
    """``{"examples": [{"x", "y"}, ...]}`` -> (tensor, label) pairs, decoded as a request's input is."""
    from ..models import decode_instances

    examples = data.get("examples") if isinstance(data, dict) else None
    if not isinstance(examples, list) or not examples:
        raise InvalidInput(f"a training run's input is {INPUT_SHAPES}")
    for i, example in enumerate(examples):
        if not isinstance(example, dict) or set(example) - {"x", "y", "thumbnail"} or "x" not in example:
            raise InvalidInput(f"{where}[{i}] must be {{x, y}}")
        if not isinstance(example.get("y"), (str, int)) or isinstance(example.get("y"), bool):
            raise InvalidInput(f"{where}[{i}].y must be a label (a name)")
    try:
        batch = decode_instances(spec, [example["x"] for example in examples])
    except InvalidInput as exc:
        raise InvalidInput(f"{where}: {exc.message}") from None
    return [(x, str(example["y"])) for x, example in zip(batch, examples, strict=True)]


def training_examples(
    spec: ModelSpec, run: dict, find: Callable[[str, dict], Any] | None, check: Callable[[], None]
) -> tuple[list, str | None]:
    """The run's examples as (tensor, label) pairs, and the name of the dataset they came from (None:
    the run carried them). ``find(service, query)`` reads the backend (a dataset's instances)."""
    data = run.get("input")
    if not (isinstance(data, dict) and "dataset" in data):
        return decode_examples(spec, data), None
    if set(data) != {"dataset"}:
        raise InvalidInput(f"a training run's input is {INPUT_SHAPES}, not both")
    if find is None:
        raise InvalidInput("this worker reads no dataset from the backend: send the examples in the run")
    from .training_data import read_dataset

    dataset = data["dataset"]
    instances = read_dataset(find, dataset, run.get("userId"), check)
    return decode_examples(spec, {"examples": instances}, where=f"dataset {dataset!r}"), dataset


def training_status(event: dict) -> dict:
    """A fine_tune event as Marcelle's TrainingStatus (what trainingPlot and trainingProgress show)."""
    if event["status"] == "batch":
        data = {"loss": event["loss"], "accuracy": event["accuracy"]}
        return {"status": "epoch", "epoch": event["epoch"], "epochs": event["epochs"], "batch": event["batch"],
                "batches": event["batches"], "data": data}  # fmt: skip
    if event["status"] == "epoch":
        return {"status": "epoch", "epoch": event["epoch"], "epochs": event["epochs"], "data": event["data"]}
    return {"status": "start", "epoch": event["epoch"], "epochs": event["epochs"], "labels": event["labels"]}


def run_training(
    folder: Path,
    spec: ModelSpec,
    run: dict,
    store: Path,
    report: Callable[[float, Any], None],
    check: Callable[[], None],
    find: Callable[[str, dict], Any] | None = None,
    max_seconds: float | None = None,
) -> dict:
    """Fine-tune the model folder on the run's examples; the result names the new version.
    ``report(progress, partial)`` takes the progress; ``check()`` raises to stop between batches;
    ``find(service, query)`` is a find on the backend, for a run whose input names a dataset; a
    training longer than ``max_seconds`` fails, and leaves no checkpoint behind."""
    from ..training import fine_tune

    started = time.monotonic()

    epochs = training_params(run.get("params") or {})
    examples, dataset = training_examples(spec, run, find, check)

    def on_status(event: dict) -> None:
        if event["status"] == "success":
            return  # the result says it
        if event["status"] == "start" and event["resumed"]:
            log.info("run %s: training resumed from its checkpoint after epoch %d", run["_id"], event["epoch"])
        epochs_done = event["epoch"]  # start: the epochs a resumed run has; epoch: the one just done
        if event["status"] == "batch":
            epochs_done = event["epoch"] - 1 + event["batch"] / event["batches"]
        report(min(epochs_done / event["epochs"], 0.99), training_status(event))

    def should_stop() -> bool:
        check()  # raises Stop when the run was canceled, taken back or must be released
        if max_seconds is not None and time.monotonic() - started > max_seconds:
            raise TrainingTooLong(
                f"the training ran past this worker's time limit ({max_seconds:g}s, --max-training-seconds): "
                "ask for fewer epochs, or give fewer examples"
            )
        return False

    checkpoint = store / CHECKPOINTS / f"{run['_id']}.pt"
    try:
        version = fine_tune(
            folder,
            examples,
            store=store,
            on_status=on_status,
            should_stop=should_stop,
            checkpoint=checkpoint,
            epochs=epochs,
        )
    except TrainingTooLong:
        checkpoint.unlink(missing_ok=True)  # it will not be resumed
        raise
    result = {
        "model": spec.name,
        "version": version.version,
        "parent": version.parent,
        "labels": list(version.spec.labels),
        "metrics": version.metrics,
    }
    if dataset is not None:
        result["dataset"] = dataset
    return result
