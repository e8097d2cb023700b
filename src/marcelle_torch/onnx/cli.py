"""Command: export-onnx (Solution 2: the model in the browser with onnxruntime-web)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    from .settings import DEFAULT_MAX_MB, DEFAULT_OPSET, EXPORTERS

    p = subparsers.add_parser(
        "export-onnx",
        help="export a model to ONNX, check it runs in onnxruntime-web, write a web bundle",
        description="Export MODEL to ONNX, check web compatibility (onnxruntime-web WASM operators), numerical "
        "parity with PyTorch and size, then write OUT/model.onnx and OUT/model.json. A failed check "
        "publishes nothing.",
    )
    p.add_argument("model", help="built-in name, model folder (or archive, URL#sha256=...), or package.module:factory")
    p.add_argument(
        "--out", type=Path, default=None, help="bundle directory (default: services/frontend/public/onnx/<model>/)"
    )
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument(
        "--max-mb",
        type=float,
        default=DEFAULT_MAX_MB,
        help=f"warn above this model size in MB (default {DEFAULT_MAX_MB:g})",
    )
    p.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the web-compatibility and parity checks (default on)",
    )
    p.add_argument(
        "--exporter",
        choices=EXPORTERS,
        default=None,
        help="torch's ONNX exporter (default: the one the model needs, dynamo unless it is TorchScript)",
    )
    p.set_defaults(func=cmd_export_onnx)

    # `model init` writes a model folder and `model check` checks it the way each path runs it,
    # ONNX included: the group lives here, in the part that may use both models and ONNX.
    model = subparsers.add_parser(
        "model",
        help="make, check and fetch a model folder: your model, with no Python to write",
        description="A model folder holds marcelle-model.yaml beside the weights (torch.export .pt2, "
        "TorchScript .pt, or a state_dict with its module class). Every command that takes a model "
        "takes a folder, a .tar.gz/.zip of one, or URL#sha256=<hex> of such an archive.",
    )
    commands = model.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)
    p = commands.add_parser("init", help="write a model folder from a weights file, and check it loads")
    p.add_argument("weights", type=Path, help="a torch.export .pt2, a TorchScript .pt/.ts, or a state_dict")
    p.add_argument("--name", required=True, help="the model's name ([a-z0-9-], max 63)")
    p.add_argument("--labels", required=True, help="comma-separated labels, or a text file (one per line)")
    p.add_argument("--input", required=True, dest="input_text", help="image:HxWxC (e.g. image:64x64x3) or tensor:AxB")
    p.add_argument("--output", required=True, choices=("logits", "probabilities"), help="what the module answers")
    p.add_argument(
        "--mean", type=_floats, default=None, help="per-channel mean on [0,1] pixels, e.g. 0.485,0.456,0.406"
    )
    p.add_argument("--std", type=_floats, default=None, help="per-channel std, e.g. 0.229,0.224,0.225")
    p.add_argument("--module", default=None, help="package.module:Class, for a state_dict")
    p.add_argument("--description", default=None)
    p.add_argument(
        "--train-head",
        default=None,
        metavar="NAME",
        help="make it trainable (`model finetune`, training runs): NAME is the module's last nn.Linear "
        "(e.g. fc, or head.4); needs --module. The other train: keys keep their defaults",
    )
    p.add_argument("--out", type=Path, default=None, help="the folder to write (default: ./NAME)")
    p.set_defaults(func=cmd_model_init)
    p = commands.add_parser("check", help="load a model and check it on the three paths (Serve, worker, ONNX)")
    p.add_argument("model", help="a model folder, an archive, URL#sha256=<hex>, or any model reference")
    p.set_defaults(func=cmd_model_check)
    p = commands.add_parser(
        "fetch",
        help="check a model and copy its folder to --out (a Kubernetes init container's step)",
        description="Resolve MODEL (a folder, a .tar.gz/.zip of one, or URL#sha256=<hex>: downloaded and "
        "checked by its sha256), load it as Serve and the worker will (manifest, weights, output "
        "contract), then place a copy of its folder at OUT in one rename. A refused model leaves "
        "nothing at OUT; a model folder already there (an earlier fetch) is replaced.",
    )
    p.add_argument("model", help="a model folder, an archive, or URL#sha256=<hex>")
    p.add_argument("--out", type=Path, required=True, help="where the model folder goes")
    p.add_argument("--name", default=None, help="refuse the model unless its manifest's name is NAME")
    p.set_defaults(func=cmd_model_fetch)
    p = commands.add_parser(
        "finetune",
        help="fine-tune a trainable model folder on labelled images, into a new model version",
        description="Train the layers that MODEL's manifest names in its `train:` section on the images "
        "of EXAMPLES (one subfolder per label; a label the model does not know adds a class), a share of "
        "each label kept aside to measure it. The new version is a model folder at STORE/NAME/VERSION/ "
        "(VERSION: its weights' sha256, 12 digits), recording its parent version, the examples' sha256 "
        "and the held-out metrics; every command that takes a model takes it.",
    )
    p.add_argument("model", help="a model folder (or an archive, or URL#sha256=<hex>) with a train: section")
    p.add_argument("examples", type=Path, help="a folder of images, one subfolder per label")
    p.add_argument("--store", type=Path, required=True, help="the model store (the version goes under it)")
    p.add_argument("--epochs", type=int, default=None, help="override the manifest's train.epochs")
    p.add_argument("--checkpoint", type=Path, default=None, help="save each epoch here; a rerun resumes from it")
    p.set_defaults(func=cmd_model_finetune)


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def cmd_model_init(args) -> int:
    from ..errors import InvalidInput
    from ..models.folder import write_folder

    if args.train_head and not args.module:
        raise InvalidInput("--train-head needs --module: only a state_dict with its module class can be trained")
    out = args.out or Path(args.name)
    spec = write_folder(
        args.weights,
        out,
        name=args.name,
        labels=args.labels,
        input_text=args.input_text,
        output=args.output,
        mean=args.mean,
        std=args.std,
        module=args.module,
        description=args.description,
        train={"head": args.train_head} if args.train_head else None,
    )
    print(f"{spec.name}: wrote {out}/ ({len(spec.labels)} labels, input {spec.input.to_json()['shape']}, loads)")
    print(f"next: marcelle-torch model check {out}")
    return 0


def cmd_model_check(args) -> int:
    from ..models.folder import canonical_ref
    from .model_check import check_model

    ref = canonical_ref(args.model)
    spec = check_model(ref, say=lambda line: print(line, flush=True))
    print("next:")
    print(f"  marcelle-torch serve --model {ref}          # Ray Serve: POST /v1/models/{spec.name}:predict")
    print(f"  marcelle-torch export-onnx {ref} --out services/frontend/public/onnx/{spec.name}   # the browser")
    print(f"  marcelle-torch worker --models {ref}        # runs through the Marcelle backend")
    return 0


def cmd_model_fetch(args) -> int:
    from ..errors import InvalidSpec, MarcelleTorchError
    from ..models.folder import fetch_folder

    try:
        spec = fetch_folder(args.model, args.out, name=args.name)
    except MarcelleTorchError as exc:
        # One line naming the model and its reference (in a Pod's init container, what
        # `kubectl describe` shows), unless the message already names the reference.
        where = args.model if args.name is None else f"{args.name} ({args.model})"
        if args.model in exc.message:
            where = args.name
        raise InvalidSpec(f"model {where}: {exc.message}" if where else exc.message) from None
    print(
        f"{spec.name}: {args.model} -> {args.out}/ ({len(spec.labels)} labels, input "
        f"{spec.input.to_json()['shape']}, version {spec.version}; loads)"
    )
    return 0


def cmd_export_onnx(args) -> int:
    from .export import export_bundle

    def show_check(result):
        for line in result.lines():
            print(f"      {line}", flush=True)

    result = export_bundle(
        args.model,
        out_dir=args.out,
        opset=args.opset,
        max_mb=args.max_mb,
        check=args.check,
        exporter=args.exporter,
        on_step=lambda msg: print(msg, flush=True),
        on_check=show_check,
    )
    meta = result.metadata["onnx"]
    warned = [r.name for r in result.checks if not r.passed]
    state = ("checks passed" if args.check else "checks skipped") + (
        f", warnings: {', '.join(warned)}" if warned else ""
    )
    print(
        f"{result.name}: wrote {result.out_dir}/ (model.onnx {meta['bytes'] / 1e6:.2f} MB, opset {meta['opset']}, "
        f"sha256 {meta['sha256'][:12]}; {state})"
    )
    return 0


def cmd_model_finetune(args) -> int:
    from ..errors import InvalidInput
    from ..models.folder import load_folder, resolve_folder
    from ..models.trainable import MAX_EPOCHS
    from ..training import examples_from_dir, fine_tune

    if args.epochs is not None and not 1 <= args.epochs <= MAX_EPOCHS:
        raise InvalidInput(f"--epochs must be from 1 to {MAX_EPOCHS}, got {args.epochs}")
    folder = resolve_folder(args.model)

    def show(event: dict) -> None:
        if event["status"] == "start":
            new = [label for label in event["labels"] if label not in spec_labels]
            print(
                f"training on {event['examples']} examples ({event['held_out']} kept aside)"
                + (f", new labels: {', '.join(new)}" if new else "")
                + (f", resumed after epoch {event['epoch']}" if event["resumed"] else ""),
                flush=True,
            )
        elif event["status"] == "epoch":
            logs = event["data"]
            print(
                f"epoch {event['epoch']}/{event['epochs']}: loss {logs['loss']:.4f}, accuracy "
                f"{logs['accuracy']:.3f}, held-out accuracy {logs['accuracyVal']:.3f}",
                flush=True,
            )

    spec = load_folder(folder)
    spec_labels = set(spec.labels)
    examples = examples_from_dir(args.examples, spec)
    version = fine_tune(
        folder, examples, store=args.store, on_status=show, checkpoint=args.checkpoint, epochs=args.epochs
    )
    metrics = version.metrics
    print(f"{version.spec.name}: version {version.version} (from {version.parent}) at {version.folder}/")
    print(f"  held-out accuracy {metrics['accuracy']} on {metrics['held_out']} examples")
    print(f"  per label: {metrics['per_label']}")
    print(f"next: marcelle-torch up --model {version.folder}")
    return 0
