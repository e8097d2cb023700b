"""Commands about models: list, info, train, predict."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("list", help="list the built-in models and whether they are trained")
    p.set_defaults(func=cmd_list)

    p = subparsers.add_parser("info", help="show a model's metadata (built-in name or package.module:factory)")
    p.add_argument("model")
    p.set_defaults(func=cmd_info)

    p = subparsers.add_parser("train", help="train a built-in model into the cache (with progress)")
    p.add_argument("model")
    p.add_argument("--force", action="store_true", help="train again even if cached")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("predict", help="run a model in-process on image files")
    p.add_argument("model")
    p.add_argument("images", nargs="+", type=Path, help="PNG/JPEG files")
    p.set_defaults(func=cmd_predict)


def cmd_list(args: argparse.Namespace) -> int:
    from .registry import builtin_names, get_spec
    from .weights import trained_weights_path

    for name in builtin_names():
        spec = get_spec(name)
        trained = trained_weights_path(spec).is_file() if spec.weights.train else True
        state = "ready" if trained else "not trained"
        print(f"{name:20s} {spec.task:15s} {state:12s} {spec.description}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .registry import get_spec
    from .weights import training_metrics

    spec = get_spec(args.model)
    info = spec.metadata() | {"weights": spec.weights.describe}
    if spec.weights.train:
        info["training_metrics"] = training_metrics(spec)
    print(json.dumps(info, indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..errors import InvalidSpec
    from .registry import get_spec
    from .weights import trained_weights_path

    spec = get_spec(args.model)
    if not spec.weights.train:
        raise InvalidSpec(f"model {spec.name} is not trainable here (weights: {spec.weights.describe})")
    target = trained_weights_path(spec)
    if target.is_file() and not args.force:
        from .weights import training_metrics

        print(f"{spec.name}: cached at {target} ({_summary(training_metrics(spec))}); --force to retrain")
        return 0
    metrics = spec.weights.train(spec=spec, target=target, progress=True)
    print(f"{spec.name}: trained in {metrics.get('train_seconds')}s, saved to {target} ({_summary(metrics)})")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import base64

    import torch

    from ..errors import InvalidInput
    from .inputs import decode_instances, postprocess
    from .registry import get_spec
    from .weights import load_model

    spec = get_spec(args.model)
    instances = []
    for path in args.images:
        if not path.is_file():
            raise InvalidInput(f"no such file: {path}")
        instances.append({"b64": base64.b64encode(path.read_bytes()).decode()})
    batch = decode_instances(spec, instances)
    model = load_model(spec, progress=True)
    with torch.no_grad():
        predictions = postprocess(spec, model(batch))
    for path, prediction in zip(args.images, predictions, strict=True):
        print(json.dumps({"file": str(path), **prediction}))
    return 0


def _summary(metrics: dict | None) -> str:
    if not metrics:
        return "no metrics"
    return ", ".join(
        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items() if k.endswith("accuracy")
    )
