"""Export a raster store's labels as a Cloud Optimized GeoTIFF.

The labels are copied window by window (tile-aligned, each window a few store chunks)
into a tiled temporary GeoTIFF beside the output; GDAL's COG driver then copies that
into the final file, building the internal overviews (mode or nearest, nodata ignored)
through its block cache. Neither step holds the raster in memory: peak memory is a
few windows plus GDAL's cache (``GDAL_CACHEMAX``, set here).

The COG keeps the store's CRS (its WKT, unchanged) and transform, the label nodata,
a colour table (class colours; nodata transparent), the band description and the
class names as tags (``CLASS_<value>`` on the band, ``SEGFLOW_CLASSES`` as JSON).
Beside it go the class names GIS show (:mod:`segflow.io.gis_styles`): GDAL category
names and a raster attribute table in ``<name>.tif.aux.xml``, and a QGIS style
``<name>.qml`` with each class's colour and name.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import rasterio
import rasterio.shutil
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.transform import Affine
from rasterio.windows import Window

from segflow.errors import ConfigError, OutputError
from segflow.io.classes import ClassInfo, default_colors
from segflow.io.export_common import open_exportable, prepare_target
from segflow.io.gis_styles import style_paths, write_styles
from segflow.io.source import RasterGeometry
from segflow.io.staged import export_to_object
from segflow.io.uris import ObjectPath, as_location
from segflow.io.zarr_meta import UNCERTAINTY_FORMULA, UNCERTAINTY_NODATA, UNCERTAINTY_SCALE
from segflow.io.zarr_sink import ZarrSink
from segflow.options import Resampling
from segflow.version import __version__

DEFAULT_BLOCKSIZE = 512
CACHE_MB = 256  # GDAL block cache while writing: bounds memory whatever the raster size
COMPRESSIONS = ("deflate", "lzw", "zstd", "none")
EXPORTABLE = ("labels", "uncertainty")  # the store arrays a COG (or NIfTI) can hold


# --- export -----------------------------------------------------------------------------------


def export_cog(
    store: str | os.PathLike[str] | ObjectPath | ZarrSink,
    output: str | os.PathLike[str] | ObjectPath,
    *,
    resampling: str | Resampling = Resampling.MODE,
    compress: str = "deflate",
    blocksize: int = DEFAULT_BLOCKSIZE,
    overwrite: bool = False,
    workers: int | None = None,
    array: str = "labels",
) -> Path | ObjectPath:
    """Write the labels of a complete raster store to ``output`` as a COG; returns its path.

    ``output`` may be a URI (``s3://...``): the COG is written locally, then put whole.
    ``array="uncertainty"`` writes the stored uncertainty instead (uint8, scale 1/254,
    nodata 255, averaged overviews; no class colours or styles).
    """
    if array not in EXPORTABLE:
        raise ConfigError(f"--array must be one of {', '.join(EXPORTABLE)}, got {array!r}")
    target_location = as_location(output)
    if isinstance(target_location, ObjectPath):
        sink = store if isinstance(store, ZarrSink) else ZarrSink.open_finished(store)

        def write(local: Path) -> object:
            return export_cog(
                sink,
                local,
                resampling=resampling,
                compress=compress,
                blocksize=blocksize,
                workers=workers,
                array=array,
            )

        return export_to_object(target_location, overwrite, write)
    method = Resampling.parse(resampling)
    sink, geometry = open_exportable(
        store,
        RasterGeometry,
        "is a volume output; export it with --to nifti",
        need_labels=array == "labels",
    )
    labels = array == "labels"
    if not labels:
        sink.uncertainty_array()  # one line when the store holds none
    if compress.lower() not in COMPRESSIONS:
        raise ConfigError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compress!r}")
    if blocksize < 16 or blocksize % 16:
        raise ConfigError(f"COG block size must be a multiple of 16, got {blocksize}")
    target = target_location
    prepare_target(target, overwrite, ".tif")

    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".tmp.tif", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    part = target.with_name(f".{target.name}.part")
    threads = workers or min(4, os.cpu_count() or 1)
    try:
        with rasterio.Env(GDAL_CACHEMAX=CACHE_MB), warnings.catch_warnings():
            # a store without georeferencing gives a COG without it, on purpose
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            _write_tiled(sink, geometry, tmp, blocksize, threads, labels)
            rasterio.shutil.copy(
                tmp,
                part,
                driver="COG",
                BLOCKSIZE=blocksize,
                COMPRESS=compress.upper(),
                # uncertainty is a quantity: its overviews average it (nodata left out)
                OVERVIEW_RESAMPLING=method.value.upper() if labels else "AVERAGE",
                BIGTIFF="IF_SAFER",
                NUM_THREADS=str(threads),
            )
        if labels:
            colors = display_colors(sink.classes)
            write_styles(target, sink.classes, colors, sink.label_nodata)
        os.replace(part, target)
    except (RasterioError, OSError) as exc:
        part.unlink(missing_ok=True)
        for style in style_paths(target) if not target.exists() else ():
            style.unlink(missing_ok=True)
        raise OutputError(f"cannot write {target}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return target


def display_colors(classes: Sequence[ClassInfo]) -> list[tuple[int, int, int]]:
    """The classes' colours; the default palette when none was set (all black)."""
    colors = [tuple(int(v) for v in c.color) for c in classes]
    if all(c == (0, 0, 0) for c in colors):
        return default_colors(len(classes))
    return [(c[0], c[1], c[2]) for c in colors]


def cog_tags(sink: ZarrSink) -> tuple[dict[str, str], dict[str, str]]:
    """Dataset tags and band tags that name the classes and where the labels came from."""
    classes = [
        {"value": v, "name": c.name, "color": list(rgb)}
        for v, (c, rgb) in enumerate(zip(sink.classes, display_colors(sink.classes), strict=True))
    ]
    provenance = sink.attrs
    source = provenance.get("input", {}) if isinstance(provenance.get("input"), dict) else {}
    model = provenance.get("model", {}) if isinstance(provenance.get("model"), dict) else {}
    dataset = {
        "SEGFLOW_CLASSES": json.dumps(classes),
        "SEGFLOW_NODATA": str(sink.label_nodata),
        "SEGFLOW_VERSION": __version__,
        "SEGFLOW_STORE": str(sink.path),
    }
    if source.get("path"):
        dataset["SEGFLOW_INPUT"] = str(source["path"])
    if model.get("sha256"):
        dataset["SEGFLOW_MODEL_SHA256"] = str(model["sha256"])
    band = {f"CLASS_{v}": c.name for v, c in enumerate(sink.classes)}
    return dataset, band


def colormap(sink: ZarrSink) -> dict[int, tuple[int, int, int, int]]:
    """Class colours, opaque; the nodata label transparent."""
    table = {v: (r, g, b, 255) for v, (r, g, b) in enumerate(display_colors(sink.classes))}
    table[sink.label_nodata] = (0, 0, 0, 0)
    return table


def _write_tiled(
    sink: ZarrSink,
    geometry: RasterGeometry,
    path: Path,
    blocksize: int,
    threads: int,
    labels: bool = True,
) -> None:
    height, width = sink.layout.spatial_shape
    profile: dict[str, Any] = dict(
        driver="GTiff",
        width=width,
        height=height,
        count=1,
        dtype=sink.label_dtype.name if labels else "uint8",
        nodata=sink.label_nodata if labels else UNCERTAINTY_NODATA,
        tiled=True,
        blockxsize=blocksize,
        blockysize=blocksize,
        compress="DEFLATE",
        zlevel=1,
        BIGTIFF="IF_SAFER",  # a scratch copy: fast, small
    )
    if geometry.crs_wkt is not None:
        profile["crs"] = rasterio.crs.CRS.from_wkt(geometry.crs_wkt)
    if geometry.georeferenced:
        profile["transform"] = Affine(*geometry.transform)
    dataset_tags, band_tags = cog_tags(sink)
    array = sink.labels_array() if labels else sink.uncertainty_array()
    with rasterio.open(path, "w", **profile) as dst:
        if labels:
            dst.write_colormap(1, colormap(sink))
            dst.set_band_description(1, "class label")
            dst.update_tags(1, **band_tags)
        else:
            dataset_tags.update(SEGFLOW_ARRAY="uncertainty", SEGFLOW_NODATA=str(UNCERTAINTY_NODATA))
            dst.set_band_description(1, "normalized entropy of the class probabilities")
            dst.scales, dst.offsets = (UNCERTAINTY_SCALE,), (0.0,)
            dst.update_tags(1, FORMULA=UNCERTAINTY_FORMULA)
        dst.update_tags(**dataset_tags)
        for window, block in _prefetch(array, _windows(sink, blocksize), threads):
            dst.write(block, 1, window=window)


def _windows(sink: ZarrSink, blocksize: int) -> list[Window]:
    """Tile-aligned windows of about one store chunk, so every tile is written once."""
    height, width = sink.layout.spatial_shape
    ch, cw = sink.layout.chunk_shape
    sy = max(blocksize, -(-ch // blocksize) * blocksize)
    sx = max(blocksize, -(-cw // blocksize) * blocksize)
    return [
        Window(c, r, min(sx, width - c), min(sy, height - r))
        for r in range(0, height, sy)
        for c in range(0, width, sx)
    ]


def _prefetch(
    array: Any, windows: list[Window], threads: int
) -> Iterator[tuple[Window, npt.NDArray[np.generic]]]:
    """Read windows from the store on threads, at most ``2 * threads`` ahead of the writer."""

    def read(w: Window) -> npt.NDArray[np.generic]:
        return np.asarray(array[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width])

    pending: deque[tuple[Window, Future[npt.NDArray[np.generic]]]] = deque()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        it = iter(windows)
        for w in it:
            pending.append((w, pool.submit(read, w)))
            if len(pending) >= 2 * threads:
                break
        while pending:
            w, job = pending.popleft()
            yield w, job.result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(read, nxt)))
