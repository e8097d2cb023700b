"""The optdigits preprocessing, as a torch module, and canvases made from the dataset.

scikit-learn's digits are the UCI "optdigits" set: each handwritten digit was normalised
(its bounding box scaled, aspect kept, so that its larger side fills a 32x32 bitmap, and
centred), binarised, then cut into 4x4 blocks whose "on" pixels were counted (0..16),
giving 8x8 images. In that set the ink covers ~30% of the 32x32 bitmap (thick pen
strokes). ``OptdigitsPreprocess`` does the same to a drawn canvas, inside the model, so
every path (Serve, ONNX, worker) feeds the model the same raw image.

Every operation here exports to ONNX with operators that onnxruntime-web runs.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BITMAP = 32  # the dataset's normalised bitmap size
BLOCK = 4  # 4x4 blocks -> 8x8 counts
SUPERSAMPLE = 4  # sample points per bitmap pixel per axis
TARGET_INK = 0.22  # strokes thinner than this fraction of the bitmap are thickened
MAX_DILATIONS = 3


class OptdigitsPreprocess(nn.Module):
    """(N, 1, S, S) image in [0, 1] -> (N, 1, 8, 8) block counts in [0, 16].

    Dark ink on a light background is inverted first (judged from the image border), so a
    white-on-black sketchpad and a photo of a digit on paper both work.
    """

    # Buffers, declared so that their type is known (nn.Module's __getattr__ says Tensor | Module).
    offsets: torch.Tensor
    index: torch.Tensor

    def __init__(self, size: int):
        super().__init__()
        self.size = size
        n = BITMAP * SUPERSAMPLE
        # Offsets of the sample points across the normalised box, in [0, 1).
        self.register_buffer("offsets", (torch.arange(n, dtype=torch.float32) + 0.5) / n, persistent=False)
        self.register_buffer("index", torch.arange(size, dtype=torch.float32), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        s = self.size
        x = image[:, :1].float()
        border = torch.cat([x[:, :, 0, :], x[:, :, -1, :], x[:, :, :, 0], x[:, :, :, -1]], dim=2)
        light_background = border.mean(dim=2, keepdim=True).unsqueeze(-1) > 0.5
        ink = torch.where(light_background, 1.0 - x, x)
        on = (ink > 0.5).float()  # (N,1,S,S)

        # Bounding box of the ink; an empty canvas keeps the whole canvas.
        rows = on.amax(dim=3)[:, 0]  # (N,S)
        cols = on.amax(dim=2)[:, 0]
        top, bottom = _extent(rows, self.index, s)
        left, right = _extent(cols, self.index, s)
        height, width = bottom - top + 1.0, right - left + 1.0
        side = torch.maximum(height, width)  # aspect kept: the larger side fills the bitmap
        cy, cx = (top + bottom + 1.0) / 2.0, (left + right + 1.0) / 2.0

        # Thin strokes are thickened towards the dataset's ink level (it was written with a thick
        # pen). Each dilation grows the drawing by one bitmap pixel per side, so first count the
        # dilations needed, then sample a box enlarged by that margin: the thickened drawing
        # still fills, and does not overflow, the 32x32 bitmap.
        dilations = torch.zeros_like(side)
        bitmap = self._bitmap(on, cy, cx, side)
        for _ in range(MAX_DILATIONS):
            thin = (bitmap.mean(dim=(1, 2, 3)) < TARGET_INK).float()
            dilations = dilations + thin
            bitmap = torch.where(thin[:, None, None, None] > 0, F.max_pool2d(bitmap, 3, stride=1, padding=1), bitmap)
        bitmap = self._bitmap(on, cy, cx, side * BITMAP / (BITMAP - 2.0 * dilations))
        for step in range(MAX_DILATIONS):
            grow = (dilations > step)[:, None, None, None]
            bitmap = torch.where(grow, F.max_pool2d(bitmap, 3, stride=1, padding=1), bitmap)

        return F.avg_pool2d(bitmap, BLOCK) * (BLOCK * BLOCK)

    def _bitmap(self, on: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        """The square box of ``side`` centred on (cy, cx) -> a 32x32 binary bitmap.

        The box is sampled on a fine grid (nearest pixel), then OR-pooled into the bitmap, so a
        thin pen stroke still marks every bitmap pixel it crosses."""
        s = self.size
        ys = cy[:, None] + (self.offsets[None, :] - 0.5) * side[:, None]  # (N,n)
        xs = cx[:, None] + (self.offsets[None, :] - 0.5) * side[:, None]
        yi, xi = torch.floor(ys), torch.floor(xs)
        valid = ((yi >= 0) & (yi < s))[:, :, None] & ((xi >= 0) & (xi < s))[:, None, :]
        flat_index = (yi.clamp(0, s - 1)[:, :, None] * s + xi.clamp(0, s - 1)[:, None, :]).long()
        n = flat_index.shape[1]
        samples = torch.gather(on.reshape(-1, s * s), 1, flat_index.reshape(-1, n * n))
        samples = samples.reshape(-1, 1, n, n) * valid[:, None].float()
        return F.max_pool2d(samples, SUPERSAMPLE)  # (N,1,32,32)


def _extent(mask: torch.Tensor, index: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last index where ``mask`` (N, size) is set; (0, size-1) where none is."""
    present = mask > 0
    first = torch.where(present, index, torch.full_like(index, float(size))).amin(dim=1)
    last = torch.where(present, index, torch.full_like(index, -1.0)).amax(dim=1)
    empty = last < 0
    first = torch.where(empty, torch.zeros_like(first), first)
    last = torch.where(empty, torch.full_like(last, float(size - 1)), last)
    return first, last


def load_split(seed: int = 0, test_fraction: float = 0.25) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits (no download), split the same way every time."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = data.images.astype(np.float32)  # (1797, 8, 8) counts 0..16
    return train_test_split(images, data.target, test_size=test_fraction, random_state=seed, stratify=data.target)


def render_canvas(
    counts: np.ndarray,
    size: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.25, 0.95),
    threshold: tuple[float, float] = (0.25, 0.7),
    light_background: bool = False,
) -> np.ndarray:
    """Draw an 8x8 dataset digit onto a ``size`` canvas at a random size, position and slant.

    The digit is upsampled smoothly, slanted, rotated and stretched a little (people do not
    write like the dataset's writers), and thresholded (a random threshold varies the stroke
    width), giving a binary drawing such as a sketchpad makes. Returns (size, size) in [0,1].
    """
    from PIL import Image

    height = max(int(round(rng.uniform(*scale) * size)), 12)
    width = max(int(round(height * rng.uniform(0.75, 1.25))), 8)
    img = Image.fromarray((counts / 16.0).astype(np.float32), mode="F")
    img = img.resize((width, height), Image.Resampling.BILINEAR)
    pad = height // 2
    padded = Image.new("F", (width + 2 * pad, height + 2 * pad), 0.0)
    padded.paste(img, (pad, pad))
    shear = rng.uniform(-0.3, 0.3)
    padded = padded.transform(
        padded.size,
        Image.Transform.AFFINE,
        (1, shear, -shear * padded.size[1] / 2, 0, 1, 0),
        resample=Image.Resampling.BILINEAR,
    )
    padded = padded.rotate(rng.uniform(-12, 12), resample=Image.Resampling.BILINEAR)
    up = np.asarray(padded, dtype=np.float32)
    drawing = up > rng.uniform(*threshold)
    if not drawing.any():
        drawing = up > up.max() / 2
    rows, cols = np.flatnonzero(drawing.any(axis=1)), np.flatnonzero(drawing.any(axis=0))
    drawing = drawing[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float32)
    if max(drawing.shape) > size:  # keep the whole digit on the canvas
        factor = size / max(drawing.shape)
        shape = (max(1, int(drawing.shape[1] * factor)), max(1, int(drawing.shape[0] * factor)))
        drawing = np.asarray(Image.fromarray(drawing, mode="F").resize(shape, Image.Resampling.BILINEAR)) > 0.5
        drawing = drawing.astype(np.float32)
    h, w = drawing.shape
    canvas = np.zeros((size, size), dtype=np.float32)
    top, left = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
    canvas[top : top + h, left : left + w] = drawing
    return 1.0 - canvas if light_background else canvas
