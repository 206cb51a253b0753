"""What a training run works on: the opened image/mask pairs, patch shapes and classes.

Opening the data decides the model's dimensionality (a 2-D model on volumes
trains on slices), the orientation volumes train in, the hold-out split and,
when not given, the classes (from the labels the masks hold).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from segflow.errors import ConfigError
from segflow.models.archs import arch_spec
from segflow.models.meta import ClassInfo, default_colors
from segflow.train.batches import squeeze_axis_of
from segflow.train.config import TrainConfig
from segflow.train.resolution import TrainingResolution, training_resolution
from segflow.train.sampling import (
    OpenPair,
    PatchSampler,
    find_pairs,
    open_pair,
    random_region_in,
    split_holdout,
)
from segflow.train.stats import coerce_window


@dataclass
class TrainData:
    """The opened training inputs and the shapes the model trains on."""

    train_pairs: list[OpenPair]
    val_pairs: list[OpenPair]
    orientation: str | None  # volumes trained in 3-D: the axis codes of the model
    model_dims: int
    patch: tuple[int, ...]  # model axes
    sampler_patch: tuple[int, ...]  # sampler axes: a 1 along the slice axis for 2-D on volumes
    classes: list[ClassInfo]
    band_names: tuple[str, ...] | None
    sampler: PatchSampler
    validator: PatchSampler
    resolution: TrainingResolution  # what the model file records as its spacing/resolution

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def squeeze_axis(self) -> int | None:
        """The sampler axis a 2-D model on volumes drops (None when model and data agree)."""
        return squeeze_axis_of(self.sampler_patch, self.patch)


def open_training_data(config: TrainConfig) -> TrainData:
    probe = open_pair(find_pairs(config.images, config.masks)[0], bands=config.bands)
    data_dims = len(probe.spatial_shape)
    model_dims = _model_dims(config.arch, data_dims)
    train_pairs, val_pairs, orientation = _open_pairs(
        config, model_dims if data_dims == 3 else None
    )
    patch, sampler_patch = _patch_shapes(config, data_dims, model_dims)
    resolution = training_resolution(
        [*train_pairs, *val_pairs],
        model_dims=model_dims,
        slice_axis=squeeze_axis_of(sampler_patch, patch),
        spacing=config.spacing,
        resolution=config.resolution,
    )
    classes = _infer_classes(config, train_pairs)
    sampler = PatchSampler(
        train_pairs,
        sampler_patch,
        len(classes),
        ignore_index=config.ignore_index,
        balance=config.balance,
    )
    validator = PatchSampler(
        val_pairs, sampler_patch, len(classes), ignore_index=config.ignore_index
    )
    band_names = tuple(probe.image.band_names) if probe.image.kind == "raster" else None
    return TrainData(
        train_pairs, val_pairs, orientation, model_dims, patch, sampler_patch, classes,
        band_names, sampler, validator, resolution,
    )  # fmt: skip


def _open_pairs(
    config: TrainConfig, model_dims: int | None
) -> tuple[list[OpenPair], list[OpenPair], str | None]:
    train_pairs = find_pairs(config.images, config.masks)
    first = open_pair(train_pairs[0], bands=config.bands, nodata=config.nodata)
    orientation = None
    if first.image.kind == "volume" and model_dims == 3:
        geometry: Any = first.image.geometry
        orientation = config.orientation or "".join(geometry.orientation)
    opened = [
        open_pair(p, bands=config.bands, nodata=config.nodata, orientation=orientation)
        for p in train_pairs
    ]
    if config.val_images or config.val_masks:
        val = [
            open_pair(p, bands=config.bands, nodata=config.nodata, orientation=orientation)
            for p in find_pairs(config.val_images, config.val_masks)
        ]
        return opened, val, orientation
    splits = [split_holdout(p, config.val_fraction) for p in opened]
    return [t for t, _ in splits], [v for _, v in splits], orientation


def _model_dims(arch: str, data_dims: int) -> int:
    dims = arch_spec(arch).spatial_dims
    if data_dims in dims:
        return data_dims
    if data_dims == 3 and 2 in dims:
        return 2  # a 2-D model trains on slices of the volumes
    raise ConfigError(
        f"{arch} is a 3-D model but the training inputs are 2-D rasters; use a 2-D arch"
    )


def _patch_shapes(
    config: TrainConfig, data_dims: int, model_dims: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(patch in model axes, patch in sampler axes with a 1 along the slice axis)."""
    default = 64 if model_dims == 3 else 256
    size = config.patch_size or default
    patch = (size,) * model_dims if isinstance(size, int) else tuple(int(v) for v in size)
    if len(patch) != model_dims:
        raise ConfigError(f"patch size {size} has {len(patch)} axes; the model is {model_dims}-D")
    if data_dims == model_dims:
        return patch, patch
    if config.slice_axis not in (0, 1, 2):
        raise ConfigError(f"slice axis must be 0, 1 or 2, got {config.slice_axis}")
    sampler_patch = list(patch)
    sampler_patch.insert(config.slice_axis, 1)
    return patch, tuple(sampler_patch)


def _infer_classes(config: TrainConfig, pairs: Sequence[OpenPair]) -> list[ClassInfo]:
    if config.classes:
        return list(config.classes)
    rng = np.random.default_rng(config.seed)
    top = -1
    for pair in pairs:
        size = coerce_window(None, len(pair.spatial_shape))
        for _ in range(max(1, config.stats_windows // len(pairs))):
            result = pair.mask.read(random_region_in(pair.extent(), size, rng))
            labels = result.data[0][result.valid]
            labels = labels[labels != config.ignore_index]
            if labels.size:
                top = max(top, int(labels.max()))
    if top < 0:
        raise ConfigError("the masks hold no labels in the sampled windows; pass the class names")
    colors = default_colors(top + 1)
    return [ClassInfo(name=f"class{i}", color=colors[i]) for i in range(top + 1)]
