"""Training augmentations for 2-D and 3-D patches: flips, 90-degree rotations, intensity jitter.

Geometric transforms move the image ``(C, *S)`` and its mask ``(*S)`` with
the very same index operations, so they stay aligned pixel for pixel; only
exact ones are used (flips and quarter turns need no interpolation, which
would blur labels). Intensity jitter works on the normalized image (about
zero mean, unit spread), changes only valid pixels, and never touches the mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
import numpy.typing as npt

from segflow.errors import ConfigError


@dataclass(frozen=True)
class AugmentConfig:
    """What to randomise. ``rotate_axes``: spatial axis pairs to turn in (None: all pairs
    of equal size; for anisotropic volumes give only the in-plane pair)."""

    flip: bool = True
    rotate90: bool = True
    rotate_axes: tuple[tuple[int, int], ...] | None = None
    gain: float = 0.1  # per-channel multiplicative jitter, uniform in [1 - gain, 1 + gain]
    bias: float = 0.1  # per-channel additive jitter (std, normalized units)
    noise: float = 0.0  # per-pixel Gaussian noise (std, normalized units)

    def __post_init__(self) -> None:
        for name in ("gain", "bias", "noise"):
            value = getattr(self, name)
            if not 0 <= value < 10:
                raise ConfigError(f"augmentation {name} must be in [0, 10), got {value}")
        if self.gain >= 1:
            raise ConfigError(f"augmentation gain must be below 1, got {self.gain}")

    @property
    def enabled(self) -> bool:
        return self.flip or self.rotate90 or bool(self.gain or self.bias or self.noise)


NO_AUGMENT = AugmentConfig(flip=False, rotate90=False, gain=0.0, bias=0.0, noise=0.0)


def rotation_planes(
    spatial_shape: Sequence[int], axes: Sequence[tuple[int, int]] | None = None
) -> list[tuple[int, int]]:
    """Axis pairs a quarter turn may use: given ones, or every pair whose sizes are equal.

    A quarter turn swaps two axes' sizes, so only square planes keep a batch stackable.
    """
    ndim = len(spatial_shape)
    if axes is not None:
        planes = [(int(a), int(b)) for a, b in axes]
        for a, b in planes:
            if not (0 <= a < ndim and 0 <= b < ndim and a != b):
                raise ConfigError(f"rotation axes {(a, b)} are not two spatial axes of {ndim}")
            if spatial_shape[a] != spatial_shape[b]:
                raise ConfigError(
                    f"rotation in axes {(a, b)} needs a square patch there, got "
                    f"{spatial_shape[a]} x {spatial_shape[b]}"
                )
        return planes
    return [(a, b) for a, b in combinations(range(ndim), 2) if spatial_shape[a] == spatial_shape[b]]


def augment_geometry(
    image: npt.NDArray[Any],
    mask: npt.NDArray[Any],
    rng: np.random.Generator,
    config: AugmentConfig,
) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """Random flips and quarter turns, applied identically to ``image (C, *S)`` and ``mask (*S)``."""
    if image.shape[1:] != mask.shape:
        raise ConfigError(f"image {image.shape[1:]} and mask {mask.shape} patches differ in shape")
    ndim = mask.ndim
    if config.flip:
        for axis in range(ndim):
            if rng.random() < 0.5:
                image = np.flip(image, axis=axis + 1)
                mask = np.flip(mask, axis=axis)
    if config.rotate90:
        planes = rotation_planes(mask.shape, config.rotate_axes)
        if planes:
            a, b = planes[int(rng.integers(len(planes)))]
            k = int(rng.integers(4))
            if k:
                image = np.rot90(image, k=k, axes=(a + 1, b + 1))
                mask = np.rot90(mask, k=k, axes=(a, b))
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def jitter_intensity(
    image: npt.NDArray[np.float32],
    valid: npt.NDArray[np.bool_],
    rng: np.random.Generator,
    config: AugmentConfig,
) -> npt.NDArray[np.float32]:
    """Per-channel gain and bias (and optional noise) on valid pixels of a normalized patch."""
    if not (config.gain or config.bias or config.noise):
        return image
    channels = image.shape[0]
    shape = (channels,) + (1,) * (image.ndim - 1)
    gain = np.asarray(rng.uniform(1 - config.gain, 1 + config.gain, size=channels), np.float32)
    bias = np.asarray(rng.normal(0.0, config.bias, size=channels), np.float32)
    out: npt.NDArray[np.float32] = image * gain.reshape(shape)
    out += bias.reshape(shape)
    if config.noise:
        out += np.asarray(rng.normal(0.0, config.noise, size=image.shape), np.float32)
    out[:, ~valid] = 0.0  # nodata stays the neutral value the engine also feeds
    return out


def augment(
    image: npt.NDArray[np.float32],
    mask: npt.NDArray[Any],
    valid: npt.NDArray[np.bool_],
    rng: np.random.Generator,
    config: AugmentConfig,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[Any]]:
    """Jitter intensities, then flip/turn image and mask together."""
    image = jitter_intensity(image, valid, rng, config)
    return augment_geometry(image, mask, rng, config)
