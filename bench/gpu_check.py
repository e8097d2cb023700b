"""The GPU path, checked on a machine with CUDA (torch only: no Ray, no server).

1. The built-in models on CUDA give the CPU's outputs: the ``digits`` classifier on held-out
   drawn canvases (probabilities and labels), the ``digits-generator`` from the same seeds
   (the sampler draws its noise on the CPU, so a seed means one sample on every device).
   TF32 is off for this part, so the comparison is of float32 against float32.
2. The compute-bound ResNet-18-shaped benchmark module (``models/resnet_bench.py``): batched
   samples/s on the GPU by batch size, float32 (TF32 on, PyTorch's default for convolutions)
   and bfloat16 autocast with channels-last, and on the CPU for reference.

Writes bench/out/gpu_check.{json,md} (or to --out). Run from the repository root:
    PYTHONPATH=src MARCELLE_TORCH_CACHE=.cache/models python bench/gpu_check.py
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from marcelle_torch.files import atomic_write_text  # noqa: E402
from marcelle_torch.models import digits_generator, get_spec, load_model, resnet_bench  # noqa: E402  # noqa: E402
from marcelle_torch.models.digits import CANVAS  # noqa: E402
from marcelle_torch.models.optdigits import load_split, render_canvas  # noqa: E402


def held_out_canvases(n: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    _, x_test, _, y_test = load_split()
    rng = np.random.default_rng(seed)
    idx = np.arange(n) % len(x_test)
    canvases = np.stack([render_canvas(x_test[i], CANVAS, rng, light_background=bool(i % 2)) for i in idx])
    return torch.from_numpy(canvases.astype(np.float32))[:, None], y_test[idx]


def classifier_parity(n: int) -> dict:
    spec = get_spec("digits")
    cpu = load_model(spec, "cpu")
    gpu = load_model(spec, "cuda")
    x, y = held_out_canvases(n)
    with torch.no_grad():
        p_cpu = torch.softmax(cpu(x), 1)
        p_gpu = torch.softmax(gpu(x.cuda()), 1).cpu()
    return {
        "instances": n,
        "max_abs_prob_diff": float((p_cpu - p_gpu).abs().max()),
        "labels_agree": float((p_cpu.argmax(1) == p_gpu.argmax(1)).float().mean()),
        "accuracy_cpu": float((p_cpu.argmax(1).numpy() == y).mean()),
        "accuracy_gpu": float((p_gpu.argmax(1).numpy() == y).mean()),
    }


def generator_parity(steps: int) -> dict:
    spec = get_spec("digits-generator")
    cpu = load_model(spec, "cpu")
    gpu = load_model(spec, "cuda")
    digits = list(range(10))
    out = {}
    for name, model in (("cpu", cpu), ("cuda", gpu)):
        started = time.perf_counter()
        *_, (_, counts) = digits_generator.iter_generate(model, digits, steps=steps, seed=7)
        out[name] = (counts.numpy(), time.perf_counter() - started)
    return {
        "samples": len(digits),
        "steps": steps,
        "max_abs_count_diff": float(np.abs(out["cpu"][0] - out["cuda"][0]).max()),  # counts are 0..16
        "seconds_cpu": round(out["cpu"][1], 3),
        "seconds_cuda": round(out["cuda"][1], 3),
    }


def throughput(model: torch.nn.Module, batch: int, device: str, bf16: bool, seconds: float) -> float:
    x = torch.randn((batch, *resnet_bench.INPUT_SHAPE), device=device)
    if bf16:
        x = x.to(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            model(x)

    for _ in range(3):
        step()
    sync()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step()
        done += batch
    sync()
    return done / (time.perf_counter() - started)


def resnet_throughput(batches: list[int], seconds: float) -> list[dict]:
    rows = []
    base = resnet_bench.build()
    for device, bf16 in (("cuda", False), ("cuda", True)):
        model = resnet_bench.build().to(device)
        if bf16:
            model = model.to(memory_format=torch.channels_last)
        for batch in batches:
            rows.append(
                {
                    "device": device,
                    "dtype": "bf16 autocast, channels-last" if bf16 else "float32 (TF32)",
                    "batch": batch,
                    "samples_per_s": round(throughput(model, batch, device, bf16, seconds), 1),
                }
            )
    for batch in (1, 32):
        rows.append(
            {
                "device": f"cpu ({torch.get_num_threads()} threads)",
                "dtype": "float32",
                "batch": batch,
                "samples_per_s": round(throughput(base, batch, "cpu", False, seconds), 1),
            }
        )
    return rows


def markdown(report: dict) -> str:
    c, g = report["classifier"], report["generator"]
    lines = [
        f"GPU check on {report['gpu']} (torch {report['torch']}, CUDA {report['cuda']}), {report['date']}.",
        "",
        "| check | CPU | CUDA | difference |",
        "|---|---:|---:|---:|",
        f"| digits: accuracy on {c['instances']} held-out drawn canvases | {c['accuracy_cpu']:.3f} | "
        f"{c['accuracy_gpu']:.3f} | max prob diff {c['max_abs_prob_diff']:.2e}, labels agree {c['labels_agree']:.3f} |",
        f"| digits-generator: {g['samples']} samples x {g['steps']} steps, seconds | {g['seconds_cpu']} | "
        f"{g['seconds_cuda']} | max count diff {g['max_abs_count_diff']:.2e} (of 16) |",
        "",
        "| ResNet-18-shaped, 3x224x224 | dtype | batch | samples/s |",
        "|---|---|---:|---:|",
    ]
    lines += [f"| {r['device']} | {r['dtype']} | {r['batch']} | {r['samples_per_s']:,.1f} |" for r in report["resnet"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    parser.add_argument("--n", type=int, default=1000, help="held-out canvases for the classifier parity")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per throughput point")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: error: torch sees no CUDA device", file=sys.stderr)
        return 2
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "host": platform.node(),
        "classifier": classifier_parity(args.n),
        "generator": generator_parity(steps=digits_generator.PARAMS["steps"]),
    }
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default for convolutions, as served
    torch.backends.cudnn.benchmark = True
    report["resnet"] = resnet_throughput([1, 8, 32, 64, 128, 256], args.seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "gpu_check.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(args.out / "gpu_check.md", markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
