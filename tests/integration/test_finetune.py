"""Fine-tuning a user's model folder on examples into a new model version (training/finetune.py).

The user's model is made here (not a built-in): a small CNN saved as a state_dict with its module
class, taught horizontal and vertical bars, with a `train:` section in its manifest. The examples
add a label it does not know (a cross). The new version must be a model folder that the serving
path loads, that knows the new label (>= 90% on fresh drawings of it) and still the old ones
(>= 95%), and that records where it came from. Cancel, a killed training resumed from its
checkpoint, and every refusal are checked too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from support.bars_model import NEW, OLD, TRAIN, drawings, make_trainable_folder, png, write_user_package
from support.shapes import stars

from marcelle_torch.errors import InvalidInput, InvalidSpec
from marcelle_torch.models.folder import MANIFEST, load_folder
from marcelle_torch.models.inputs import postprocess
from marcelle_torch.training import TrainingCanceled, examples_digest, fine_tune


@pytest.fixture(scope="module")
def user_package(tmp_path_factory) -> Path:
    """The user's module class, importable as bars_net:BarsNet (here and in a CLI subprocess)."""
    root = write_user_package(tmp_path_factory.mktemp("userpkg"))
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))


@pytest.fixture(scope="module")
def base_folder(user_package, tmp_path_factory) -> Path:
    return make_trainable_folder(tmp_path_factory.mktemp("base"), user_package)


def accuracy(spec, tests: list[tuple[torch.Tensor, str]]) -> dict[str, float]:
    """Per label, the share of ``tests`` the version answers right, run as Serve runs it."""
    from marcelle_torch.models import load_model

    model = load_model(spec)
    with torch.no_grad():
        answers = postprocess(spec, model(torch.stack([x for x, _ in tests])))
    right: dict[str, list[bool]] = {}
    for answer, (_, label) in zip(answers, tests, strict=True):
        right.setdefault(label, []).append(answer["label"] == label)
    return {label: sum(hits) / len(hits) for label, hits in right.items()}


def test_a_new_label_is_learnt_into_a_new_version_that_every_path_loads(base_folder, tmp_path):
    examples = drawings([*OLD, NEW], 10, seed=2)
    events: list[dict] = []
    version = fine_tune(base_folder, examples, store=tmp_path / "store", on_status=events.append)

    base = load_folder(base_folder)
    assert version.folder == tmp_path / "store" / "bars" / version.version
    manifest = yaml.safe_load((version.folder / MANIFEST).read_text())
    assert manifest["labels"] == [*OLD, NEW]
    assert manifest["parent"] == base.version and version.parent == base.version
    assert manifest["dataset"] == examples_digest(examples)
    assert manifest["version"] == version.version == manifest["sha256"][:12]
    # The version keeps what it learnt from, to rehearse in the next training.
    assert manifest["train"] == {**TRAIN, "rehearsal": "rehearsal.npz"} and manifest["module"] == "bars_net:BarsNet"
    with np.load(version.folder / "rehearsal.npz") as kept:
        assert sorted(kept["y"].tolist()) == sorted(y for _, y in examples)
    assert manifest["metrics"]["held_out"] == 6 and manifest["metrics"]["epochs"] == TRAIN["epochs"]

    spec = load_folder(version.folder)
    assert spec.labels == (*OLD, NEW) and spec.version == version.version
    scores = accuracy(spec, drawings([*OLD, NEW], 20, seed=3))  # drawings it never saw
    assert scores[NEW] >= 0.9, scores
    assert scores["horizontal"] >= 0.95 and scores["vertical"] >= 0.95, scores

    statuses = [e["status"] for e in events]
    assert statuses[0] == "start" and statuses[-1] == "success"
    assert statuses.count("epoch") == TRAIN["epochs"]
    batches = [e for e in events if e["status"] == "batch"]
    assert len(batches) == TRAIN["epochs"] * 3  # 24 kept for training, in batches of 8
    assert events[0]["labels"] == [*OLD, NEW] and not events[0]["resumed"]

    # The same weights are the same version: a second identical training writes nothing new.
    again = fine_tune(base_folder, examples, store=tmp_path / "store")
    assert again.version == version.version
    assert [p.name for p in (tmp_path / "store" / "bars").iterdir()] == [version.version]


def test_cancel_between_batches_writes_no_version(base_folder, tmp_path):
    batches = []

    def stop() -> bool:
        return len(batches) >= 4

    with pytest.raises(TrainingCanceled, match="canceled in epoch 2"):
        fine_tune(
            base_folder,
            drawings([*OLD, NEW], 10, seed=2),
            store=tmp_path / "store",
            on_status=lambda e: e["status"] == "batch" and batches.append(e),
            should_stop=stop,
        )
    assert len(batches) == 4
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob(MANIFEST))


KILLED_RUN = """
import os, signal
from marcelle_torch.models.folder import load_folder
from marcelle_torch.training import examples_from_dir, fine_tune

def status(event):
    # Killed in the middle of epoch 3, as a worker's machine goes away: nothing runs after this.
    if event["status"] == "batch" and event["epoch"] == 3 and event["batch"] == 2:
        os.kill(os.getpid(), signal.SIGKILL)

examples = examples_from_dir({examples!r}, load_folder({folder!r}))  # what the CLI trains on
fine_tune({folder!r}, examples, store={store!r}, on_status=status, checkpoint={checkpoint!r})
"""


def test_a_killed_training_resumes_from_its_checkpoint_and_finishes_once(base_folder, user_package, tmp_path):
    """A training killed (SIGKILL) in its third epoch, run again with the CLI: it resumes after the
    last saved epoch and writes the very version an uninterrupted training writes."""
    examples_dir = tmp_path / "examples"
    for i, (x, label) in enumerate(drawings([*OLD, NEW], 10, seed=2)):
        (examples_dir / label).mkdir(parents=True, exist_ok=True)
        (examples_dir / label / f"{i}.png").write_bytes(png(x))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(user_package), os.environ.get("PYTHONPATH", "")])}
    checkpoint = tmp_path / "bars.ckpt"
    store = tmp_path / "store"

    script = KILLED_RUN.format(
        examples=str(examples_dir), folder=str(base_folder), store=str(store), checkpoint=str(checkpoint)
    )
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert checkpoint.is_file() and not store.exists()

    cli = [sys.executable, "-m", "marcelle_torch.cli", "model", "finetune", str(base_folder), str(examples_dir)]
    resumed = subprocess.run(
        [*cli, "--store", str(store), "--checkpoint", str(checkpoint)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed after epoch 2" in resumed.stdout, resumed.stdout
    epochs = [line.split()[1] for line in resumed.stdout.splitlines() if line.startswith("epoch ")]
    assert epochs == [f"{n}/{TRAIN['epochs']}:" for n in range(3, TRAIN["epochs"] + 1)], resumed.stdout
    assert not checkpoint.exists(), "a finished training leaves no checkpoint to resume"

    whole = subprocess.run([*cli, "--store", str(tmp_path / "whole")], capture_output=True, text=True, env=env)
    assert whole.returncode == 0, whole.stderr
    versions = [sorted(p.name for p in (root / "bars").iterdir()) for root in (store, tmp_path / "whole")]
    assert versions[0] == versions[1] and len(versions[0]) == 1, versions


def test_what_cannot_be_trained_is_refused_with_its_reason(base_folder, user_package, tmp_path):
    import shutil

    examples = drawings([*OLD], 4, seed=2)
    frozen = tmp_path / "frozen"
    shutil.copytree(base_folder, frozen)
    manifest = yaml.safe_load((frozen / MANIFEST).read_text())
    del manifest["train"]
    (frozen / MANIFEST).write_text(yaml.safe_dump(manifest))
    with pytest.raises(InvalidSpec, match="not trainable: its marcelle-model.yaml has no `train:` section"):
        fine_tune(frozen, examples, store=tmp_path / "store")

    for train, message in (
        ({"head": "features.0"}, "train.head 'features.0' is a Conv2d, not an nn.Linear"),
        ({"head": "fc", "epochs": 0}, "train.epochs must be a whole number from 1 to 200"),
        ({"head": "fc", "optimiser": "adam"}, "train: unknown key 'optimiser'"),
        ({"head": "nope"}, "train.head 'nope' is not a submodule"),
    ):
        manifest["train"] = train
        (frozen / MANIFEST).write_text(yaml.safe_dump(manifest))
        with pytest.raises(InvalidSpec, match=message):
            fine_tune(frozen, examples, store=tmp_path / "store")

    with pytest.raises(InvalidInput, match=r"example 0: shape \[1, 8, 8\], the model takes \[1, 16, 16\]"):
        fine_tune(base_folder, [(torch.zeros(1, 8, 8), "horizontal")], store=tmp_path / "store")
    with pytest.raises(InvalidInput, match="no examples"):
        fine_tune(base_folder, [], store=tmp_path / "store")
    assert not (tmp_path / "store").exists()

    cli = subprocess.run(
        [sys.executable, "-m", "marcelle_torch.cli", "model", "finetune", str(base_folder), str(tmp_path / "none")]
        + ["--store", str(tmp_path / "store")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(user_package)},
    )
    assert cli.returncode == 2 and "Traceback" not in cli.stderr
    assert cli.stderr.strip().splitlines()[-1].endswith("no such folder (one subfolder of images per label)")


def test_model_init_with_a_train_head_makes_a_folder_that_model_finetune_teaches(base_folder, user_package, tmp_path):
    """The user's way, all on the command line: init the state_dict as a trainable folder, then
    teach it a folder of images with a new label."""
    env = {**os.environ, "PYTHONPATH": str(user_package)}
    cli = [sys.executable, "-m", "marcelle_torch.cli", "model"]
    weights = base_folder / yaml.safe_load((base_folder / MANIFEST).read_text())["weights"]
    init = [*cli, "init", str(weights), "--name", "bars", "--labels", ",".join(OLD), "--input", "image:16x16x1"]
    init += ["--output", "logits"]
    refused = subprocess.run(
        [*init, "--train-head", "fc", "--out", str(tmp_path / "no")], capture_output=True, text=True, env=env
    )
    assert refused.returncode == 2 and "--train-head needs --module" in refused.stderr
    assert not (tmp_path / "no").exists()

    made = subprocess.run(
        [*init, "--module", "bars_net:BarsNet", "--train-head", "fc", "--out", str(tmp_path / "bars")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert made.returncode == 0, made.stderr
    assert yaml.safe_load((tmp_path / "bars" / MANIFEST).read_text())["train"] == {"head": "fc"}

    examples_dir = tmp_path / "examples"
    for i, (x, label) in enumerate(drawings([*OLD, NEW], 5, seed=4)):
        (examples_dir / label).mkdir(parents=True, exist_ok=True)
        (examples_dir / label / f"{i}.png").write_bytes(png(x))
    taught = subprocess.run(
        [*cli, "finetune", str(tmp_path / "bars"), str(examples_dir), "--store", str(tmp_path / "store")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert taught.returncode == 0, taught.stderr
    assert "new labels: cross" in taught.stdout and "epoch 10/10:" in taught.stdout  # the default epochs
    (version,) = (tmp_path / "store" / "bars").iterdir()
    assert load_folder(version).labels == (*OLD, NEW)


def test_the_built_in_digits_learns_a_star_from_ten_drawings_and_keeps_its_digits(tmp_path):
    """The Teach page's loop in-process: ten drawings of a new label, rehearsed with the dataset's
    own digits (train.rehearsal), so the digits are not forgotten."""
    from marcelle_torch.models import get_spec, load_model
    from marcelle_torch.models.digits import synthetic_canvases
    from marcelle_torch.models.optdigits import load_split

    digits = get_spec("digits")
    version = fine_tune(
        digits.trainable(digits, tmp_path / "base"), [(x, "star") for x in stars(10, seed=0)], store=tmp_path
    )
    assert version.spec.labels == (*digits.labels, "star")

    _, x_test, _, y_test = load_split(0)
    canvases, targets = synthetic_canvases(x_test[:300], y_test[:300], per_image=1, seed=5)
    held_out = torch.stack(stars(40, seed=100))
    base, taught = load_model(digits), load_model(version.spec)
    with torch.no_grad():
        star_score = float((taught(held_out).argmax(1) == 10).float().mean())
        before = float((base(canvases).argmax(1) == targets).float().mean())
        after = float((taught(canvases).argmax(1) == targets).float().mean())
    assert star_score >= 0.9, star_score
    assert after >= before - 0.03, (before, after)  # these synthetic canvases are harder than drawings
