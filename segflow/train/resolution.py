"""The resolution a model is trained at: read from the training inputs, or given.

A segflow run resamples each input to the spacing (volumes, mm per model axis)
or ground resolution (rasters, metres per pixel) its model declares, so
training records what its inputs had. Training does not resample, so inputs
that disagree teach the model a mix of scales:

* within 1 % (the engine's own tolerance): one scale, nothing to say;
* up to 1.5x apart on an axis: a one-line warning; the median is recorded;
* further apart: a one-line error, unless the user gives ``--spacing`` /
  ``--resolution`` (then that is recorded, with a warning if the data disagree).

A raster model records one resolution; non-square pixels (a geographic CRS away
from the equator) are summarised by their geometric mean, with a warning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segflow.engine.resample import SPACING_TOLERANCE, geometry_spacing
from segflow.errors import ConfigError
from segflow.train.sampling import OpenPair

MAX_SPREAD = 1.5  # largest/smallest pixel size per axis before inputs count as other scales


@dataclass(frozen=True)
class TrainingResolution:
    """What the model file records, where it came from, and what to tell the user."""

    spacing: tuple[float, ...] | None = None  # volumes: mm per model axis
    resolution: float | None = None  # rasters: ground metres per pixel
    provenance: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def meta_fields(self) -> dict[str, Any]:
        return {"spacing": self.spacing, "resolution": self.resolution}


def training_resolution(
    pairs: Sequence[OpenPair],
    *,
    model_dims: int,
    slice_axis: int | None = None,
    spacing: tuple[float, ...] | None = None,
    resolution: float | None = None,
) -> TrainingResolution:
    """The spacing/resolution of ``pairs`` in the model's axes, or the one given.

    ``slice_axis``: the file axis a 2-D model slices volumes along (its spacing
    is not the model's). Raises ConfigError for an override of the wrong kind
    and for inputs at clearly different scales without an override.
    """
    images = list({str(p.image.path): p for p in pairs}.values())
    volumes = images[0].image.kind == "volume"
    _check_override_kind(volumes, spacing, resolution)
    unit = "mm" if volumes else "m"
    found = {str(p.image.path): _model_axes_spacing(p, slice_axis) for p in images}
    known = {name: s for name, s in found.items() if s is not None}
    given = _given(volumes, spacing, resolution, model_dims)
    unknown = len(known) < len(found) and given is None  # given: nothing more to say
    notes = [_unknown_note(found, known, volumes)] if unknown else []
    seen = _seen(known, unit, given is not None, notes)
    if seen is not None and not volumes:
        seen = _square(seen, notes if given is None else [])
    if given is not None and seen is not None and not _close(given, seen):
        notes.append(
            f"recording the given {'spacing' if volumes else 'resolution'} {_sizes(given, unit)}; "
            f"the training inputs are {_sizes(seen, unit)}"
        )
    value = given if given is not None else seen
    provenance = _provenance(given is not None, known)
    if value is None:
        return TrainingResolution(provenance=provenance, warnings=tuple(notes))
    if volumes:
        return TrainingResolution(spacing=value, provenance=provenance, warnings=tuple(notes))
    return TrainingResolution(resolution=value[0], provenance=provenance, warnings=tuple(notes))


def _provenance(given: bool, known: dict[str, tuple[float, ...]]) -> dict[str, Any]:
    """Where the recorded value came from, and the range the inputs spanned."""
    recorded: dict[str, Any] = {"from": "given" if given else "training data" if known else "none"}
    if known:
        stacked = np.array(list(known.values()))
        recorded["inputs"] = len(known)
        recorded["smallest"] = [_round(v) for v in stacked.min(axis=0)]
        recorded["largest"] = [_round(v) for v in stacked.max(axis=0)]
    return recorded


def _check_override_kind(
    volumes: bool, spacing: tuple[float, ...] | None, resolution: float | None
) -> None:
    if volumes and resolution is not None:
        raise ConfigError(
            "--resolution is the ground size of raster pixels, but the training inputs are "
            "volumes; give their voxel spacing with --spacing"
        )
    if not volumes and spacing is not None:
        raise ConfigError(
            "--spacing is the voxel size of volumes, but the training inputs are rasters; "
            "give their ground pixel size with --resolution"
        )


def _model_axes_spacing(pair: OpenPair, slice_axis: int | None) -> tuple[float, ...] | None:
    """The pair's sample spacing along the model's axes (None: the file has none)."""
    found = geometry_spacing(pair.image.geometry, pair.spatial_shape)
    if found is None or pair.image.kind == "raster":
        return found
    if pair.transform is not None:  # model axis d is file axis perm[d]
        found = tuple(found[p] for p in pair.transform.perm)
    if slice_axis is not None:
        found = tuple(s for a, s in enumerate(found) if a != slice_axis)
    return found


def _given(
    volumes: bool, spacing: tuple[float, ...] | None, resolution: float | None, axes: int
) -> tuple[float, ...] | None:
    """The override as one value per model axis (rasters: the one resolution)."""
    if resolution is not None:
        return (float(resolution),)
    if spacing is None:
        return None
    if len(spacing) == 1:
        return (float(spacing[0]),) * axes
    if len(spacing) != axes:
        raise ConfigError(
            f"--spacing needs 1 or {axes} values (mm per axis of the {axes}-D model), "
            f"got {len(spacing)}"
        )
    return tuple(float(s) for s in spacing)


def _seen(
    known: dict[str, tuple[float, ...]], unit: str, overridden: bool, notes: list[str]
) -> tuple[float, ...] | None:
    """The median spacing of the inputs; a note or an error where they disagree."""
    if not known:
        return None
    stacked = np.array(list(known.values()))
    median = tuple(_round(v) for v in np.median(stacked, axis=0))
    lo, hi = stacked.min(axis=0), stacked.max(axis=0)
    spread = float(np.max(hi / lo))
    if spread <= 1 + SPACING_TOLERANCE:
        return median
    names = list(known)
    sizes = stacked.prod(axis=1)
    small, large = names[int(np.argmin(sizes))], names[int(np.argmax(sizes))]
    span = f"from {_sizes(known[small], unit)} ({small}) to {_sizes(known[large], unit)} ({large})"
    option = "--spacing" if unit == "mm" else "--resolution"
    if spread > MAX_SPREAD and not overridden:
        raise ConfigError(
            f"the training inputs are at different scales, {span}; resample them to one, "
            f"or pass {option} to say which the model is for"
        )
    if not overridden:
        notes.append(
            f"the training inputs differ in pixel size, {span}; recording the median "
            f"{_sizes(median, unit)} (pass {option} to record another)"
        )
    return median


def _square(value: tuple[float, ...], notes: list[str]) -> tuple[float, ...]:
    """A raster's (y, x) size as one resolution: the geometric mean, noted when not square."""
    y, x = value
    mean = _round(math.sqrt(y * x))
    if abs(y / x - 1) > SPACING_TOLERANCE:
        notes.append(
            f"the training pixels are {_sizes(value, 'm')} (y x x), not square; the model "
            f"records their geometric mean {mean:.4g} m"
        )
    return (mean,)


def _unknown_note(
    found: dict[str, tuple[float, ...] | None], known: dict[str, tuple[float, ...]], volumes: bool
) -> str:
    missing = [name for name, s in found.items() if s is None]
    if not known:
        return (
            "the training inputs have no pixel size (not georeferenced), so the model declares "
            "no resolution and runs will not resample"
            + ("" if volumes else "; pass --resolution to declare one")
        )
    return (
        f"{len(missing)} training input(s) have no pixel size (e.g. {missing[0]}, not "
        f"georeferenced); the recorded resolution comes from the other {len(known)}"
    )


def _close(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(abs(x / y - 1) <= SPACING_TOLERANCE for x, y in zip(a, b, strict=True))


def _sizes(values: Sequence[float], unit: str) -> str:
    return " x ".join(f"{v:.4g}" for v in values) + f" {unit}"


def _round(value: float) -> float:
    """Six significant digits: a ground size at the scene centre is not known better."""
    return float(f"{float(value):.6g}")
