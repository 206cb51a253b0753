"""(g) Post-processing and polygons of a finished label store, chunk by chunk.

Synthetic labels with 6 classes (smooth regions plus specks, generated chunk by chunk
from global coordinates, so no full array ever exists) in 256^2 chunks. Each stage
runs in a fresh process for its own peak RSS: connected components + ``--min-size``
into a new store, then polygons to a GeoPackage. Next to them, the whole-array
answer at ``--baseline-size`` (scipy.ndimage.label per class, rasterio.features.shapes)
in the same run. Targets (issue 14): peak RSS <= 1.5 GB, flat from 8192^2.

    uv run python benchmarks/bench_postprocess.py [--sizes 8192,16384] [--baseline-size 8192]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Check, peak_rss_mb, report, run_subprocess_json

CLASSES = 6
CHUNK = 256
TARGET_RSS_MB = 1536.0
TARGET_FLAT = 0.25


def synthetic_labels(rows: slice, cols: slice) -> np.ndarray:
    """Smooth class regions with specks, a pure function of the global pixel position."""
    y, x = np.meshgrid(
        np.arange(rows.start, rows.stop), np.arange(cols.start, cols.stop), indexing="ij"
    )
    field = np.sin(x / 37.0) + np.sin(y / 53.0) + np.sin((x + y) / 71.0)
    labels = np.floor((field + 3.0) * CLASSES / 6.0).astype(np.int64) % CLASSES
    specks = ((x * 7919 + y * 104729) % 997) == 0
    mixed: np.ndarray = np.where(specks, (labels + 1) % CLASSES, labels).astype(np.uint8)
    return mixed


def write_store(path: Path, size: int) -> Path:
    from segflow.io.classes import ClassInfo
    from segflow.io.source import RasterGeometry
    from segflow.io.zarr_sink import OutputLayout, ZarrSink

    geometry = RasterGeometry(
        crs_wkt=_utm_wkt(),
        transform=(10.0, 0.0, 500000.0, 0.0, -10.0, 6000000.0),
        georeferenced=True,
    )
    classes = [ClassInfo(name=f"class {i}") for i in range(CLASSES)]
    layout = OutputLayout((size, size), (CHUNK, CHUNK), CLASSES)
    sink = ZarrSink.create(path, layout, geometry, classes, {}, f"bench-{size}")
    for index in np.ndindex(*sink.chunk_grid_shape):
        region = sink.chunk_region(index)
        sink.write_chunk(index, synthetic_labels(*region), None)
    sink.finalize({})
    return path


def _utm_wkt() -> str:
    import pyproj

    return str(pyproj.CRS.from_epsg(32633).to_wkt())


def run_postprocess(store: str, output: str) -> dict[str, Any]:
    from segflow.outputs.postprocess import postprocess

    start = time.perf_counter()
    result = postprocess(store, output, min_size=16)
    seconds = time.perf_counter() - start
    removed = sum(row["removed"] for row in result.summary["components"])
    return {"seconds": seconds, "rss_mb": peak_rss_mb(), "removed": removed}


def run_polygons(store: str, output: str) -> dict[str, Any]:
    from segflow.outputs.polygons import export_polygons

    start = time.perf_counter()
    result = export_polygons(store, output, to="gpkg")
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rss_mb": peak_rss_mb(), "features": result.features}


def run_whole_array(size: int) -> dict[str, Any]:
    """The in-memory answer: label each class of the whole array, then vectorise it."""
    import rasterio.features
    from scipy import ndimage

    labels = synthetic_labels(slice(0, size), slice(0, size))
    start = time.perf_counter()
    for value in range(CLASSES):
        ndimage.label(labels == value, np.ones((3, 3), bool))
    label_seconds = time.perf_counter() - start
    start = time.perf_counter()
    features = sum(1 for _ in rasterio.features.shapes(labels, connectivity=4))
    shapes_seconds = time.perf_counter() - start
    return {
        "label_seconds": label_seconds,
        "shapes_seconds": shapes_seconds,
        "features": features,
        "rss_mb": peak_rss_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="8192,16384")
    parser.add_argument("--baseline-size", type=int, default=8192)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    figures: dict[str, Any] = {}
    rss: list[float] = []
    checks: list[Check] = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            store = write_store(Path(tmp) / f"l{size}.zarr", size)
            mpx = size * size / 1e6
            post = run_subprocess_json(run_postprocess, str(store), f"{tmp}/c{size}.zarr")
            poly = run_subprocess_json(run_polygons, str(store), f"{tmp}/p{size}.gpkg")
            figures[f"{size}^2 postprocess Mpx/s"] = f"{mpx / post['seconds']:.2f}"
            figures[f"{size}^2 polygons Mpx/s"] = f"{mpx / poly['seconds']:.2f}"
            figures[f"{size}^2 polygons"] = poly["features"]
            figures[f"{size}^2 peak RSS MB (post, poly)"] = (
                f"{post['rss_mb']:.0f}, {poly['rss_mb']:.0f}"
            )
            rss.append(max(post["rss_mb"], poly["rss_mb"]))
            checks.append(
                Check(f"peak RSS {size}^2", rss[-1], "MB", "<= 1536", rss[-1] <= TARGET_RSS_MB)
            )
    base = run_subprocess_json(run_whole_array, args.baseline_size)
    mpx = args.baseline_size**2 / 1e6
    figures[f"whole-array {args.baseline_size}^2 label Mpx/s"] = (
        f"{mpx / base['label_seconds']:.2f}"
    )
    figures[f"whole-array {args.baseline_size}^2 shapes Mpx/s"] = (
        f"{mpx / base['shapes_seconds']:.2f}"
    )
    figures[f"whole-array {args.baseline_size}^2 peak RSS MB"] = f"{base['rss_mb']:.0f}"
    if len(rss) > 1:
        growth = rss[-1] / rss[0] - 1.0
        checks.append(
            Check("RSS growth, smallest->largest", growth, "x", "<= 0.25", growth <= TARGET_FLAT)
        )
    report("post-processing and polygons", figures, checks)


if __name__ == "__main__":
    main()
