"""Built-in ``digits-generator``: a small class-conditional diffusion model.

It draws 8x8 optdigits images (block counts 0..16, the representation the ``digits``
classifier reads) for a requested digit. Sampling takes many denoising steps, and every
step gives a prediction of the finished image, which a run shows as it goes (Solution 3).

- Training: DDPM noise prediction on scikit-learn's bundled digits, counts scaled to
  [-1, 1], a cosine noise schedule of ``TIMESTEPS`` steps, classifier-free guidance
  (the class is dropped 10% of the time), an exponential moving average of the weights.
  Deterministic (fixed seeds), about a minute or two on 2 CPU cores.
- Sampling: DDIM (deterministic given a seed) over ``steps`` of the training steps.
- A request is ``{"digit": 0..9}`` (see ``parse_request``); params ``steps``, ``guidance``
  and ``seed`` (see ``PARAMS``).
"""

from __future__ import annotations

import base64
import io
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInput
from .spec import ModelSpec, TensorInput, Weights

LABELS = tuple(str(i) for i in range(10))
TIMESTEPS = 1000
NULL_CLASS = 10  # the "no class" token used for classifier-free guidance
DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 2.0
PARAMS = {"steps": DEFAULT_STEPS, "guidance": DEFAULT_GUIDANCE, "seed": None}
MAX_STEPS = TIMESTEPS
MAX_GUIDANCE = 10.0


# ---------------------------------------------------------------------------- the network


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class ResBlock(nn.Module):
    """Conv block whose features are scaled and shifted by the (time, class) embedding."""

    def __init__(self, channels: int, emb_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * channels)
        self.norm2 = nn.GroupNorm(8, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return x + self.conv2(F.silu(h))


class DigitsDenoiser(nn.Module):
    """(x_t (N,1,8,8), t (N,), class (N,) in 0..10) -> predicted noise (N,1,8,8)."""

    def __init__(self, channels: int = 48, emb_dim: int = 96):
        super().__init__()
        self.emb_dim = emb_dim
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(NULL_CLASS + 1, emb_dim)
        self.inp = nn.Conv2d(1, channels, 3, padding=1)
        self.down1 = ResBlock(channels, emb_dim)
        self.down = nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1)  # 8x8 -> 4x4
        self.mid1 = ResBlock(2 * channels, emb_dim)
        self.mid2 = ResBlock(2 * channels, emb_dim)
        self.up = nn.ConvTranspose2d(2 * channels, channels, 2, stride=2)  # 4x4 -> 8x8
        self.up1 = ResBlock(channels, emb_dim)
        self.out = nn.Sequential(nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv2d(channels, 1, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        emb = F.silu(self.time_mlp(timestep_embedding(t, self.emb_dim)) + self.class_emb(label))
        h1 = self.down1(self.inp(x), emb)
        h = self.mid2(self.mid1(self.down(h1), emb), emb)
        h = self.up1(self.up(h) + h1, emb)
        return self.out(h)


def alpha_bars(timesteps: int = TIMESTEPS) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal): cumulative signal fraction at each step."""
    s = 0.008
    x = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
    f = torch.cos(((x / timesteps) + s) / (1 + s) * math.pi / 2) ** 2
    ab = (f / f[0])[1:]
    return ab.clamp(1e-5, 0.9999).float()


class DigitsGenerator(nn.Module):
    """The denoiser plus its noise schedule (a buffer, so it travels with the weights)."""

    alpha_bar: torch.Tensor  # the buffer, declared so that its type is known

    def __init__(self) -> None:
        super().__init__()
        self.net = DigitsDenoiser()
        self.register_buffer("alpha_bar", alpha_bars(), persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return self.net(x, t, label)


# ---------------------------------------------------------------------------- requests


def parse_request(input_: Any, params: dict | None = None) -> dict:
    """A run's ``input`` and ``params`` -> ``{"digit", "steps", "guidance", "seed"}``.

    ``input`` is ``{"digit": d}`` (also accepted: ``d`` or ``[d]``) with d an integer 0..9
    (or the string "0".."9"). ``params``: ``steps`` 1..1000 (default 50), ``guidance``
    0..10 (default 2.0; 0 = unconditional), ``seed`` an integer or null (random).
    """
    if isinstance(input_, dict):
        if set(input_) != {"digit"}:
            raise InvalidInput(f'input must be {{"digit": 0..9}}, got keys {sorted(input_)}')
        digit = input_["digit"]
    elif isinstance(input_, list) and len(input_) == 1:
        digit = input_[0]
    else:
        digit = input_
    if isinstance(digit, str) and digit in LABELS:
        digit = int(digit)
    if isinstance(digit, bool) or not isinstance(digit, int) or not 0 <= digit <= 9:
        raise InvalidInput(f"input.digit must be an integer from 0 to 9, got {digit!r}")

    params = {} if params is None else params
    if not isinstance(params, dict):
        raise InvalidInput(f"params must be an object, got {type(params).__name__}")
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise InvalidInput(f"unknown params {unknown}; known: {sorted(PARAMS)}")
    merged = PARAMS | {k: v for k, v in params.items() if v is not None or k == "seed"}
    steps, guidance, seed = merged["steps"], merged["guidance"], merged["seed"]
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise InvalidInput(f"params.steps must be an integer from 1 to {MAX_STEPS}, got {steps!r}")
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not 0 <= guidance <= MAX_GUIDANCE:
        raise InvalidInput(f"params.guidance must be a number from 0 to {MAX_GUIDANCE:g}, got {guidance!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise InvalidInput(f"params.seed must be a non-negative integer or null, got {seed!r}")
    return {"digit": digit, "steps": steps, "guidance": float(guidance), "seed": seed}


# ---------------------------------------------------------------------------- sampling


def to_counts(x: torch.Tensor) -> torch.Tensor:
    """Model space [-1, 1] -> block counts [0, 16]."""
    return (x.clamp(-1, 1) + 1) * 8.0


def iter_generate(
    model: DigitsGenerator,
    digits: int | Sequence[int],
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
    seed: int | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """DDIM sampling. Yields ``(step, x0)`` after each of ``steps`` denoising steps, where
    ``x0`` (N, 8, 8) is the current prediction of the finished image as counts 0..16; the
    last one is the result. ``digits`` is an int or a sequence of ints (one sample each)."""
    device = model.alpha_bar.device
    labels = torch.tensor([digits] if isinstance(digits, int) else list(digits), dtype=torch.long, device=device)
    generator = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, ())))
    ab = model.alpha_bar
    # Evenly spaced timesteps from the noisiest to the cleanest.
    ts = torch.linspace(len(ab) - 1, 0, steps).round().long().to(device)
    # The noise is drawn on the CPU, so a seed gives the same sample on every device.
    x = torch.randn((len(labels), 1, 8, 8), generator=generator).to(device)
    null = torch.full_like(labels, NULL_CLASS)
    with torch.no_grad():
        for i, t in enumerate(ts):
            tt = t.expand(len(labels))
            if guidance > 0:
                eps_c, eps_u = model(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([labels, null])).chunk(2)
                eps = eps_u + (1 + guidance) * (eps_c - eps_u)
            else:
                eps = model(x, tt, null)
            a = ab[t]
            x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()  # consistent with the clipped x0
            a_next = ab[ts[i + 1]] if i + 1 < steps else torch.ones((), device=device)
            x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
            yield i + 1, to_counts(x0)[:, 0].cpu()


def generate(
    model: DigitsGenerator,
    digit: int,
    steps: int = DEFAULT_STEPS,
    callback: Callable[[float, np.ndarray], None] | None = None,
    every: int = 1,
    guidance: float = DEFAULT_GUIDANCE,
    seed: int | None = None,
) -> np.ndarray:
    """One sample of ``digit`` as 8x8 counts (0..16). ``callback(progress, x0)`` is called
    every ``every`` steps and after the last, with progress in (0, 1] and the current
    prediction of the finished image; it may raise to stop the sampling between steps."""
    result = None
    for step, x0 in iter_generate(model, digit, steps, guidance, seed):
        result = x0[0].numpy()
        if callback is not None and (step % every == 0 or step == steps):
            callback(step / steps, result)
    if result is None:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return result


def counts_to_png(counts: np.ndarray, size: int = 128) -> bytes:
    """8x8 counts -> a ``size`` PNG, dark ink on white, pixels kept sharp."""
    from PIL import Image

    gray = (255 - np.clip(counts, 0, 16) / 16.0 * 255).round().astype(np.uint8)
    img = Image.fromarray(gray, mode="L").resize((size, size), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def counts_to_data_url(counts: np.ndarray, size: int = 128) -> str:
    return "data:image/png;base64," + base64.b64encode(counts_to_png(counts, size)).decode()


# ---------------------------------------------------------------------------- training


def class_accuracy(
    model: DigitsGenerator,
    per_class: int = 10,
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
    seed: int = 1,
) -> float:
    """Fraction of generated samples that the independent ``digits`` classifier reads as
    the requested digit, after drawing each on a 128x128 canvas as a sketch would be."""
    from .digits import CANVAS
    from .digits import spec as classifier_spec
    from .optdigits import render_canvas
    from .weights import load_model

    classifier = load_model(classifier_spec(), progress=True)
    digits = [d for d in range(10) for _ in range(per_class)]
    samples = list(iter_generate(model.eval(), digits, steps, guidance, seed))[-1][1].numpy()
    rng = np.random.default_rng(seed)
    canvases = np.stack([render_canvas(c, CANVAS, rng, light_background=bool(rng.random() < 0.5)) for c in samples])
    with torch.no_grad():
        predicted = classifier(torch.from_numpy(canvases)[:, None]).argmax(1)
    return float((predicted == torch.tensor(digits)).float().mean())


def train(spec: ModelSpec, target: Path, progress: bool = False, epochs: int = 35, seed: int = 0) -> dict:
    """Train the denoiser on the training split (the classifier's held-out digits are never
    seen), then measure how often the classifier recognises what it draws."""
    started = time.monotonic()
    # One thread: the same numbers on any machine, and faster than two contending ones
    # for a network this small.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(spec, target, progress, epochs, seed, started)
    finally:
        torch.set_num_threads(threads)


def _train(spec: ModelSpec, target: Path, progress: bool, epochs: int, seed: int, started: float) -> dict:
    from tqdm import tqdm

    from .optdigits import load_split
    from .weights import atomic_write

    torch.manual_seed(seed)
    x_train, _, y_train, _ = load_split(seed)
    data = torch.from_numpy(x_train)[:, None] / 8.0 - 1.0  # counts 0..16 -> [-1, 1]
    labels = torch.from_numpy(y_train).long()

    model = DigitsGenerator()
    ema = DigitsGenerator()
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    optimiser = torch.optim.AdamW(model.net.parameters(), lr=2e-3, weight_decay=0.0)
    batches_per_epoch = math.ceil(len(data) / 128)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=2e-3, total_steps=epochs * batches_per_epoch, pct_start=0.05
    )
    generator = torch.Generator().manual_seed(seed)
    ab = model.alpha_bar
    bar = tqdm(range(epochs), desc=f"train {spec.name}", unit="epoch", disable=not progress)
    for _ in bar:
        model.train()
        order = torch.randperm(len(data), generator=generator)
        total = 0.0
        for batch in order.split(128):
            x0, y = data[batch], labels[batch].clone()
            y[torch.rand(len(y), generator=generator) < 0.1] = NULL_CLASS
            t = torch.randint(0, TIMESTEPS, (len(y),), generator=generator)
            noise = torch.randn(x0.shape, generator=generator)
            a = ab[t][:, None, None, None]
            loss = F.mse_loss(model(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, y), noise)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            scheduler.step()
            with torch.no_grad():
                for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
                    p_ema.lerp_(p, 0.02)
            total += float(loss.detach()) * len(y)
        bar.set_postfix(loss=f"{total / len(data):.4f}")
    train_seconds = round(time.monotonic() - started, 1)

    metrics = {
        "classifier_accuracy": class_accuracy(ema, per_class=10, seed=seed + 1),
        "classifier_samples": 100,
        "sample_steps": PARAMS["steps"],
        "train_seconds": train_seconds,
        "epochs": epochs,
    }
    atomic_write(target, lambda tmp: torch.save({"state_dict": ema.state_dict(), "metrics": metrics}, tmp))
    return metrics


def spec() -> ModelSpec:
    return ModelSpec(
        name="digits-generator",
        task="generation",
        build=DigitsGenerator,
        # The request: one class index. Runs send it as {"digit": d}; see parse_request.
        input=TensorInput(shape=(1,), dtype="int64", value_range=(0, 9)),
        weights=Weights(train=train),
        labels=LABELS,
        version="1",
        description="Class-conditional diffusion model drawing 8x8 optdigits for a requested digit (DDIM sampling)",
        params=dict(PARAMS),
        run=run,
    )


# ---------------------------------------------------------------------------- runs


def run(model: DigitsGenerator, input_: Any, params: dict | None, report: Callable[..., None]) -> dict:
    """One generation run, as the run worker calls it (the protocol of a generation model's
    module). ``report(progress, partial)`` is called after every step with ``partial`` a
    function giving the current image as a PNG data URL (made only when it is sent); it
    may raise to stop. Returns the run's ``result``."""
    request = parse_request(input_, params)
    counts = generate(
        model,
        request["digit"],
        request["steps"],
        callback=lambda progress, x0: report(progress, lambda: counts_to_data_url(x0)),
        guidance=request["guidance"],
        seed=request["seed"],
    )
    return {
        "label": LABELS[request["digit"]],
        "image": counts_to_data_url(counts),
        "counts": np.round(counts, 2).tolist(),
        "steps": request["steps"],
    }
