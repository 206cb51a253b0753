"""Regions resampled to the model's spacing and the blended scores back, chunk-invariantly.

A model trained at another spacing than the input's sees a *model grid*: the same
extent as the input, ``M = round(N * input_spacing / model_spacing)`` samples per
axis (at least one), sample centres spread evenly over the extent (the
``align_corners=False`` convention of ``torch.nn.functional.interpolate``, edges
replicated). The global patch grid, the prediction and the blend all live on it;
the engine writes the input's own grid.

Why the output cannot depend on where region borders fall:

* Every interpolation is linear along one axis at a time, in a fixed axis order,
  with source indices and weights from *global* tables (one per axis and pair of
  sizes, computed in float64 from global indices). A sample's value therefore
  depends only on its global position and the global values it reads, never on
  the window it is computed in: ``index_select`` and ``lerp`` are elementwise.
* Input -> model happens per patch: a patch's model-grid input comes from the input
  samples its global table names, so a patch is the same tensor in every region
  (and the existing "every pixel sums the same patches in the same order" holds
  on the model grid).
* Model -> input happens per region: each output voxel reads the two nearest
  model samples per axis of the *normalized* blend (class probabilities, never
  labels), and a model sample's blend is the same in every region. A region's
  model-grid box is the back-support of its output voxels, so it always holds
  every model sample they read.
* Nodata: a model sample is valid when an input voxel whose back-support holds it
  is valid. A patch is skipped only when all its samples are invalid, so every
  sample a valid output voxel reads belongs to a predicted patch; the decision is
  made from the whole patch (the region reads the input under all its patches),
  so it is global too. Invalid input voxels enter the interpolation as 0, the
  normalized mean, exactly as in patches without resampling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
import torch

from segflow.engine.blend import argmax_channels
from segflow.engine.grid import Region, clip
from segflow.io.source import Geometry, RasterGeometry, VolumeGeometry

Table = tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float32]]

SPACING_TOLERANCE = 0.01  # relative: closer than 1 % is the model's own spacing
METRES_PER_DEGREE = 111_320.0  # along a meridian, and along the equator


@lru_cache(maxsize=64)
def lerp_table(n_src: int, n_dst: int) -> Table:
    """For each of ``n_dst`` samples: the two source samples and the second's weight.

    Sample centres at ``(j + 0.5) * n_src / n_dst - 0.5`` in source samples,
    clamped to the source (edge samples replicate), as torch's linear
    interpolation with ``align_corners=False``.
    """
    dst = np.arange(n_dst, dtype=np.float64)
    src = np.clip((dst + 0.5) * (n_src / n_dst) - 0.5, 0.0, n_src - 1.0)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_src - 1)
    return lo, hi, (src - lo).astype(np.float32)


@lru_cache(maxsize=64)
def validity_windows(n_input: int, n_model: int) -> tuple[npt.NDArray[np.int64], ...]:
    """Per model sample ``j``: the input samples ``[start, stop)`` whose back-support holds ``j``."""
    lo, hi, _ = lerp_table(n_model, n_input)  # input sample i reads model samples lo[i], hi[i]
    j = np.arange(n_model)
    start = np.searchsorted(hi, j, side="left")  # first i with hi[i] >= j
    stop = np.searchsorted(lo, j, side="right")  # first i with lo[i] > j
    return start.astype(np.int64), np.maximum(stop, start).astype(np.int64)


@dataclass(frozen=True)
class ModelSpace:
    """The model grid of one input: its shape, and the spacings it was made from."""

    input_shape: tuple[int, ...]
    model_shape: tuple[int, ...]
    input_spacing: tuple[float, ...]
    model_spacing: tuple[float, ...]

    @property
    def resampled_axes(self) -> tuple[int, ...]:
        return tuple(
            a
            for a, (n, m) in enumerate(zip(self.input_shape, self.model_shape, strict=True))
            if n != m
        )

    @property
    def max_zoom(self) -> float:
        """Largest model samples per input sample (above 1: the model grid is finer)."""
        return max(m / n for n, m in zip(self.input_shape, self.model_shape, strict=True))

    def grid_region(self, region: Region) -> Region:
        """The model-grid box holding every sample the output voxels of ``region`` read."""
        box = []
        for axis, sl in enumerate(region):
            n, m = self.input_shape[axis], self.model_shape[axis]
            if n == m:
                box.append(sl)
                continue
            lo, hi, _ = lerp_table(m, n)
            box.append(slice(int(lo[sl.start]), int(hi[sl.stop - 1]) + 1))
        return tuple(box)

    def read_region(self, box: Region) -> Region:
        """The input a model-grid ``box`` needs: its interpolation support and validity windows."""
        box = clip(box, self.model_shape)
        out = []
        for axis, sl in enumerate(box):
            n, m = self.input_shape[axis], self.model_shape[axis]
            if n == m:
                out.append(sl)
                continue
            lo, hi, _ = lerp_table(n, m)
            start, stop = validity_windows(n, m)
            first = min(int(lo[sl.start]), int(start[sl].min()))
            last = max(int(hi[sl.stop - 1]) + 1, int(stop[sl].max()))
            out.append(slice(first, last))
        return clip(tuple(out), self.input_shape)

    def input_support(self, box: Region) -> Region:
        """The input samples the interpolation of a model-grid ``box`` (inside the grid) reads."""
        out = []
        for axis, sl in enumerate(box):
            n, m = self.input_shape[axis], self.model_shape[axis]
            if n == m:
                out.append(sl)
                continue
            lo, hi, _ = lerp_table(n, m)
            out.append(slice(int(lo[sl.start]), int(hi[sl.stop - 1]) + 1))
        return tuple(out)

    def to_model(self, values: torch.Tensor, origin: Sequence[int], box: Region) -> torch.Tensor:
        """``(C, *window)`` input samples starting at ``origin`` -> ``(C, *box)`` model samples."""
        return _resample(values, origin, box, self.input_shape, self.model_shape)

    def to_input(self, scores: torch.Tensor, origin: Sequence[int], region: Region) -> torch.Tensor:
        """``(K, *box)`` model samples starting at ``origin`` -> ``(K, *region)`` input samples."""
        return _resample(scores, origin, region, self.model_shape, self.input_shape)

    def grid_validity(
        self, valid: npt.NDArray[np.bool_], origin: Sequence[int], box: Region
    ) -> npt.NDArray[np.bool_]:
        """Valid model samples of ``box``: those a valid input voxel reads.

        ``valid`` covers ``read_region(box)`` from ``origin``. Separable: along each
        axis a sample is valid when its window holds a valid sample (a prefix sum
        counts them), so after every axis it is "any valid in the product window".
        """
        box = clip(box, self.model_shape)
        if valid.all():  # every window with an input sample in it: the same answer, faster
            return _nonempty_windows(self, box)
        counts = valid.astype(np.int32)
        for axis, sl in enumerate(box):
            n, m = self.input_shape[axis], self.model_shape[axis]
            if n == m:
                counts = np.take(counts, np.arange(sl.start, sl.stop) - origin[axis], axis=axis)
                continue
            start, stop = (w[sl] - origin[axis] for w in validity_windows(n, m))
            cumulative = np.cumsum(counts, axis=axis, dtype=np.int32)
            zero = np.zeros_like(np.take(cumulative, [0], axis=axis))
            padded = np.concatenate([zero, cumulative], axis=axis)
            counts = np.take(padded, stop, axis=axis) - np.take(padded, start, axis=axis)
        return counts > 0


def _nonempty_windows(space: ModelSpace, box: Region) -> npt.NDArray[np.bool_]:
    """Model samples of ``box`` whose validity window holds any input sample at all."""
    out = np.ones((), dtype=np.bool_)
    for axis, sl in enumerate(box):
        n, m = space.input_shape[axis], space.model_shape[axis]
        if n == m:
            axis_ok = np.ones(sl.stop - sl.start, dtype=np.bool_)
        else:
            start, stop = validity_windows(n, m)
            axis_ok = stop[sl] > start[sl]
        out = out[..., None] & axis_ok
    return out


def _resample(
    values: torch.Tensor,
    origin: Sequence[int],
    target: Region,
    n_src: Sequence[int],
    n_dst: Sequence[int],
) -> torch.Tensor:
    """Linear resampling along each axis in turn, from global tables (see the module notes).

    The axes go in an order fixed by the global sizes alone (``axis_order``), so
    a sample's value never depends on the window; the order keeps the tensors
    small while the costly last axis is interpolated.
    """
    out = values
    for axis in axis_order(tuple(n_src), tuple(n_dst)):
        sl, dim = target[axis], axis + 1  # the channel axis comes first
        if n_src[axis] == n_dst[axis]:
            out = out.narrow(dim, sl.start - origin[axis], sl.stop - sl.start)
            continue
        lo_table, hi_table, weight_table = device_table(n_src[axis], n_dst[axis], out.device)
        lo, hi, weight = lo_table[sl], hi_table[sl], weight_table[sl]
        shape = [1] * out.ndim
        shape[dim] = -1
        # advanced indexing gathers along the last axis several times faster than index_select
        first = out[_along(dim, lo - origin[axis])]
        second = out[_along(dim, hi - origin[axis])]
        out = torch.lerp(first, second, weight.reshape(shape))
    return out.contiguous()


DeviceTable = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@lru_cache(maxsize=64)
def device_table(n_src: int, n_dst: int, device: torch.device) -> DeviceTable:
    """:func:`lerp_table` as tensors on ``device``: copied there once per pair of sizes.

    On the CPU the tensors share the table's memory, so both paths use the same
    indices and weights.
    """
    return tuple(  # type: ignore[return-value]
        torch.from_numpy(part).to(device) for part in lerp_table(n_src, n_dst)
    )


def _along(dim: int, indices: torch.Tensor) -> tuple[slice | torch.Tensor, ...]:
    """The index that picks ``indices`` along ``dim``."""
    return (*(slice(None),) * dim, indices)


@lru_cache(maxsize=64)
def axis_order(n_src: tuple[int, ...], n_dst: tuple[int, ...]) -> tuple[int, ...]:
    """The order ``_resample`` visits the axes in: unchanged, then shrinking, then growing ones.

    Shrinking axes go first to last (the last axis on the smallest tensor),
    growing ones last to first (the last axis before the tensor grows).
    """
    same = [a for a in range(len(n_src)) if n_src[a] == n_dst[a]]
    shrink = [a for a in range(len(n_src)) if n_dst[a] < n_src[a]]
    grow = [a for a in reversed(range(len(n_src))) if n_dst[a] > n_src[a]]
    return (*same, *shrink, *grow)


def scores_labels(probabilities: torch.Tensor) -> torch.Tensor:
    """Labels of resampled class probabilities (one channel: a sigmoid, class 1 above 0.5)."""
    if probabilities.shape[0] == 1:
        return (probabilities[0] > 0.5).to(torch.uint8)
    return argmax_channels(probabilities)


def geometry_spacing(geometry: Geometry, shape: Sequence[int] = (0, 0)) -> tuple[float, ...] | None:
    """Sample spacing per array axis: mm for volumes, ground metres for rasters (None: unknown).

    ``shape`` (a raster's (y, x) size) places the scene centre for a geographic CRS.
    """
    if isinstance(geometry, VolumeGeometry):
        affine = np.asarray(geometry.affine, dtype=np.float64)[:3, :3]
        return tuple(float(v) for v in np.linalg.norm(affine, axis=0))
    if isinstance(geometry, RasterGeometry):
        return raster_pixel_size(geometry, (shape[0], shape[1]))
    return None


def raster_pixel_size(
    geometry: RasterGeometry, shape: tuple[int, int] = (0, 0)
) -> tuple[float, float] | None:
    """(y, x) pixel size in metres; for a geographic CRS the ground size at the scene centre.

    Without georeferencing the size is unknown.
    """
    if not geometry.georeferenced:
        return None
    a, b, _, d, e, f = geometry.transform
    size_y, size_x = math.hypot(b, e), math.hypot(a, d)
    if not _is_geographic(geometry.crs_wkt):
        return size_y, size_x
    centre_lat = f + d * shape[1] / 2 + e * shape[0] / 2
    cos_lat = max(math.cos(math.radians(centre_lat)), 1e-6)
    return size_y * METRES_PER_DEGREE, size_x * METRES_PER_DEGREE * cos_lat


def _is_geographic(crs_wkt: str | None) -> bool:
    text = (crs_wkt or "").lstrip().upper()
    return text.startswith(("GEOGCS", "GEOGCRS", "GEOGRAPHICCRS"))


def model_space(
    shape: Sequence[int], input_spacing: Sequence[float], model_spacing: Sequence[float]
) -> ModelSpace | None:
    """The model grid of an input, or None where every axis is within the tolerance."""
    sizes = []
    for n, s_in, s_model in zip(shape, input_spacing, model_spacing, strict=True):
        close = abs(s_in / s_model - 1.0) <= SPACING_TOLERANCE
        sizes.append(n if close else max(1, round(n * s_in / s_model)))
    if tuple(sizes) == tuple(shape):
        return None
    return ModelSpace(
        input_shape=tuple(shape),
        model_shape=tuple(sizes),
        input_spacing=tuple(float(s) for s in input_spacing),
        model_spacing=tuple(float(s) for s in model_spacing),
    )


__all__ = [
    "SPACING_TOLERANCE",
    "ModelSpace",
    "device_table",
    "geometry_spacing",
    "lerp_table",
    "model_space",
    "raster_pixel_size",
    "scores_labels",
    "validity_windows",
]
