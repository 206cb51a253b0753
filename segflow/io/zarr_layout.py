"""What a segflow store holds and where: the layout value, array paths, chunk sizes.

Pure values and arithmetic; nothing here touches a store. :mod:`segflow.io.zarr_write`
creates the arrays these describe, :mod:`segflow.io.zarr_sink` writes into them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from segflow.errors import ConfigError
from segflow.io import zarr_meta as meta
from segflow.io.classes import ClassInfo
from segflow.io.source import Geometry, RasterGeometry, VolumeGeometry
from segflow.options import ProbabilityMode, parse_zarr_format

DONE_PATH = "_segflow/done"  # per-chunk completion record
CHUNK_KEY_ENCODING: dict[str, Any] = {"name": "default", "separator": "/"}
CHUNK_KEY_ENCODING_V2: dict[str, Any] = {"name": "v2", "separator": "/"}  # GDAL reads both
PROBABILITY_CHUNK_BYTES = 8 * 2**20  # target raw size of one probabilities object
COORD_CHUNK = 2**20
ZSTD_LEVEL = 3

StoreKind = Literal["raster", "volume"]


@dataclass(frozen=True)
class OutputLayout:
    """What the store holds and how it is chunked."""

    spatial_shape: tuple[int, ...]  # (y, x) for rasters, (i, j, k) voxel axes for volumes
    chunk_shape: tuple[int, ...]  # spatial chunk shape of the output arrays
    num_classes: int
    write_labels: bool = True
    probabilities: ProbabilityMode = ProbabilityMode.NONE
    zarr_format: int = 3  # 2 for raster stores that GDAL 3.10 (and so QGIS) opens
    uncertainty: bool = False  # a uint8 array of the normalized entropy (engine.uncertainty)

    def __post_init__(self) -> None:
        object.__setattr__(self, "spatial_shape", tuple(int(s) for s in self.spatial_shape))
        object.__setattr__(self, "chunk_shape", tuple(int(c) for c in self.chunk_shape))
        object.__setattr__(self, "probabilities", ProbabilityMode.parse(self.probabilities))
        if len(self.spatial_shape) not in (2, 3) or any(s < 1 for s in self.spatial_shape):
            raise ConfigError(
                f"output shape must be 2 or 3 positive sizes, got {self.spatial_shape}"
            )
        if len(self.chunk_shape) != len(self.spatial_shape) or any(c < 1 for c in self.chunk_shape):
            raise ConfigError(
                f"chunk shape {self.chunk_shape} must have one positive size per axis of "
                f"{self.spatial_shape}"
            )
        if not 1 <= self.num_classes <= 65535:
            raise ConfigError(f"num_classes must be 1..65535, got {self.num_classes}")
        if (
            not (self.write_labels or self.uncertainty)
            and self.probabilities is ProbabilityMode.NONE
        ):
            raise ConfigError("nothing to write: enable labels, probabilities or uncertainty")
        object.__setattr__(self, "zarr_format", parse_zarr_format(self.zarr_format))

    @property
    def chunk_grid_shape(self) -> tuple[int, ...]:
        return tuple(
            math.ceil(s / c) for s, c in zip(self.spatial_shape, self.chunk_shape, strict=True)
        )

    @property
    def clipped_chunks(self) -> tuple[int, ...]:
        """Spatial chunks of the stored arrays: never larger than the image."""
        return tuple(min(c, s) for c, s in zip(self.chunk_shape, self.spatial_shape, strict=True))

    @property
    def label_dtype(self) -> np.dtype[Any]:
        return meta.label_dtype_for(self.num_classes)

    @property
    def label_nodata(self) -> int:
        return int(np.iinfo(self.label_dtype).max)

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> OutputLayout:
        """The layout recorded in a store's ``segflow`` attribute."""
        return cls(
            spatial_shape=tuple(attrs["spatial_shape"]),
            chunk_shape=tuple(attrs["chunk_shape"]),
            num_classes=int(attrs["num_classes"]),
            write_labels=bool(attrs["write_labels"]),
            probabilities=ProbabilityMode.parse(attrs["probabilities"]),
            zarr_format=int(attrs.get("zarr_format", 3)),  # stores before the choice: v3
            uncertainty=bool(attrs.get("uncertainty", False)),  # recorded only when written
        )

    def to_attrs(self) -> dict[str, Any]:
        """The layout as recorded; ``uncertainty`` only when written, so stores without it
        keep the attributes they had before it existed."""
        attrs = asdict(self)
        if not self.uncertainty:
            del attrs["uncertainty"]
        return attrs


@dataclass(frozen=True)
class ProbabilitySpec:
    """Shape, chunks, dtype and fill of the stored probabilities array."""

    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype[Any]
    fill: int | float


def probability_spec(layout: OutputLayout) -> ProbabilitySpec:
    """All classes share one object unless it would exceed ~8 MiB (e.g. hundreds of classes)."""
    uint8 = layout.probabilities is ProbabilityMode.UINT8
    dtype = np.dtype(np.uint8 if uint8 else np.float16)
    per_class = math.prod(layout.clipped_chunks) * dtype.itemsize
    class_chunk = max(1, min(layout.num_classes, PROBABILITY_CHUNK_BYTES // per_class))
    return ProbabilitySpec(
        shape=(layout.num_classes, *layout.spatial_shape),
        chunks=(class_chunk, *layout.clipped_chunks),
        dtype=dtype,
        fill=255 if uint8 else math.nan,
    )


def geometry_kind(geometry: Geometry) -> StoreKind:
    if isinstance(geometry, RasterGeometry):
        return "raster"
    if isinstance(geometry, VolumeGeometry):
        return "volume"
    raise ConfigError(f"unsupported geometry {type(geometry).__name__}")


def array_paths(layout: OutputLayout, kind: StoreKind) -> dict[str, str | None]:
    """Where labels, probabilities, uncertainty and the completion record live in a store
    of ``kind`` (uncertainty only when written)."""
    labels = None
    if layout.write_labels:
        labels = "labels" if kind == "raster" else "0"
    probabilities = None
    if layout.probabilities is not ProbabilityMode.NONE:
        probabilities = "probabilities" if kind == "raster" else "probabilities/0"
    paths = {"labels": labels, "probabilities": probabilities, "done": DONE_PATH}
    if layout.uncertainty:
        paths["uncertainty"] = "uncertainty" if kind == "raster" else "uncertainty/0"
    return paths


def build_info(
    layout: OutputLayout,
    geometry: Geometry,
    classes: Sequence[ClassInfo],
    attrs: Mapping[str, Any],
    fingerprint: str,
) -> dict[str, Any]:
    """The root ``segflow`` attribute of a new store, after checking the pieces fit."""
    kind = geometry_kind(geometry)
    ndim = 2 if kind == "raster" else 3
    if len(layout.spatial_shape) != ndim:
        raise ConfigError(f"a {kind} output needs {ndim} spatial axes, got {layout.spatial_shape}")
    if kind == "volume" and layout.zarr_format != 3:
        raise ConfigError(
            "volumes are written as OME-Zarr 0.5, which is Zarr v3; --zarr-format 2 is for "
            "rasters (GDAL, QGIS): leave it out for volumes"
        )
    if len(classes) != layout.num_classes:
        raise ConfigError(f"{len(classes)} class names given for {layout.num_classes} classes")
    arrays = array_paths(layout, kind)
    return meta.store_info(kind, layout.to_attrs(), arrays, classes, geometry, attrs, fingerprint)
