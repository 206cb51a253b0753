"""Normalization statistics over the training data: global, from a sample of windows.

The engine normalizes every patch with the model's own per-channel mean and
std (never per tile), so the training must measure them once over the whole
training set and store them in the model file. Reading every pixel of a large
scene would cost a full pass; a few dozen random windows spread over all
inputs estimate the mean and std to well under a percent, in bounded memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from segflow.errors import ConfigError, InputDataError
from segflow.io.source import Region, Source
from segflow.models.meta import ModelMeta, Normalization

DEFAULT_WINDOWS = 48
DEFAULT_WINDOW_2D = 256
DEFAULT_WINDOW_3D = 64
MIN_STD = 1e-6


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel statistics of the sampled valid pixels (after scale/offset and clip)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    pixels: int  # valid pixels the mean/std are computed from
    windows: int
    clip: tuple[float, float] | None = None


def coerce_window(window: int | Sequence[int] | None, ndim: int) -> tuple[int, ...]:
    if window is None:
        window = DEFAULT_WINDOW_3D if ndim == 3 else DEFAULT_WINDOW_2D
    sizes = (int(window),) * ndim if isinstance(window, int) else tuple(int(v) for v in window)
    if len(sizes) != ndim or any(s < 1 for s in sizes):
        raise ConfigError(
            f"window must be a positive size per spatial axis ({ndim}), got {window!r}"
        )
    return sizes


def random_region(shape: Sequence[int], size: Sequence[int], rng: np.random.Generator) -> Region:
    """A uniformly placed window of ``size`` (clipped to ``shape``) inside ``shape``."""
    region = []
    for n, s in zip(shape, size, strict=True):
        s = min(s, n)
        start = int(rng.integers(0, n - s + 1))
        region.append(slice(start, start + s))
    return tuple(region)


def allocate_windows(sources: Sequence[Source], total: int) -> list[int]:
    """Windows per source, proportional to its size, at least one each."""
    sizes = np.array([float(np.prod(s.spatial_shape)) for s in sources])
    share = np.maximum(1, np.round(total * sizes / sizes.sum())).astype(int)
    return [int(v) for v in share]


def channel_stats(
    sources: Sequence[Source],
    *,
    windows: int = DEFAULT_WINDOWS,
    window: int | Sequence[int] | None = None,
    seed: int = 0,
    scale: Sequence[float] | None = None,
    offset: Sequence[float] | None = None,
    clip_percentiles: tuple[float, float] | None = None,
    values_per_window: int = 8192,
) -> ChannelStats:
    """Mean and std per channel over valid pixels of random windows of ``sources``.

    Without ``clip_percentiles`` the sums run over every valid pixel of the
    windows (float64). With it, a random subset of ``values_per_window``
    pixels per window gives the clip range (percentiles over all channels,
    e.g. ``(0.5, 99.5)``) and then the mean/std of the clipped values.
    """
    if not sources:
        raise ConfigError("no training inputs to compute normalization statistics from")
    channels = sources[0].channels
    if any(s.channels != channels for s in sources):
        found = sorted({s.channels for s in sources})
        raise ConfigError(f"training inputs differ in channel count {found}; select the same bands")
    if clip_percentiles is not None:
        lo, hi = clip_percentiles
        if not 0 <= lo < hi <= 100:
            raise ConfigError(
                f"clip percentiles must satisfy 0 <= low < high <= 100, got {clip_percentiles}"
            )
    shape = (channels,)
    scale_a = _per_channel(scale, channels, "scale", 1.0)
    offset_a = _per_channel(offset, channels, "offset", 0.0)
    rng = np.random.default_rng(seed)
    total = np.zeros(shape)
    total_sq = np.zeros(shape)
    count = 0
    subsample: list[npt.NDArray[np.float64]] = []
    used = 0
    for source, n in zip(sources, allocate_windows(sources, windows), strict=True):
        size = coerce_window(window, len(source.spatial_shape))
        for _ in range(n):
            result = source.read(random_region(source.spatial_shape, size, rng))
            values = result.data.reshape(channels, -1)[:, result.valid.ravel()].astype(np.float64)
            if values.size == 0:
                continue
            values = values * scale_a[:, None] + offset_a[:, None]
            values = values[:, np.isfinite(values).all(axis=0)]
            used += 1
            if clip_percentiles is None:
                total += values.sum(axis=1)
                total_sq += np.square(values).sum(axis=1)
                count += values.shape[1]
            else:
                k = min(values_per_window, values.shape[1])
                pick = rng.choice(values.shape[1], size=k, replace=False)
                subsample.append(values[:, pick])
    clip: tuple[float, float] | None = None
    if clip_percentiles is not None and subsample:
        values = np.concatenate(subsample, axis=1)
        low, high = np.percentile(values, clip_percentiles)
        clip = (float(low), float(high))
        values = np.clip(values, low, high)
        total, total_sq, count = values.sum(axis=1), np.square(values).sum(axis=1), values.shape[1]
    if count == 0:
        raise InputDataError(
            f"no valid pixels in {windows} sampled windows of the training inputs "
            "(all nodata?); check the nodata value or the band selection"
        )
    mean = total / count
    var = np.maximum(total_sq / count - mean**2, 0.0)
    std = np.maximum(np.sqrt(var), MIN_STD)
    return ChannelStats(
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        pixels=int(count),
        windows=used,
        clip=clip,
    )


def compute_normalization(
    sources: Sequence[Source],
    *,
    windows: int = DEFAULT_WINDOWS,
    window: int | Sequence[int] | None = None,
    seed: int = 0,
    scale: Sequence[float] | None = None,
    offset: Sequence[float] | None = None,
    clip_percentiles: tuple[float, float] | None = None,
) -> Normalization:
    """The :class:`Normalization` a model trained on ``sources`` carries in its file."""
    stats = channel_stats(
        sources,
        windows=windows,
        window=window,
        seed=seed,
        scale=scale,
        offset=offset,
        clip_percentiles=clip_percentiles,
    )
    channels = len(stats.mean)
    return Normalization(
        mean=stats.mean,
        std=stats.std,
        scale=None
        if scale is None
        else tuple(_per_channel(scale, channels, "scale", 1.0).tolist()),
        offset=None
        if offset is None
        else tuple(_per_channel(offset, channels, "offset", 0.0).tolist()),
        clip=stats.clip,
    )


def label_counts(
    masks: Sequence[Source],
    num_classes: int,
    *,
    ignore_values: Sequence[int] = (),
    windows: int = DEFAULT_WINDOWS,
    window: int | Sequence[int] | None = None,
    seed: int = 0,
) -> npt.NDArray[np.int64]:
    """Pixels per class in random windows of the label sources (for class weights).

    Values in ``ignore_values`` and the masks' invalid pixels are not counted;
    other values outside the classes are too, they are reported by the sampler.
    """
    rng = np.random.default_rng(seed)
    counts = np.zeros(num_classes, dtype=np.int64)
    for source, n in zip(masks, allocate_windows(masks, windows), strict=True):
        size = coerce_window(window, len(source.spatial_shape))
        for _ in range(n):
            result = source.read(random_region(source.spatial_shape, size, rng))
            labels = result.data[0][result.valid].astype(np.int64).ravel()
            if ignore_values:
                labels = labels[~np.isin(labels, list(ignore_values))]
            labels = labels[(labels >= 0) & (labels < num_classes)]
            counts += np.bincount(labels, minlength=num_classes)
    return counts


def set_model_normalization(path: str | Path, normalization: Normalization) -> str:
    """Write ``normalization`` into an existing segflow model file; returns its new sha256."""
    from segflow.models import load_model, save_model

    loaded = load_model(path)
    if loaded.runtime != "torch":
        raise ConfigError(
            f"{Path(path).name} is a {loaded.runtime} export; set normalization in its sidecar"
        )
    if len(normalization.mean) != loaded.meta.in_channels:
        raise ConfigError(
            f"normalization has {len(normalization.mean)} channels, the model takes "
            f"{loaded.meta.in_channels}"
        )
    meta = ModelMeta.model_validate(
        {**loaded.meta.model_dump(), "normalization": normalization.model_dump()}
    )
    return save_model(loaded.module, meta, path)


def _per_channel(
    values: Sequence[float] | None, channels: int, name: str, default: float
) -> npt.NDArray[np.float64]:
    if values is None:
        return np.full(channels, default)
    out = np.asarray([float(v) for v in values], dtype=np.float64)
    if out.size == 1:
        out = np.repeat(out, channels)
    if out.size != channels:
        raise ConfigError(f"{name} has {out.size} values for {channels} channels")
    return out
