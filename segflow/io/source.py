"""What every reader returns: a lazy source with its geometry.

A source exposes a channel-first array ``(C, *spatial)`` that is never read
whole. ``read(region)`` reads one spatial region (a tuple of slices inside the
image) and returns the raw values plus a validity mask. Sources are pickled to
Dask worker processes, so they hold paths and parameters, never open handles.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from segflow.io.uris import ObjectPath

Region = tuple[slice, ...]


@dataclass(frozen=True)
class RasterGeometry:
    """Georeferencing of a 2D raster; spatial axes are (y, x)."""

    crs_wkt: str | None  # None: no CRS, pixel coordinates
    transform: tuple[float, float, float, float, float, float]  # rasterio Affine a, b, c, d, e, f
    georeferenced: bool  # False when the file had neither CRS nor transform


@dataclass(frozen=True)
class VolumeGeometry:
    """Geometry of a NIfTI volume; spatial axes are the file's voxel axes (i, j, k)."""

    affine: tuple[tuple[float, ...], ...]  # 4x4, voxel (i, j, k) -> world RAS+ mm
    sform_code: int
    qform_code: int
    orientation: tuple[str, str, str]  # e.g. ("L", "I", "A") from nibabel.aff2axcodes
    zooms: tuple[float, float, float]  # voxel size in mm along i, j, k


Geometry = RasterGeometry | VolumeGeometry


@dataclass(frozen=True)
class ReadResult:
    """Raw values of one region and where they are valid."""

    data: npt.NDArray[np.generic]  # (C, *region_shape), the file's dtype after scaling
    valid: npt.NDArray[np.bool_]  # (*region_shape); False where nodata / NaN in all channels


@runtime_checkable
class Source(Protocol):
    """A lazily read, channel-first image with geometry."""

    kind: Literal["raster", "volume"]

    @property
    def path(self) -> Path | ObjectPath:
        """A local file, or an object in storage (``s3://...``)."""
        ...

    @property
    def spatial_shape(self) -> tuple[int, ...]: ...

    @property
    def channels(self) -> int: ...

    @property
    def dtype(self) -> np.dtype: ...

    @property
    def band_names(self) -> tuple[str, ...]: ...

    @property
    def nodata(self) -> float | None: ...

    @property
    def block_shape(self) -> tuple[int, ...]:
        """Spatial shape of the file's internal tiles/strips, for aligned reads."""
        ...

    @property
    def geometry(self) -> Geometry: ...

    def read(self, region: Region) -> ReadResult: ...

    def checksum(self) -> str:
        """sha256 of the input file, hex."""
        ...
