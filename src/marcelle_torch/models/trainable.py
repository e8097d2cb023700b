"""How a model folder is fine-tuned: the manifest's ``train`` section, and its classifier head.

A model folder is trainable when its weights are a state_dict with ``module:`` (a real
``nn.Module`` whose head can grow: a torch.export or TorchScript program is frozen) and its
manifest says how::

    train:
      head: fc                # the module's last nn.Linear (a dotted path: "head.4" in a Sequential);
                              #   it grows a row for each new label
      layers: [fc]            # the parameters fine-tuned (name prefixes); default: the head; [all]
      optimizer: adam         # adam | sgd
      learning_rate: 0.001
      epochs: 10
      batch_size: 16
      holdout: 0.2            # the share of each label's examples kept aside to measure accuracy
      shift: 0                # augmentation: random shifts of up to this many pixels
      rehearsal: rehearsal.npz  # examples of the labels the model knows (x: N x C x H x W uint8,
                              #   y: N label names), mixed in as many per label as the user gave,
                              #   so teaching a new label does not make it forget the others

Every key but ``head`` has the default shown (``rehearsal``: none). Limits keep a training run bounded; a value beyond
them is refused with the limit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..errors import InvalidSpec

if TYPE_CHECKING:
    import torch

MANIFEST = "marcelle-model.yaml"
OPTIMIZERS = ("adam", "sgd")
MAX_EPOCHS = 200
MAX_BATCH_SIZE = 512
MAX_SHIFT = 16
MAX_EXAMPLES = 10_000


@dataclass(frozen=True)
class TrainConfig:
    head: str
    layers: tuple[str, ...] = ()  # () is the head only; ("all",) every parameter
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    epochs: int = 10
    batch_size: int = 16
    holdout: float = 0.2
    shift: int = 0
    rehearsal: str | None = None  # a file in the folder; see the module's docstring

    def trains(self, parameter: str) -> bool:
        """Whether the parameter named ``parameter`` (of the user's module) is fine-tuned."""
        if self.layers == ("all",):
            return True
        prefixes = self.layers or (self.head,)
        return any(parameter == p or parameter.startswith(p + ".") for p in prefixes)

    def to_manifest(self) -> dict:
        out = asdict(self)
        out["layers"] = list(self.layers)
        if not self.layers:
            del out["layers"]  # the head only: the default
        if self.rehearsal is None:
            del out["rehearsal"]
        return out


def _number(raw: dict, key: str, kind: type, low: float, high: float, default: Any) -> Any:
    value = raw.get(key, default)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok or not low <= value <= high:
        what = "a whole number" if kind is int else "a number"
        raise InvalidSpec(f"{MANIFEST}: train.{key} must be {what} from {low} to {high}, got {value!r}")
    return kind(value)


def parse_train(raw: Any) -> TrainConfig:
    """The manifest's ``train`` section; every mistake is one line naming the key."""
    if not isinstance(raw, dict):
        raise InvalidSpec(f"{MANIFEST}: train must be a mapping (head, layers, optimizer, ...)")
    known = set(TrainConfig.__dataclass_fields__)
    unknown = sorted(set(map(str, raw)) - known)
    if unknown:
        raise InvalidSpec(f"{MANIFEST}: train: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    head = raw.get("head")
    if not isinstance(head, str) or not all(part.isidentifier() or part.isdigit() for part in head.split(".")):
        raise InvalidSpec(f"{MANIFEST}: train.head must name the module's last nn.Linear (e.g. fc, or head.4)")
    layers = raw.get("layers", [])
    if not (isinstance(layers, list) and all(isinstance(x, str) and x for x in layers)):
        raise InvalidSpec(f"{MANIFEST}: train.layers must be a list of parameter name prefixes, or [all]")
    optimizer = raw.get("optimizer", "adam")
    if optimizer not in OPTIMIZERS:
        raise InvalidSpec(f"{MANIFEST}: train.optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    rehearsal = raw.get("rehearsal")
    if rehearsal is not None and not (
        isinstance(rehearsal, str)
        and rehearsal.endswith(".npz")
        and "/" not in rehearsal
        and not rehearsal.startswith(".")
    ):
        raise InvalidSpec(f"{MANIFEST}: train.rehearsal must name an .npz file in the model folder, got {rehearsal!r}")
    return TrainConfig(
        head=head,
        rehearsal=rehearsal,
        layers=tuple(layers),
        optimizer=optimizer,
        learning_rate=_number(raw, "learning_rate", float, 1e-7, 10.0, 1e-3),
        epochs=_number(raw, "epochs", int, 1, MAX_EPOCHS, 10),
        batch_size=_number(raw, "batch_size", int, 1, MAX_BATCH_SIZE, 16),
        holdout=_number(raw, "holdout", float, 0.0, 0.5, 0.2),
        shift=_number(raw, "shift", int, 0, MAX_SHIFT, 0),
    )


def head_of(module: torch.nn.Module, path: str) -> torch.nn.Linear:
    """The classifier head at ``path`` (dotted, Sequential indices allowed); it must be an nn.Linear."""
    import torch

    try:
        head = module.get_submodule(path)
    except AttributeError:
        raise InvalidSpec(f"{MANIFEST}: train.head {path!r} is not a submodule of the model") from None
    if not isinstance(head, torch.nn.Linear):
        raise InvalidSpec(f"{MANIFEST}: train.head {path!r} is a {type(head).__name__}, not an nn.Linear")
    return head


def resize_head(module: torch.nn.Module, path: str, outputs: int) -> torch.nn.Linear:
    """Give the head ``outputs`` rows: the rows it has keep their weights, new rows start small
    (seeded by their count, so the same call gives the same module)."""
    import torch

    old = head_of(module, path)
    if old.out_features == outputs:
        return old
    new = torch.nn.Linear(old.in_features, outputs, bias=old.bias is not None)
    keep = min(old.out_features, outputs)
    generator = torch.Generator().manual_seed(outputs)
    with torch.no_grad():
        new.weight.copy_(torch.randn(new.weight.shape, generator=generator) * 0.01)
        new.weight[:keep] = old.weight[:keep]
        if new.bias is not None and old.bias is not None:
            new.bias.fill_(float(old.bias.mean()))
            new.bias[:keep] = old.bias[:keep]
    parent, _, name = path.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, name, new)
    return new


def fit_head_to_state(module: torch.nn.Module, path: str, state: dict) -> None:
    """A fine-tuned version has more labels than the class builds: size the head as saved."""
    weight = state.get(f"{path}.weight")
    if weight is not None and head_of(module, path).out_features != weight.shape[0]:
        resize_head(module, path, int(weight.shape[0]))
