"""A model folder: a user's model with no Python to write.

A folder (or a ``.tar.gz`` / ``.zip`` of one, or an http(s) URL of such an archive written
``URL#sha256=<hex>``) holds ``marcelle-model.yaml`` beside the weights::

    name: shapes                    # [a-z0-9-], max 63
    task: classification
    weights: shapes.pt2             # torch.export archive (.pt2), TorchScript (.pt / .ts), or a
    module: pkg.mod:Class           #   state_dict (.pth / .bin) with the module class to build
    sha256: <hex>                   # optional: the weights file's, checked when given
    labels: [circle, square, triangle]   # or a text file, one label per line
    input:
      kind: image                   # image | tensor
      size: [64, 64]                # height, width (square: the app's inputs are square)
      channels: 3                   # 1 or 3
      mean: [0.485, 0.456, 0.406]   # optional: (x - mean) / std on [0,1] pixels
      std: [0.229, 0.224, 0.225]
    output: logits                  # logits (softmax applied) | probabilities (checked at load)
    version: "2"                    # optional: defaults to the weights' sha256 (12 digits)
    description: ...                # optional
    train: {head: fc, ...}          # optional: how it is fine-tuned (models/trainable.py)
    parent: <version>               # written by fine-tuning: the version it was made from,
    dataset: <sha256>               #   the examples it learnt from,
    metrics: {accuracy: ...}        #   and what it scored on those kept aside

Normalisation and softmax are wrapped around the user's module here, in one place
(``FolderModel``), so Serve, the worker and the exported ONNX graph are all fed the same
``[0,1]`` tensor and give the same numbers. Every mistake is one line naming the key.
"""

from __future__ import annotations

import logging
import re
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidSpec, first_line
from .spec import NAME_RE, SHA256_RE, ImageInput, ModelSpec, TensorInput
from .trainable import TrainConfig, fit_head_to_state, parse_train

if TYPE_CHECKING:  # torch is imported when a folder is loaded, not when the CLI starts
    import torch

MANIFEST = "marcelle-model.yaml"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")
REQUIRED = ("name", "task", "weights", "labels", "input", "output")
OPTIONAL = ("module", "sha256", "version", "description", "train", "parent", "dataset", "metrics")
INPUT_KEYS = {"image": ("kind", "size", "channels", "mean", "std"), "tensor": ("kind", "shape")}
OUTPUTS = ("logits", "probabilities")
EXPORT_SUFFIXES = (".pt2",)
TORCHSCRIPT_SUFFIXES = (".pt", ".ts")
URL_RE = re.compile(r"^(https?://[^#\s]+)#sha256=([0-9a-f]{64})$")
# How far the rows of a model declared `probabilities` may be from summing to 1.
PROBABILITY_TOLERANCE = 1e-3


def is_folder_ref(ref: str) -> bool:
    """Whether ``ref`` names a model folder, an archive of one or a URL (not a built-in name
    or a ``package.module:factory`` import path)."""
    return ref.startswith(("http://", "https://")) or "/" in ref or ref.endswith(ARCHIVE_SUFFIXES) or Path(ref).is_dir()


def spec_from_ref(ref: str) -> ModelSpec:
    """The ModelSpec of a folder, archive or URL reference."""
    return load_folder(resolve_folder(ref))


# ----------------------------------------------------------------------------- finding the folder


def resolve_folder(ref: str) -> Path:
    """The local folder ``ref`` names: the folder itself, or an archive (downloaded first, for a
    URL) unpacked once into the cache under its sha256."""
    if ref.startswith(("http://", "https://")):
        match = URL_RE.match(ref)
        if not match:
            raise InvalidSpec(f"model URL {ref!r}: write it URL#sha256=<64 hex digits> (the archive's sha256)")
        url, sha256 = match.groups()
        return _unpacked(_downloaded(url, sha256), sha256)
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    if path.is_file() and ref.endswith(ARCHIVE_SUFFIXES):
        return _unpacked(path)
    raise InvalidSpec(f"model {ref!r}: no such folder or .tar.gz/.zip archive")


def _downloaded(url: str, sha256: str) -> Path:
    from .weights import cache_dir, download

    suffix = next((s for s in ARCHIVE_SUFFIXES if url.split("?")[0].endswith(s)), None)
    if suffix is None:
        raise InvalidSpec(f"model URL {url!r}: expected a {', '.join(ARCHIVE_SUFFIXES)} archive")
    target = cache_dir() / "archives" / f"{sha256}{suffix}"
    if not target.is_file():
        download(url, sha256, target)  # written in place only once its sha256 is checked
    return target


def _unpacked(archive: Path, sha256: str | None = None) -> Path:
    """The archive unpacked under the cache (by its sha256, hashed here unless a download has
    just checked it); a folder inside it is the model's."""
    from .weights import cache_dir, sha256_of

    target = cache_dir() / "folders" / (sha256 or sha256_of(archive))
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".unpack-"))
        try:
            _extract(archive, tmp)
            tmp.rename(target)
        except OSError:
            # rename(2) onto a directory another process unpacked meanwhile: EEXIST or ENOTEMPTY.
            if not target.is_dir():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if (target / MANIFEST).is_file():
        return target
    inner = [p for p in target.iterdir() if p.is_dir() and (p / MANIFEST).is_file()]
    if len(inner) != 1:
        raise InvalidSpec(f"archive {archive.name}: no {MANIFEST} at its top or in one folder at its top")
    return inner[0]


def _extract(archive: Path, into: Path) -> None:
    """Unpacks ``archive``, refusing members that would land outside ``into`` or links."""
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for name in zf.namelist():
                    _inside(into, name, archive)
                zf.extractall(into)
        else:
            with tarfile.open(archive, "r:gz") as tf:
                for member in tf.getmembers():
                    _inside(into, member.name, archive)
                    if not (member.isfile() or member.isdir()):
                        raise InvalidSpec(f"archive {archive.name}: {member.name} is not a plain file")
                tf.extractall(into, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise InvalidSpec(f"archive {archive.name} cannot be unpacked: {exc}") from None


def _inside(root: Path, name: str, archive: Path) -> None:
    if not (root / name).resolve().is_relative_to(root.resolve()):
        raise InvalidSpec(f"archive {archive.name}: {name} would be written outside the folder")


# ----------------------------------------------------------------------------- the manifest


def read_manifest(folder: Path) -> dict:
    import yaml

    path = folder / MANIFEST
    if not path.is_file():
        raise InvalidSpec(f"{folder}: no {MANIFEST} (make one with `marcelle-torch model init`)")
    try:
        manifest = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InvalidSpec(f"{path}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(manifest, dict):
        raise InvalidSpec(f"{path}: expected a mapping of keys ({', '.join(REQUIRED)})")
    _known_keys(manifest, REQUIRED, OPTIONAL, MANIFEST)
    return manifest


def _known_keys(mapping: dict, required: Sequence[str], optional: Sequence[str], where: str) -> None:
    unknown = sorted(set(map(str, mapping)) - set(required) - set(optional))
    if unknown:
        raise InvalidSpec(f"{where}: unknown key {unknown[0]!r} (known: {', '.join([*required, *optional])})")
    missing = [k for k in required if k not in mapping]
    if missing:
        raise InvalidSpec(f"{where}: missing key {missing[0]!r}")


def _input_schema(raw: Any) -> tuple[ImageInput | TensorInput, list[float] | None, list[float] | None]:
    if not isinstance(raw, dict) or raw.get("kind") not in INPUT_KEYS:
        raise InvalidSpec(f"{MANIFEST}: input.kind must be one of {', '.join(INPUT_KEYS)}")
    kind = raw["kind"]
    keys = INPUT_KEYS[kind]
    required = ("kind", "size", "channels") if kind == "image" else keys
    _known_keys(raw, required, [k for k in keys if k not in required], f"{MANIFEST} input")
    if kind == "tensor":
        shape = raw["shape"]
        if not (isinstance(shape, list) and shape and all(isinstance(d, int) and d > 0 for d in shape)):
            raise InvalidSpec(f"{MANIFEST}: input.shape must be a list of positive integers (one instance)")
        return TensorInput(tuple(shape)), None, None
    size, channels = raw["size"], raw["channels"]
    if isinstance(size, int):
        size = [size, size]
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(d, int) and d > 0 for d in size)):
        raise InvalidSpec(f"{MANIFEST}: input.size must be [height, width] (positive integers)")
    if size[0] != size[1]:
        raise InvalidSpec(f"{MANIFEST}: input.size {size}: the app's image inputs are square; give [n, n]")
    if channels not in (1, 3):
        raise InvalidSpec(f"{MANIFEST}: input.channels must be 1 or 3, got {channels!r}")
    mean, std = raw.get("mean"), raw.get("std")
    if (mean is None) != (std is None):
        raise InvalidSpec(f"{MANIFEST}: input.mean and input.std go together")
    for key, values in (("mean", mean), ("std", std)):
        if values is None:
            continue
        if not (
            isinstance(values, list)
            and len(values) == channels
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        ):
            raise InvalidSpec(f"{MANIFEST}: input.{key} must be {channels} number(s), one per channel")
        if key == "std" and any(v <= 0 for v in values):
            raise InvalidSpec(f"{MANIFEST}: input.std values must be positive")
    return ImageInput(size=size[0], channels=channels), mean, std


def _labels(raw: Any, folder: Path) -> tuple[str, ...]:
    if isinstance(raw, str):
        path = folder / raw
        if not path.is_file():
            raise InvalidSpec(f"{MANIFEST}: labels file {raw!r} not found in the folder")
        labels = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    elif isinstance(raw, list) and all(isinstance(v, (str, int)) for v in raw):
        labels = [str(v) for v in raw]
    else:
        raise InvalidSpec(f"{MANIFEST}: labels must be a list of names or a text file (one label per line)")
    if not labels:
        raise InvalidSpec(f"{MANIFEST}: labels is empty")
    if len(set(labels)) != len(labels):
        raise InvalidSpec(f"{MANIFEST}: labels must be unique")
    return tuple(labels)


def _sha256(path: Path) -> str:
    from .weights import sha256_of  # imports torch: only when a folder is loaded

    return sha256_of(path)


# ----------------------------------------------------------------------------- the module


def _load_user_module(weights: Path, module_ref: str | None, head: str | None = None) -> torch.nn.Module:
    """The user's nn.Module from its weights file (``head``: the trainable head, sized as saved)."""
    import torch

    suffix = weights.suffix.lower()
    try:
        if suffix in EXPORT_SUFFIXES:
            # torch.export logs a traceback of its own before raising: the one line below says it.
            export_log = logging.getLogger("torch.export")
            level = export_log.level
            export_log.setLevel(logging.ERROR)
            try:
                return torch.export.load(str(weights)).module()
            finally:
                export_log.setLevel(level)
        if suffix in TORCHSCRIPT_SUFFIXES and module_ref is None:
            return torch.jit.load(str(weights), map_location="cpu")
        if module_ref is None:
            raise InvalidSpec(
                f"{MANIFEST}: weights {weights.name}: a state_dict needs `module: package.module:Class` "
                "(or save a torch.export .pt2 or TorchScript .pt)"
            )
        from .registry import load_attribute
        from .weights import load_state_dict

        module_class = load_attribute(module_ref, "module", "'package.module:Class'")
        module = module_class()
        state = load_state_dict(weights)
        if head is not None:
            fit_head_to_state(module, head, state)
        module.load_state_dict(state)
        return module
    except InvalidSpec:
        raise
    except Exception as exc:  # torch's loaders raise many kinds; one line that says which
        raise InvalidSpec(
            f"{MANIFEST}: weights {weights.name} do not load: {type(exc).__name__}: {first_line(exc)}"
        ) from None


def _model_class() -> tuple[type[torch.nn.Module], type[torch.nn.Module]]:
    import torch

    class FolderModel(torch.nn.Module):
        """The user's module between the project's contract and its own: takes ``[0,1]`` pixels
        (or the tensor as given), normalises them as declared, and answers probabilities.
        TorchScript-compatible, so a TorchScript user module is wrapped into one script."""

        def __init__(self, inner: torch.nn.Module, mean: list | None, std: list | None, logits: bool, channels: int):
            super().__init__()
            self.inner = inner
            self.logits = logits
            # No normalisation is mean 0, std 1 (the ONNX exporters fold it away).
            self.register_buffer("mean", torch.tensor(mean or [0.0] * channels, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(std or [1.0] * channels, dtype=torch.float32).view(1, -1, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mean, std = self.mean, self.std
            assert isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor)  # buffers, for the type checker
            y = self.inner((x - mean) / std)
            if self.logits:
                return torch.softmax(y, dim=1)
            return y

    class ExportedFolderModel(FolderModel):
        def train(self, mode: bool = True) -> ExportedFolderModel:
            # A torch.export module refuses train()/eval() (it is always in inference mode): only
            # this wrapper's flag changes.
            self.training = mode
            return self

    return FolderModel, ExportedFolderModel


def load_folder(folder: Path) -> ModelSpec:
    """The ModelSpec of a model folder; checks the manifest and the output contract."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    name = manifest["name"]
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidSpec(f"{MANIFEST}: name {name!r}: use lowercase letters, digits and '-' (max 63)")
    if manifest["task"] != "classification":
        raise InvalidSpec(
            f"{MANIFEST}: task {manifest['task']!r}: a model folder is a classification model "
            "(a generation model keeps its Python entry point, package.module:factory)"
        )
    if manifest["output"] not in OUTPUTS:
        raise InvalidSpec(f"{MANIFEST}: output must be one of {', '.join(OUTPUTS)}, got {manifest['output']!r}")
    weights = folder / str(manifest["weights"])
    if not weights.is_file():
        raise InvalidSpec(f"{MANIFEST}: weights file {manifest['weights']!r} not found in the folder")
    digest = _sha256(weights)
    expected = manifest.get("sha256")
    if expected is not None:
        if not isinstance(expected, str) or not SHA256_RE.match(expected):
            raise InvalidSpec(f"{MANIFEST}: sha256 must be 64 lowercase hex digits")
        if expected != digest:
            raise InvalidSpec(f"{MANIFEST}: sha256 does not match {weights.name}: got {digest}, want {expected}")
    module_ref = manifest.get("module")
    if module_ref is not None and not isinstance(module_ref, str):
        raise InvalidSpec(f"{MANIFEST}: module must be 'package.module:Class'")
    schema, mean, std = _input_schema(manifest["input"])
    labels = _labels(manifest["labels"], folder)
    train = _train_config(manifest, weights, module_ref)
    head = train.head if train else None
    logits = manifest["output"] == "logits"
    version = str(manifest.get("version") or digest[:12])
    scripted = weights.suffix.lower() in TORCHSCRIPT_SUFFIXES and module_ref is None
    folder_model, exported_model = _model_class()

    def build() -> torch.nn.Module:
        inner = _load_user_module(weights, module_ref, head)
        channels = schema.channels if isinstance(schema, ImageInput) else 1
        if scripted:
            import torch

            # One script: torch.export cannot trace into TorchScript, the TorchScript exporter can.
            return torch.jit.script(folder_model(inner, mean, std, logits, channels))
        wrapper = exported_model if weights.suffix.lower() in EXPORT_SUFFIXES else folder_model
        return wrapper(inner, mean, std, logits, channels)

    try:
        module = build()
    except InvalidSpec:
        raise
    except Exception as exc:  # e.g. TorchScript cannot script the wrapper around this module
        raise InvalidSpec(
            f"{MANIFEST}: model {name} cannot be wrapped: {type(exc).__name__}: {first_line(exc)}"
        ) from None
    check_output_contract(name, module, schema, labels, logits)
    return ModelSpec(
        name=name,
        task="classification",
        build=build,
        input=schema,
        labels=labels,
        version=version,
        description=str(manifest.get("description") or f"{name} (model folder)"),
        onnx_exporter="torchscript" if scripted else "dynamo",
    )


def _train_config(manifest: dict, weights: Path, module_ref: str | None) -> TrainConfig | None:
    if "train" not in manifest:
        return None
    if module_ref is None:
        raise InvalidSpec(
            f"{MANIFEST}: train: weights {weights.name} are a frozen program; a trainable model is a "
            "state_dict with `module: package.module:Class`"
        )
    config = parse_train(manifest["train"])
    if config.rehearsal is not None and not (weights.parent / config.rehearsal).is_file():
        raise InvalidSpec(f"{MANIFEST}: train.rehearsal: {config.rehearsal} is not in the model folder")
    return config


@dataclass(frozen=True)
class Trainable:
    """What fine-tuning needs of a model folder: its checked manifest and spec, how it is trained,
    and its module as every path runs it (``module``: [0,1] pixels in, probabilities out), whose
    ``inner`` is the user's own module with its weights."""

    folder: Path
    manifest: dict
    spec: ModelSpec
    config: TrainConfig
    module: torch.nn.Module

    @property
    def inner(self) -> torch.nn.Module:
        import torch

        inner = self.module.inner
        assert isinstance(inner, torch.nn.Module)  # FolderModel's: the user's module
        return inner


def load_trainable(folder: Path) -> Trainable:
    """The model folder at ``folder``, ready to fine-tune; says why when it is not trainable."""
    folder = Path(folder)
    spec = load_folder(folder)  # checks the manifest, its train section and the output contract
    manifest = read_manifest(folder)
    if "train" not in manifest:
        raise InvalidSpec(f"model {spec.name} is not trainable: its {MANIFEST} has no `train:` section")
    return Trainable(folder, manifest, spec, parse_train(manifest["train"]), spec.build())


def check_output_contract(
    name: str, module: torch.nn.Module, schema: ImageInput | TensorInput, labels: Sequence[str], logits: bool
) -> None:
    """The wrapped module takes a batch of the declared input and answers one probability row
    of ``len(labels)`` per instance."""
    import torch

    generator = torch.Generator().manual_seed(0)
    # Two batch sizes (1, and 3, which no exporter's example uses): a module exported with a
    # fixed batch is refused here, not on a client's first batch of another size.
    for size in (1, 3):
        batch = torch.rand((size, *schema.shape), generator=generator)
        try:
            with torch.no_grad():
                out = module.eval()(batch)
        except Exception as exc:
            hint = ""
            if "Guard failed" in str(exc) or "size()[0]" in str(exc):
                hint = ' (export it with a dynamic batch: dynamic_shapes=({0: torch.export.Dim("batch")},))'
            raise InvalidSpec(
                f"{MANIFEST}: model {name} fails on a batch of {size} input(s) {list(schema.shape)}: "
                f"{type(exc).__name__}: {first_line(exc)}{hint}"
            ) from None
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != size:
            shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InvalidSpec(f"{MANIFEST}: model {name} must answer [batch, labels]; it answered {shape}")
    if out.shape[1] != len(labels):
        raise InvalidSpec(
            f"{MANIFEST}: model {name} answers {out.shape[1]} values per instance; labels has {len(labels)}"
        )
    if not logits:
        sums = out.sum(dim=1)
        if (out < -PROBABILITY_TOLERANCE).any() or ((sums - 1).abs() > PROBABILITY_TOLERANCE).any():
            raise InvalidSpec(
                f"{MANIFEST}: output is 'probabilities' but model {name}'s rows sum to {sums.tolist()}: "
                "declare `output: logits` if it answers scores"
            )


# ----------------------------------------------------------------------------- making a folder


def canonical_ref(ref: str) -> str:
    """A folder or archive reference as an absolute path (a Serve replica or a worker may run in
    another directory); anything else unchanged."""
    if is_folder_ref(ref) and not ref.startswith(("http://", "https://")):
        return str(Path(ref).expanduser().resolve())
    return ref


def parse_input(text: str) -> dict:
    """``image:HxW[xC]`` (C 1 or 3; 1 when left out) or ``tensor:AxBx...`` as the manifest's input."""
    kind, _, dims = text.partition(":")
    try:
        numbers = [int(d) for d in dims.lower().split("x")]
    except ValueError:
        numbers = []
    if kind == "image" and len(numbers) in (2, 3):
        return {"kind": "image", "size": numbers[:2], "channels": numbers[2] if len(numbers) == 3 else 1}
    if kind == "tensor" and numbers:
        return {"kind": "tensor", "shape": numbers}
    raise InvalidSpec(f"--input {text!r}: write image:HxWxC (e.g. image:64x64x3) or tensor:AxB (e.g. tensor:8x16)")


def fetch_folder(ref: str, out: Path, name: str | None = None) -> ModelSpec:
    """Resolves ``ref`` (a folder, an archive or ``URL#sha256=...``), loads it as every path
    will (manifest, weights, output contract) and only then places a copy of its folder at
    ``out``: written beside it and renamed, so ``out`` is the whole checked folder or what it
    was before. ``name``: the name the manifest must give (a deployment expects it). A model
    folder already at ``out`` (an earlier fetch) is replaced; anything else there is refused."""
    out = Path(out)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / MANIFEST).is_file())):
        raise InvalidSpec(f"--out {out} exists and is not a model folder: choose another, or remove it first")
    source = resolve_folder(ref)
    spec = load_folder(source)
    if name is not None and spec.name != name:
        raise InvalidSpec(f"{MANIFEST} names the model {spec.name!r}, not {name!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part"))
    old = None
    try:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        tmp.chmod(0o755)  # mkdtemp makes it private; the other containers read it
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
            out.rename(old / "folder")
        tmp.rename(out)
    except OSError as exc:
        if old is not None and not out.exists():
            (old / "folder").rename(out)
        raise InvalidSpec(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return spec


def write_folder(
    weights: Path,
    out: Path,
    *,
    name: str,
    labels: str,
    input_text: str,
    output: str,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    module: str | None = None,
    description: str | None = None,
    train: dict | None = None,
    extra_files: Sequence[Path] = (),
) -> ModelSpec:
    """Writes a model folder at ``out`` (the weights copied in, the manifest with their sha256, and
    ``train``, how it is fine-tuned, when given), loads it to check it, and only then puts it in
    place: a refused folder leaves nothing."""
    import yaml

    weights, out = Path(weights), Path(out)
    if not weights.is_file():
        raise InvalidSpec(f"weights file {weights} not found")
    if out.exists():
        raise InvalidSpec(f"{out} exists: choose another --out, or remove it first")
    manifest: dict[str, Any] = {"name": name, "task": "classification", "weights": weights.name}
    if module:
        manifest["module"] = module
    manifest["sha256"] = _sha256(weights)
    label_file = Path(labels.removeprefix("@"))
    if labels.startswith("@") or label_file.is_file():
        if not label_file.is_file():
            raise InvalidSpec(f"--labels {labels!r}: no such file")
        manifest["labels"] = "labels.txt"
    else:
        manifest["labels"] = [label.strip() for label in labels.split(",") if label.strip()]
    manifest["input"] = parse_input(input_text)
    if mean is not None or std is not None:
        manifest["input"].update({"mean": mean, "std": std})
    manifest["output"] = output
    if description:
        manifest["description"] = description
    if train is not None:
        manifest["train"] = train
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part"))
    try:
        shutil.copyfile(weights, tmp / weights.name)
        for extra in extra_files:  # files the manifest names besides the weights (a rehearsal set)
            shutil.copyfile(extra, tmp / Path(extra).name)
        if manifest["labels"] == "labels.txt":
            shutil.copyfile(label_file, tmp / "labels.txt")
        (tmp / MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=False))
        spec = load_folder(tmp)
        tmp.chmod(0o755)
        tmp.rename(out)
        return spec
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
