"""Synthetic label stores for the component tests, written with the real store writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rasterio.crs import CRS
from scipy import ndimage

from segflow.io.classes import ClassInfo
from segflow.io.source import RasterGeometry, VolumeGeometry
from segflow.io.zarr_sink import OutputLayout, ZarrSink

NODATA = 255
UTM = CRS.from_epsg(32618).to_wkt()
TRANSFORM = (30.0, 0.0, 300000.0, 0.0, -30.0, 4500000.0)
COLORS = [(10, 20, 30), (200, 0, 0), (0, 200, 0), (0, 0, 200)]


def raster_geometry(crs_wkt: str | None = UTM, transform=TRANSFORM) -> RasterGeometry:
    return RasterGeometry(crs_wkt=crs_wkt, transform=transform, georeferenced=True)


def volume_geometry(zooms=(0.8, 0.8, 2.0)) -> VolumeGeometry:
    affine = np.diag([*zooms, 1.0])
    return VolumeGeometry(
        affine=tuple(tuple(float(v) for v in row) for row in affine),  # type: ignore[arg-type]
        sform_code=1,
        qform_code=1,
        orientation=("R", "A", "S"),
        zooms=zooms,
    )


def classes(k: int) -> list[ClassInfo]:
    names = ["background", "forest", "water", "urban"]
    return [ClassInfo(name=names[i], color=COLORS[i]) for i in range(k)]


def write_store(path: Path, labels: np.ndarray, chunk, *, k: int = 3, geometry=None, finalize=True):
    """A store holding ``labels``, written chunk by chunk like the engine does."""
    if geometry is None:
        geometry = raster_geometry() if labels.ndim == 2 else volume_geometry()
    layout = OutputLayout(labels.shape, chunk, k)
    sink = ZarrSink.create(path, layout, geometry, classes(k), {"input": {"path": "x"}}, "fp")
    for index in np.ndindex(*sink.chunk_grid_shape):
        sink.write_chunk(index, labels[sink.chunk_region(index)], None)
    if finalize:
        sink.finalize({})
    return sink


def blobs(shape, k: int = 3, seed: int = 0, scale: int = 3) -> np.ndarray:
    """Smooth random classes (components of every size, many across chunk borders) + nodata."""
    rng = np.random.default_rng(seed)
    smooth = ndimage.uniform_filter(rng.random(shape), scale)
    labels = (smooth * 7 * k).astype(np.uint8) % k
    labels[(slice(0, 2),) * len(shape)] = NODATA
    return labels


def stored_ids(components) -> np.ndarray:
    """The global component ids of every chunk, assembled (small test stores only)."""
    sink = components.sink
    ids = np.zeros(sink.layout.spatial_shape, np.int64)
    for index in components.chunk_indices():
        ids[sink.chunk_region(index)] = components.read_chunk(index)[1]
    return ids


def specks(shape, k: int = 3, seed: int = 0, density: float = 0.08, nodata: float = 0.02):
    """Smooth regions sprinkled with 1-3 pixel specks of random classes, and nodata specks:
    many small components, many of equal size (ties), many on chunk borders."""
    rng = np.random.default_rng(seed)
    labels = blobs(shape, k=k, seed=seed, scale=4)
    labels[labels == NODATA] = 0
    for grow in range(3):
        hit = rng.random(shape) < density / (grow + 1)
        if grow:
            hit = ndimage.binary_dilation(hit, np.array([[0, 1, 0], [0, 1, 1], [0, 0, 0]], bool))
        labels[hit] = rng.integers(0, k, int(hit.sum()))
    labels[rng.random(shape) < nodata] = NODATA
    return labels
