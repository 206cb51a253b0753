"""Polygons exported chunk by chunk equal rasterio.features.shapes on the whole array."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio.features
import shapely
from rasterio.crs import CRS

from segflow.errors import ConfigError, OutputError
from segflow.outputs.polygons import export_polygons
from tests.outputs.label_stores import (
    TRANSFORM,
    blobs,
    raster_geometry,
    specks,
    volume_geometry,
    write_store,
)

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # map coordinates = pixel coordinates


def whole_array_shapes(labels: np.ndarray, value: int) -> list:
    found = rasterio.features.shapes(labels.astype(np.int32), mask=labels == value, connectivity=4)
    return [shapely.geometry.shape(g) for g, _ in found]


def read(path):
    return gpd.read_parquet(path) if path.suffix == ".parquet" else pyogrio.read_dataframe(path)


@pytest.mark.parametrize("fmt", ["gpkg", "parquet", "geojson"])
def test_counts_and_areas_per_class(tmp_path, fmt):
    labels = blobs((130, 150), scale=5)
    store = write_store(tmp_path / "s.zarr", labels, (32, 32))
    result = export_polygons(store, tmp_path / f"p.{fmt}", to=fmt)
    frame = read(result.path)
    assert len(frame) == result.features
    assert CRS.from_user_input(frame.crs) == CRS.from_epsg(32618)
    for value, name in enumerate(["background", "forest", "water"]):
        mine = frame[frame.class_id == value]
        assert len(mine) == len(whole_array_shapes(labels, value)) == result.per_class[name]
        assert set(mine.class_name) == {name}
        pixels = int((labels == value).sum())
        assert mine.pixels.sum() == pixels
        assert mine.geometry.area.sum() == pytest.approx(pixels * 900.0)
        assert mine.area_m2.sum() == pytest.approx(pixels * 900.0)
    assert frame.geometry.is_valid.all() and set(frame.geom_type) == {"Polygon"}


@pytest.mark.parametrize("chunk", [(16, 16), (9, 13), (64, 64)])
def test_geometries_equal_whole_array_shapes(tmp_path, chunk):
    labels = blobs((64, 64), scale=4, seed=2)
    geometry = raster_geometry(None, IDENTITY)
    store = write_store(tmp_path / "s.zarr", labels, chunk, geometry=geometry)
    frame = read(export_polygons(store, tmp_path / "p.gpkg").path)
    for value in range(3):
        expected = sorted(shapely.normalize(g).wkt for g in whole_array_shapes(labels, value))
        mine = frame[frame.class_id == value].geometry
        assert sorted(shapely.normalize(g).wkt for g in mine) == expected


def test_holes_survive_across_chunk_borders(tmp_path):
    labels = np.zeros((40, 40), np.uint8)
    labels[5:35, 5:35] = 1  # a square ring over four chunks ...
    labels[12:28, 12:28] = 0  # ... with a hole that crosses chunk borders too
    labels[18:22, 18:22] = 2  # an island in the hole
    geometry = raster_geometry(None, IDENTITY)
    store = write_store(tmp_path / "s.zarr", labels, (16, 16), geometry=geometry)
    frame = read(export_polygons(store, tmp_path / "p.gpkg", classes="forest,water").path)
    ring = frame[frame.class_id == 1].geometry.iloc[0]
    assert len(frame) == 2 and len(ring.interiors) == 1
    assert ring.area == 30 * 30 - 16 * 16
    assert shapely.Polygon(ring.interiors[0]).area == 16 * 16


def test_rotated_transform_moves_the_polygons(tmp_path):
    transform = (20.0, 5.0, 300000.0, -4.0, -25.0, 4500000.0)
    labels = np.zeros((20, 20), np.uint8)
    labels[3:9, 4:17] = 1
    store = write_store(
        tmp_path / "s.zarr", labels, (8, 8), geometry=raster_geometry(transform=transform)
    )
    frame = read(export_polygons(store, tmp_path / "p.gpkg", classes=[1]).path)
    (polygon,) = frame.geometry
    a, b, c, d, e, f = transform
    assert polygon.area == pytest.approx(6 * 13 * abs(a * e - b * d))
    assert polygon.contains(shapely.Point(c + a * 10 + b * 5, f + d * 10 + e * 5))


def test_empty_selection_writes_an_empty_layer(tmp_path):
    labels = np.zeros((20, 20), np.uint8)
    store = write_store(tmp_path / "s.zarr", labels, (8, 8))
    result = export_polygons(store, tmp_path / "p.gpkg", classes="water")
    assert result.features == 0 and len(pyogrio.read_dataframe(result.path)) == 0


def test_bad_inputs(tmp_path):
    raster = write_store(tmp_path / "r.zarr", blobs((20, 20)), (8, 8))
    volume = write_store(
        tmp_path / "v.zarr", blobs((8, 8, 8)), (8, 8, 8), geometry=volume_geometry()
    )
    partial = write_store(tmp_path / "p.zarr", blobs((20, 20)), (8, 8), finalize=False)
    with pytest.raises(ConfigError, match="polygons need a raster store"):
        export_polygons(volume, tmp_path / "v.gpkg")
    with pytest.raises(OutputError, match="not complete"):
        export_polygons(partial, tmp_path / "p.gpkg")
    with pytest.raises(ConfigError, match="did you mean 'gpkg'"):
        export_polygons(raster, tmp_path / "x.gpkg", to="gpk")
    with pytest.raises(ConfigError, match="unknown class 'wter'"):
        export_polygons(raster, tmp_path / "x.gpkg", classes="wter")
    export_polygons(raster, tmp_path / "x.gpkg")
    with pytest.raises(OutputError, match="exists"):
        export_polygons(raster, tmp_path / "x.gpkg")
    export_polygons(raster, tmp_path / "x.gpkg", overwrite=True)
    assert sorted(p.name for p in tmp_path.glob("*.gpkg")) == ["x.gpkg"]  # no leftovers


def test_the_transform_of_the_label_store_fixture_is_north_up():
    assert TRANSFORM[1] == TRANSFORM[3] == 0.0


@pytest.mark.parametrize(
    ("min_area", "pixels"),
    [(9 * 900.0, 9), ("9px", 9), ("0.81 ha", 9), ("8100m2", 9), ("8101 m2", 10), (0.5, 1)],
)
def test_min_area_drops_small_polygons(tmp_path, min_area, pixels):
    labels = blobs((70, 80), scale=3, seed=4)
    store = write_store(tmp_path / "s.zarr", labels, (16, 16))  # 30 m pixels: 900 m²
    everything = read(export_polygons(store, tmp_path / "all.gpkg").path)
    result = export_polygons(store, tmp_path / "p.gpkg", min_area=min_area)
    frame = read(result.path)
    kept = everything[everything.pixels >= pixels]
    assert len(frame) == len(kept) == result.features
    assert result.dropped == len(everything) - len(kept) and (pixels == 1) == (result.dropped == 0)
    assert sorted(frame.pixels) == sorted(kept.pixels)
    assert sum(result.per_class.values()) == len(frame)


def test_min_area_in_metres_needs_a_projected_crs(tmp_path):
    store = write_store(
        tmp_path / "s.zarr", blobs((20, 20)), (8, 8), geometry=raster_geometry(None, IDENTITY)
    )
    with pytest.raises(ConfigError, match="needs a projected CRS"):
        export_polygons(store, tmp_path / "p.gpkg", min_area="1ha")
    frame = read(export_polygons(store, tmp_path / "p.gpkg", min_area=4).path)  # CRS units²
    assert (frame.geometry.area >= 4).all()


@pytest.mark.parametrize("value", ["-3", "0", "ten", "3 acres", "1mL"])
def test_bad_min_area(tmp_path, value):
    store = write_store(tmp_path / "s.zarr", blobs((20, 20)), (8, 8))
    with pytest.raises(ConfigError, match="--min-area"):
        export_polygons(store, tmp_path / "p.gpkg", min_area=value)
    assert not (tmp_path / "p.gpkg").exists()


def test_simplify_keeps_each_polygon_valid_with_its_holes(tmp_path):
    yy, xx = np.indices((80, 80))
    labels = (np.hypot(yy - 40, xx - 40) < 30).astype(np.uint8)  # a staircase disc ...
    labels[np.hypot(yy - 40, xx - 40) < 10] = 0  # ... with a round hole across chunks
    store = write_store(tmp_path / "s.zarr", labels, (16, 16))  # 30 m pixels
    exact = read(export_polygons(store, tmp_path / "a.gpkg", classes="forest").path)
    result = export_polygons(store, tmp_path / "b.gpkg", classes="forest", simplify=45.0)
    simple = read(result.path)
    (before,), (after,) = exact.geometry, simple.geometry
    assert after.is_valid and len(after.interiors) == 1
    assert len(after.exterior.coords) < len(before.exterior.coords) / 2
    assert after.hausdorff_distance(before) <= 45.0 + 1e-6  # within the tolerance
    assert simple.pixels.tolist() == exact.pixels.tolist()  # attributes stay the component's
    np.testing.assert_allclose(simple["area"], exact["area"])
    unchanged = read(export_polygons(store, tmp_path / "c.gpkg", classes="forest", simplify=0).path)
    assert unchanged.geometry.iloc[0].equals_exact(before, 0)
    with pytest.raises(ConfigError, match="--simplify"):
        export_polygons(store, tmp_path / "d.gpkg", simplify=-1.0)


@pytest.mark.parametrize(("chunk", "strip_pixels"), [((7, 9), 1), ((16, 41), 80), ((5, 64), 200)])
def test_stitched_strips_equal_whole_array_shapes(tmp_path, monkeypatch, chunk, strip_pixels):
    """Strips of 1 to 5 rows, cut inside chunk rows too, and open chains spilled as soon as
    they grow: pieces that touch only diagonally, holes closed across strips and rings
    that meet themselves come out as GDAL's."""
    import segflow.outputs.polygons as polygons
    import segflow.outputs.stitch as stitch

    monkeypatch.setattr(polygons, "STRIP_PIXELS", strip_pixels)
    monkeypatch.setattr(stitch, "SPILL_AT", 4)
    labels = specks((45, 41), seed=3)
    labels[20:30, 10:30] = 1  # a ring across strips with specks in its hole
    labels[22:28, 12:28] = 0
    store = write_store(
        tmp_path / "s.zarr", labels, chunk, geometry=raster_geometry(None, IDENTITY)
    )
    frame = read(export_polygons(store, tmp_path / "p.gpkg").path)
    assert frame.geometry.is_valid.all()
    for value in range(3):
        expected = sorted(shapely.normalize(g).wkt for g in whole_array_shapes(labels, value))
        mine = frame[frame.class_id == value].geometry
        assert sorted(shapely.normalize(g).wkt for g in mine) == expected
