"""Class statistics: counts, planar and geodesic areas, volumes, writers, real engine output."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pyproj
import pytest
from rasterio.crs import CRS

from segflow import segment
from segflow.errors import OutputError
from segflow.io.source import RasterGeometry, VolumeGeometry
from segflow.io.zarr_sink import OutputLayout, ZarrSink
from segflow.models.meta import ClassInfo
from segflow.outputs.stats import (
    class_statistics,
    pixel_footprint,
    voxel_volume_mm3,
    write_statistics_csv,
    write_statistics_json,
)
from tests.conftest import threshold_model, write_nifti

NODATA = 255


def raster(crs: str | None, transform: tuple[float, ...]) -> RasterGeometry:
    wkt = None if crs is None else CRS.from_user_input(crs).to_wkt()
    return RasterGeometry(crs_wkt=wkt, transform=transform, georeferenced=True)  # type: ignore[arg-type]


def make_store(path: Path, labels: np.ndarray, geometry, chunk, num_classes=3) -> ZarrSink:
    classes = [ClassInfo(name=f"class {i}") for i in range(num_classes)]
    sink = ZarrSink.create(
        path, OutputLayout(labels.shape, chunk, num_classes), geometry, classes, {}, "fp"
    )
    for index in np.ndindex(*sink.chunk_grid_shape):
        region = sink.chunk_region(index)
        sink.write_chunk(index, labels[region], None)
    sink.finalize({})
    return sink


def labels_for(shape, num_classes=3, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, shape).astype(np.uint8)
    labels[:3, :5] = NODATA
    return labels


def counts(labels: np.ndarray, k: int) -> np.ndarray:
    return np.array([(labels == v).sum() for v in range(k)])


@pytest.mark.parametrize(
    "transform",
    [(30.0, 0.0, 300000.0, 0.0, -30.0, 4500000.0), (20.0, 5.0, 300000.0, -4.0, -25.0, 4500000.0)],
    ids=["north-up", "rotated"],
)
def test_projected_areas_are_count_times_pixel_area(tmp_path, transform):
    labels = labels_for((45, 70))
    stats = class_statistics(
        make_store(tmp_path / "o.zarr", labels, raster("EPSG:32618", transform), (16, 32))
    )
    a, b, _, d, e, _ = transform
    pixel = abs(a * e - b * d)
    n = counts(labels, 3)
    assert stats["area_method"] == "planar"
    assert stats["nodata_pixels"] == 15 and stats["valid_pixels"] == n.sum()
    for value, entry in enumerate(stats["classes"]):
        assert entry["pixels"] == n[value]
        assert entry["area_m2"] == pytest.approx(n[value] * pixel, rel=1e-3)
        assert entry["area_ha"] == pytest.approx(entry["area_m2"] / 1e4)
        assert entry["area_km2"] == pytest.approx(entry["area_m2"] / 1e6)
        assert entry["fraction"] == pytest.approx(n[value] / n.sum())


def test_feet_based_crs_is_converted_to_square_metres(tmp_path):
    labels = labels_for((20, 30))
    transform = (100.0, 0.0, 2000000.0, 0.0, -100.0, 800000.0)  # US survey feet
    stats = class_statistics(
        make_store(tmp_path / "o.zarr", labels, raster("EPSG:2264", transform), (20, 30))
    )
    foot = 1200 / 3937  # US survey foot in metres
    expected = counts(labels, 3)[1] * (100 * foot) ** 2
    assert stats["classes"][1]["area_m2"] == pytest.approx(expected, rel=1e-6)


def geod_reference(labels: np.ndarray, transform, k: int) -> np.ndarray:
    """Sum of the pyproj Geod polygon areas of every pixel footprint, per class."""
    geod = pyproj.CRS.from_epsg(4326).get_geod()
    areas = np.zeros(k)
    for row, col in np.ndindex(*labels.shape):
        if labels[row, col] < k:
            lons, lats = pixel_footprint(transform, row, col)
            areas[labels[row, col]] += abs(geod.polygon_area_perimeter(lons, lats)[0])
    return areas


@pytest.mark.parametrize(
    "transform",
    [
        (0.01, 0.0, 10.0, 0.0, -0.01, 60.5),  # high latitude: pixel area changes row by row
        (0.5, 0.0, -30.0, 0.0, -0.5, 10.0),  # coarse cells across many degrees of latitude
        (0.008, 0.003, 5.0, 0.002, -0.009, 45.0),  # rotated: per-pixel equal-area fallback
    ],
    ids=["fine-north", "coarse", "rotated"],
)
def test_geographic_areas_match_geod_polygons_of_the_pixels(tmp_path, transform):
    labels = labels_for((24, 31), seed=1)
    stats = class_statistics(
        make_store(tmp_path / "g.zarr", labels, raster("EPSG:4326", transform), (10, 16))
    )
    assert stats["area_method"] == "geodesic"
    expected = geod_reference(labels, transform, 3)
    for value, entry in enumerate(stats["classes"]):
        assert entry["area_m2"] == pytest.approx(expected[value], rel=1e-3)


def test_no_crs_gives_counts_only_and_empty_csv_cells(tmp_path):
    labels = labels_for((12, 14))
    sink = make_store(tmp_path / "p.zarr", labels, raster(None, (1.0, 0, 0, 0, -1.0, 0)), (12, 14))
    stats = class_statistics(sink)
    assert stats["area_method"] is None and stats["classes"][0]["area_m2"] is None
    path = write_statistics_csv(stats, tmp_path / "s" / "p.csv")
    rows = list(csv.DictReader(path.open()))
    assert rows[0]["area_m2"] == "" and int(rows[0]["pixels"]) == counts(labels, 3)[0]


def test_volume_in_millilitres_from_the_affine_determinant(tmp_path):
    labels = np.zeros((10, 12, 8), np.uint8)
    labels[2:6, 3:9, 1:5] = 1
    labels[0, 0, :] = NODATA
    c, s = math.cos(0.3), math.sin(0.3)
    affine = (
        (0.8 * c, -0.9 * s, 0.0, 10.0),
        (0.8 * s, 0.9 * c, 0.0, -5.0),
        (0.0, 0.0, 2.5, 3.0),
        (0.0, 0.0, 0.0, 1.0),
    )
    geometry = VolumeGeometry(
        affine=affine,
        sform_code=1,
        qform_code=1,
        orientation=("R", "A", "S"),
        zooms=(0.8, 0.9, 2.5),
    )
    stats = class_statistics(
        make_store(tmp_path / "v.zarr", labels, geometry, (4, 5, 8), num_classes=2)
    )
    voxel = 0.8 * 0.9 * 2.5
    assert voxel_volume_mm3(affine) == pytest.approx(voxel)
    assert stats["classes"][1]["voxels"] == 96
    assert stats["classes"][1]["volume_ml"] == pytest.approx(96 * voxel / 1000, rel=1e-3)
    assert stats["nodata_voxels"] == 8
    data = json.loads(write_statistics_json(stats, tmp_path / "v.json").read_text())
    assert data["classes"][1]["volume_mm3"] == pytest.approx(96 * voxel)
    rows = list(csv.DictReader(write_statistics_csv(stats, tmp_path / "v.csv").open()))
    assert list(rows[0]) == ["value", "name", "voxels", "fraction", "volume_mm3", "volume_ml"]


def test_incomplete_store_is_refused_unless_allowed(tmp_path):
    geometry = raster("EPSG:32618", (10.0, 0, 0, 0, -10.0, 0))
    sink = ZarrSink.create(
        tmp_path / "i.zarr",
        OutputLayout((20, 20), (10, 10), 2),
        geometry,
        [ClassInfo(name="a"), ClassInfo(name="b")],
        {},
        "fp",
    )
    sink.write_chunk((0, 0), np.ones((10, 10), np.uint8), None)
    with pytest.raises(OutputError, match="1 of 4 chunks"):
        class_statistics(sink)
    stats = class_statistics(sink, allow_incomplete=True)
    assert stats["complete"] is False and stats["classes"][1]["pixels"] == 100
    assert stats["nodata_pixels"] == 300


def test_engine_output_counts_agree_with_the_run_summary(tmp_path):
    data = np.zeros((9, 11, 7), np.float32)
    data[2:7, 3:8, 1:6] = 5.0
    affine = np.diag([-1.2, -1.2, 2.0, 1.0])
    affine[:3, 3] = [50, 40, -10]
    path = write_nifti(tmp_path / "in.nii.gz", data, affine)
    out = tmp_path / "o.zarr"
    segment(path, threshold_model(1.0), out, device="cpu", patch_size=16)
    stats = class_statistics(out)
    summary = ZarrSink.open(out).summary
    assert summary is not None
    assert [c["voxels"] for c in stats["classes"]] == list(summary["class_pixel_counts"].values())
    assert stats["classes"][1]["voxels"] == 125
    assert stats["classes"][1]["volume_ml"] == pytest.approx(125 * 1.2 * 1.2 * 2.0 / 1000)
