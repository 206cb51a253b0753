"""Report helpers: areas and volumes from real stores, JSON/CSV files, markdown, artifact keys."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from flows import report
from segflow import segment

from ..conftest import pixel_model, textured, threshold_model, write_tif
from .conftest import write_scan


def rgb_model():
    return pixel_model([[1, 0, 0], [0, 1, 0], [0, 0, 1]], [0, 0, 0])


def test_class_areas_projected_planar(tmp_path):
    image = textured((96, 80), 3, seed=3)
    path = write_tif(
        tmp_path / "in.tif", image, transform=from_origin(500000, 4000000, 10, 10), tile=None
    )
    segment(path, rgb_model(), tmp_path / "o.zarr", device="cpu")
    counts = np.bincount(image.argmax(0).ravel(), minlength=3)
    fast = report.class_areas(tmp_path / "o.zarr")
    recount = report.class_areas(tmp_path / "o.zarr", recount=True)
    assert fast["method"] == recount["method"] == "planar"
    for k in range(3):
        entry = fast["classes"][f"class{k}"]
        assert entry["pixels"] == counts[k] == recount["classes"][f"class{k}"]["pixels"]
        assert entry["ha"] == pytest.approx(counts[k] * 100 / 1e4)
        assert entry["km2"] == pytest.approx(counts[k] * 100 / 1e6)


def test_class_areas_geographic_are_geodesic_and_no_crs_has_counts_only(tmp_path):
    image = textured((40, 40), 3, seed=4)
    geo = write_tif(
        tmp_path / "geo.tif",
        image,
        crs="EPSG:4326",
        transform=from_origin(10.0, 50.0, 0.001, 0.001),
        tile=None,
    )
    segment(geo, rgb_model(), tmp_path / "geo.zarr", device="cpu")
    areas = report.class_areas(tmp_path / "geo.zarr")
    assert areas["method"] == "geodesic"
    total_ha = sum(c["ha"] for c in areas["classes"].values())
    assert 40 * 40 * 0.79 < total_ha < 40 * 40 * 0.80  # 71.7 m x 111.2 m pixels at 50 °N
    plain = write_tif(tmp_path / "plain.tif", image, crs=None, tile=None)
    segment(plain, rgb_model(), tmp_path / "plain.zarr", device="cpu")
    none = report.class_areas(tmp_path / "plain.zarr")
    assert none["method"] is None
    assert all(c["ha"] is None and c["pixels"] >= 0 for c in none["classes"].values())


def test_class_volumes_from_the_affine(tmp_path):
    path, data = write_scan(tmp_path / "v.nii.gz", spacing=2.0)
    segment(path, threshold_model(100.0), tmp_path / "v.zarr", device="cpu")
    volumes = report.class_volumes(tmp_path / "v.zarr")
    assert volumes["voxel_ml"] == pytest.approx(0.008)
    inside = int((data > 100).sum())
    assert volumes["classes"]["class1"] == {
        "voxels": inside,
        "ml": pytest.approx(inside * 0.008, abs=1e-3),
    }
    assert report.class_volumes(tmp_path / "v.zarr", recount=True) == volumes
    with pytest.raises(ValueError, match="volume"):
        report.class_areas(tmp_path / "v.zarr")


def test_json_csv_and_markdown(tmp_path):
    rows = [
        {"scan": "a", "status": "complete", "ml": 1.23456789, "reason": None},
        {"scan": "b|c", "status": "failed", "ml": None, "reason": "bad\nfile"},
    ]
    report.write_json(tmp_path / "r" / "x.json", {"rows": rows})
    assert json.loads((tmp_path / "r" / "x.json").read_text())["rows"][0]["scan"] == "a"
    report.write_csv(tmp_path / "r" / "x.csv", rows, ["scan", "status", "ml", "reason"])
    read = list(csv.DictReader((tmp_path / "r" / "x.csv").open()))
    assert read[0]["ml"] == "1.23457" and read[1]["ml"] == "" and read[1]["reason"] == "bad\nfile"
    assert not list((tmp_path / "r").glob("*.tmp"))
    md = report.markdown_table(rows, ["scan", "status", "reason"])
    assert md.splitlines()[0] == "| scan | status | reason |"
    assert "b\\|c" in md and "bad file" in md
    assert report.markdown_table([], ["a"]) == "_no rows_\n"


def test_artifact_keys_and_counts():
    assert report.artifact_key("Land Cover", "Summary_2026") == "land-cover-summary-2026"
    assert report.status_counts(["complete", "failed", "complete"]) == {
        "complete": 2,
        "skipped": 0,
        "failed": 1,
    }
    assert not report.publish_artifacts("x", "# x", [], "outside a flow run")  # a no-op


def test_raster_store_reads_back_its_georeferencing(tmp_path):
    # the area math relies on the store's recorded geometry being the input's
    path = write_tif(tmp_path / "in.tif", textured((32, 32), 3), tile=None)
    segment(path, rgb_model(), tmp_path / "o.zarr", device="cpu")
    from segflow.io.zarr_sink import ZarrSink

    with rasterio.open(path) as src:
        assert ZarrSink.open(tmp_path / "o.zarr").geometry.transform == tuple(src.transform)[:6]
