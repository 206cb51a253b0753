"""Weight windows and the float32 accumulator that blends overlapping patches.

Each patch's logits are multiplied by a smooth window and summed; dividing by
the summed weights makes the windows a partition of unity everywhere. Windows
that taper keep a floor, so a border pixel covered by a single patch still has
a positive weight (no zero-weight frame around the scene).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch

from segflow.engine.grid import PatchGrid, Region, intersect, region_shape, shift
from segflow.errors import ConfigError
from segflow.options import BlendMode

WEIGHT_FLOOR = 1e-3


def window_1d(mode: BlendMode, size: int, sigma: float = 0.125) -> npt.NDArray[np.float32]:
    """A 1-D window of ``size`` samples, peak 1, floored where it tapers."""
    centre = (size - 1) / 2.0
    pos = np.arange(size, dtype=np.float64)
    # distance from the centre in half-widths: 0 at the centre, ~1 at the edges
    r = np.abs(pos - centre) / max(size / 2.0, 1.0)
    w: npt.NDArray[np.float64]
    if mode is BlendMode.GAUSSIAN:
        w = np.exp(-0.5 * ((pos - centre) / max(sigma * size, 1e-6)) ** 2)
    elif mode is BlendMode.HANN:
        w = 0.5 - 0.5 * np.cos(2.0 * np.pi * (pos + 0.5) / size)
    elif mode is BlendMode.LINEAR:
        w = 1.0 - r
    elif mode is BlendMode.SPLINE:
        t = 1.0 - r  # second-order spline: smooth S from the edge to the centre
        w = np.where(t < 0.5, 2.0 * t**2, 1.0 - 2.0 * (1.0 - t) ** 2)
    elif mode in (BlendMode.CONSTANT, BlendMode.CENTER):
        w = np.ones(size)
    else:  # pragma: no cover - exhaustive
        raise ConfigError(f"unsupported blend mode {mode}")
    w = w / w.max()
    return np.maximum(w, WEIGHT_FLOOR).astype(np.float32)


@lru_cache(maxsize=32)
def _separable_window(mode: BlendMode, patch: tuple[int, ...], sigma: float) -> torch.Tensor:
    weights = torch.ones((), dtype=torch.float32)
    for size in patch:
        axis = torch.from_numpy(window_1d(mode, size, sigma))
        weights = weights[..., None] * axis
    return weights.contiguous()


def patch_window(
    mode: BlendMode, grid: PatchGrid, index: tuple[int, ...], sigma: float = 0.125
) -> torch.Tensor:
    """The weight window of one patch, shape ``grid.patch``."""
    if mode is not BlendMode.CENTER:
        return _separable_window(mode, grid.patch, sigma)
    # centre-crop: 1 on the patch's core, 0 elsewhere; cores tile the image exactly
    core = shift(grid.core(index), grid.origin(index))
    window = torch.zeros(grid.patch, dtype=torch.float32)
    window[core] = 1.0
    return window


_BUFFERS = threading.local()


def _zeroed_buffer(name: str, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A zeroed float32 buffer reused by this thread's next region of the same shape.

    Zeroing memory already mapped is several times cheaper than faulting in a
    fresh 100 MB allocation for every region.
    """
    cache: dict[tuple[str, tuple[int, ...], torch.device], torch.Tensor] = (
        _BUFFERS.__dict__.setdefault("cache", {})
    )
    buffer = cache.get((name, shape, device))
    if buffer is None:
        # one buffer per name: a region of another shape (at the image's edges) frees the
        # last one first, whose heap pages (kept, see segflow.heap) the new one then reuses
        for key in [k for k in cache if k[0] == name]:
            del cache[key]
        buffer = torch.zeros(shape, dtype=torch.float32, device=device)
        cache[(name, shape, device)] = buffer
    else:
        buffer.zero_()
    return buffer


@lru_cache(maxsize=8)
def _device_window(
    mode: BlendMode, patch: tuple[int, ...], sigma: float, device: str
) -> torch.Tensor:
    return _separable_window(mode, patch, sigma).to(device)


def device_window(
    mode: BlendMode,
    grid: PatchGrid,
    index: tuple[int, ...],
    sigma: float,
    device: torch.device,
) -> torch.Tensor:
    """:func:`patch_window` on ``device`` (the same window, copied there once)."""
    if device.type == "cpu":
        return patch_window(mode, grid, index, sigma)
    if mode is BlendMode.CENTER:  # depends on the patch: copied each time
        return patch_window(mode, grid, index, sigma).to(device, non_blocking=True)
    return _device_window(mode, grid.patch, sigma, str(device))


class Accumulator:
    """Sums weighted logits over one output region, in float32.

    Its buffers are reused by the next accumulator of the same shape created
    in the same thread: finish with one region before starting the next. On a
    GPU (``device``) the sums, the argmax and the softmax stay on it; only
    labels (and probabilities when asked) come back.
    """

    def __init__(
        self,
        num_classes: int,
        region: Region,
        *,
        track_weights: bool = True,
        scores: Literal["logits", "probabilities"] = "logits",
        device: torch.device | None = None,
    ) -> None:
        # "probabilities": patches add class probabilities (an ensemble's mean), not logits
        self.scores = scores
        self.region = region
        self.origin = tuple(s.start for s in region)
        shape = region_shape(region)
        self.device = device or torch.device("cpu")
        self.logits = _zeroed_buffer("logits", (num_classes, *shape), self.device)
        self.weights = _zeroed_buffer("weights", shape, self.device) if track_weights else None

    def add(self, logits: torch.Tensor, extent: Region, window: torch.Tensor) -> None:
        """Add one patch's logits ``(K, *patch)`` placed at ``extent`` (image coordinates)."""
        overlap = intersect(extent, self.region)
        if overlap is None:
            return
        src = shift(overlap, tuple(s.start for s in extent))
        dst = shift(overlap, self.origin)
        w = window[src]
        self.logits[(slice(None), *dst)].addcmul_(logits[(slice(None), *src)], w)
        if self.weights is not None:
            self.weights[dst] += w

    def labels(self, dtype: np.dtype) -> np.ndarray:
        """Argmax of the blended logits (the caller writes nodata where the input has none).

        Every valid pixel lies in a predicted patch (a patch is skipped only when
        it is entirely nodata), and dividing by the weight sum does not change
        the argmax, so neither coverage nor weights are needed here.
        """
        if self.scores == "probabilities" and self.logits.shape[0] == 1:
            # one blended sigmoid probability: class 1 where its mean is above one half
            if self.weights is None:
                raise RuntimeError("probabilities are blended with weight tracking")
            mean = self.logits[0] / self.weights.clamp_min(1e-12)
            return (mean > 0.5).cpu().numpy().astype(dtype)
        return argmax_channels(self.logits).cpu().numpy().astype(dtype, copy=False)

    def probabilities(self) -> np.ndarray:
        """Class probabilities ``(K, *region)`` float32, NaN where no patch contributed."""
        if self.weights is None:
            raise RuntimeError("accumulator was created without weight tracking")
        mean = self.logits / self.weights.clamp_min(1e-12)
        # blended probabilities are their own weighted mean
        probs = mean if self.scores == "probabilities" else class_probabilities(mean)
        out = probs.cpu().numpy()
        out[:, (self.weights == 0).cpu().numpy()] = np.nan
        return out


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the leading class axis (one channel: a sigmoid), the same in any region.

    torch's softmax over a leading axis rounds a value by the tensor's shape,
    and its sigmoid by where the work is split between threads (vector body or
    scalar tail): an elementwise softmax on one thread gives a pixel the same
    probabilities whatever the region, the chunking or the cores a resumed run
    has.
    """
    with one_thread():
        return softmax(logits, dim=0)


def softmax(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Class probabilities along ``dim`` (one channel: a sigmoid), elementwise per pixel.

    Each value comes from the same elementwise operations wherever it lies in
    the tensor, so a pixel's probabilities do not depend on the batch or the
    patch it was computed in.
    """
    if logits.shape[dim] == 1:
        # torch's sigmoid rounds a value by where it lies (vector body or scalar tail)
        return logits.neg().exp_().add_(1.0).reciprocal_()
    exps = (logits - logits.amax(dim=dim, keepdim=True)).exp_()
    parts = exps.unbind(dim)
    total = parts[0].clone()
    for part in parts[1:]:
        total += part
    return exps.div_(total.unsqueeze(dim))


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the enclosed torch ops on this thread alone (per calling thread under OpenMP)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


ARGMAX_BLOCK_BYTES = 2 * 2**20


def argmax_channels(logits: torch.Tensor) -> torch.Tensor:
    """Index of the largest channel per pixel (first on ties), as uint8/int32.

    One elementwise pass per class over blocks of rows that stay in cache:
    several times faster than ``torch.argmax`` over a leading axis (which
    walks memory with a large stride), and its temporaries are one block in
    size instead of one region. One channel means a sigmoid output: class 1
    where the logit is positive.
    """
    if logits.shape[0] == 1:
        return (logits[0] > 0).to(torch.uint8)
    classes, spatial = logits.shape[0], logits.shape[1:]
    index_dtype = torch.uint8 if classes <= 256 else torch.int32
    device = logits.device
    labels = torch.zeros(spatial, dtype=index_dtype, device=device)
    if labels.numel() == 0:
        return labels
    row_bytes = 4 * classes * labels[0].numel()
    # a GPU takes the region at once: blocks are for a CPU's cache
    rows = max(1, ARGMAX_BLOCK_BYTES // row_bytes) if device.type == "cpu" else spatial[0]
    best = torch.empty((min(rows, spatial[0]), *spatial[1:]), dtype=logits.dtype, device=device)
    better = torch.empty(best.shape, dtype=torch.bool, device=device)
    winner = torch.empty(best.shape, dtype=index_dtype, device=device)
    indices = [torch.tensor(k, dtype=index_dtype, device=device) for k in range(classes)]
    for start in range(0, spatial[0], rows):
        block = logits[:, start : start + rows]
        n = block.shape[1]
        top, wins, won, out = best[:n], better[:n], winner[:n], labels[start : start + n]
        top.copy_(block[0])
        for k in range(1, classes):
            torch.gt(block[k], top, out=wins)
            torch.maximum(top, block[k], out=top)
            # every label so far is below k, so max(label, k where k wins else 0) is the
            # new label: two vectorized passes, where masked_fill_ is 5x slower
            torch.mul(wins, indices[k], out=won)
            torch.maximum(out, won, out=out)
    return labels
