"""Zarr v2 raster stores (``--zarr-format 2``): GDAL (rasterio's) opens them with the
input's CRS, transform and nodata, rioxarray still reads them, and resume, completion
records and overview levels work as in v3 stores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from rasterio.crs import CRS
from rasterio.transform import Affine

from segflow.errors import ConfigError, OutputError
from segflow.io.zarr_sink import OutputLayout, ZarrSink
from segflow.outputs.pyramid import build_pyramid
from tests.io.test_zarr_sink import (
    LIA,
    UTM_TRANSFORM,
    all_chunks,
    expected_labels,
    expected_probabilities,
    make_sink,
    raster_geometry,
    write_chunks,
)

SHAPE = (37, 53)


def gdal_path(store: Path, array: str) -> str:
    return f'ZARR:"{store}":/{array}'


def finished_v2(path: Path, probabilities: str = "none") -> tuple[ZarrSink, np.ndarray]:
    sink = make_sink(path, zarr_format=2, probabilities=probabilities)
    labels = expected_labels(SHAPE, 3, sink.label_nodata)
    probs = expected_probabilities(SHAPE, 3) if probabilities != "none" else None
    write_chunks(sink, labels, probs)
    sink.finalize({})
    return sink, labels


def test_gdal_opens_v2_labels_with_crs_transform_and_nodata(tmp_path: Path) -> None:
    store = tmp_path / "out.zarr"
    _, labels = finished_v2(store)
    with rasterio.open(gdal_path(store, "labels")) as ds:
        assert ds.crs == CRS.from_epsg(32618)
        assert ds.transform.almost_equals(UTM_TRANSFORM, precision=1e-9)
        assert ds.nodata == 255
        assert (ds.height, ds.width, ds.count) == (*SHAPE, 1)
        np.testing.assert_array_equal(ds.read(1), labels)


def test_gdal_reads_v2_probabilities_as_bands(tmp_path: Path) -> None:
    store = tmp_path / "out.zarr"
    sink, _ = finished_v2(store, probabilities="uint8")
    stored = sink.read_probabilities(decode=False)
    with rasterio.open(gdal_path(store, "probabilities")) as ds:
        assert ds.count == 3 and ds.crs == CRS.from_epsg(32618)
        assert ds.nodata == 255
        np.testing.assert_array_equal(ds.read(), stored)


def test_v2_arrays_use_codecs_gdal_decodes(tmp_path: Path) -> None:
    store = tmp_path / "out.zarr"
    finished_v2(store, probabilities="float16")
    assert not (store / "zarr.json").exists() and (store / ".zgroup").is_file()
    labels = json.loads((store / "labels" / ".zarray").read_text())
    assert labels["zarr_format"] == 2 and labels["compressor"]["id"] == "zstd"
    assert labels["fill_value"] == 255 and labels["dimension_separator"] == "/"
    attrs = json.loads((store / "labels" / ".zattrs").read_text())
    assert attrs["_ARRAY_DIMENSIONS"] == ["y", "x"] and "_FillValue" not in attrs
    probs = json.loads((store / "probabilities" / ".zattrs").read_text())
    assert probs["_ARRAY_DIMENSIONS"] == ["class", "y", "x"]


def test_rioxarray_reads_v2_like_v3(tmp_path: Path) -> None:
    finished_v2(tmp_path / "v2.zarr", probabilities="uint8")
    sink3 = make_sink(tmp_path / "v3.zarr", probabilities="uint8")
    write_chunks(sink3, expected_labels(SHAPE, 3, 255), expected_probabilities(SHAPE, 3))
    sink3.finalize({})
    v2, v3 = xr.open_zarr(tmp_path / "v2.zarr"), xr.open_zarr(tmp_path / "v3.zarr")
    for name in ("labels", "probabilities"):
        xr.testing.assert_identical(v2[name].drop_attrs(), v3[name].drop_attrs())
        assert v2[name].rio.crs == v3[name].rio.crs
        assert v2[name].rio.transform() == v3[name].rio.transform() == UTM_TRANSFORM


def test_v2_resume_does_only_missing_chunks_and_completes(tmp_path: Path) -> None:
    store = tmp_path / "out.zarr"
    sink = make_sink(store, zarr_format=2)
    labels = expected_labels(SHAPE, 3, sink.label_nodata)
    first = {(0, 0), (1, 2), (2, 3)}
    write_chunks(sink, labels, None, only=first)
    resumed = make_sink(store, zarr_format=2, resume=True)
    assert resumed.done_chunks() == first
    write_chunks(resumed, labels, None, only=all_chunks(resumed) - first)
    resumed.finalize({})
    reopened = ZarrSink.open(store)
    assert reopened.is_complete and reopened.layout.zarr_format == 2
    np.testing.assert_array_equal(reopened.read_labels(), labels)


def test_resume_refuses_another_zarr_format(tmp_path: Path) -> None:
    make_sink(tmp_path / "out.zarr", zarr_format=2)
    with pytest.raises(OutputError, match=r"zarr format differs \(2 vs 3\)"):
        make_sink(tmp_path / "out.zarr", resume=True)


def test_overview_levels_of_a_v2_store_open_in_gdal(tmp_path: Path) -> None:
    store = tmp_path / "out.zarr"
    sink = make_sink(store, shape=(64, 64), chunk=(16, 16), zarr_format=2)
    write_chunks(sink, expected_labels((64, 64), 3, sink.label_nodata), None)
    sink.finalize({})
    build_pyramid(store, levels=1)
    with rasterio.open(gdal_path(store, "overviews/1/labels")) as ds:
        assert ds.shape == (32, 32)
        assert ds.transform.almost_equals(UTM_TRANSFORM * Affine.scale(2), precision=1e-9)
        assert ds.crs == CRS.from_epsg(32618)


def test_volumes_stay_ome_zarr_v3(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Zarr v3; --zarr-format 2 is for rasters"):
        make_sink(tmp_path / "v.zarr", LIA, shape=(5, 6, 7), chunk=(4, 4, 4), zarr_format=2)
    assert not (tmp_path / "v.zarr").exists()


def test_layout_checks_the_format() -> None:
    assert OutputLayout((4, 4), (2, 2), 2, zarr_format="v2").zarr_format == 2
    with pytest.raises(ConfigError, match="zarr format must be 2"):
        OutputLayout((4, 4), (2, 2), 2, zarr_format=4)
    old = {"spatial_shape": [4, 4], "chunk_shape": [2, 2], "num_classes": 2}
    assert (
        OutputLayout.from_attrs({**old, "write_labels": True, "probabilities": "none"}).zarr_format
        == 3
    )


def test_rotated_grids_keep_their_transform_for_segflow(tmp_path: Path) -> None:
    transform = Affine(0.5, 0.1, 1000.0, 0.2, -0.5, 2000.0)
    geometry = raster_geometry(CRS.from_epsg(32618), transform)
    make_sink(tmp_path / "out.zarr", geometry, zarr_format=2)
    assert xr.open_zarr(tmp_path / "out.zarr").labels.rio.transform() == transform
    # GDAL takes the grid from the x/y coordinates: the README says it opens north-up there
    with rasterio.open(gdal_path(tmp_path / "out.zarr", "labels")) as ds:
        assert (ds.transform.b, ds.transform.d) == (0.0, 0.0)
