"""Label pyramids: mode/nearest downsampling against a brute-force reference, and the
levels written into real raster and volume stores (xarray/rioxarray and OME-Zarr)."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
import zarr
from rasterio.crs import CRS

from segflow.errors import ConfigError, OutputError
from segflow.io.source import RasterGeometry, VolumeGeometry
from segflow.io.zarr_sink import OutputLayout, ZarrSink
from segflow.models.meta import ClassInfo
from segflow.outputs.pyramid import (
    Resampling,
    build_pyramid,
    downsample_labels,
    open_level,
    plan_factors,
    pyramid_levels,
    raster_level_transform,
    volume_level_affine,
)
from tests.io.ome import as_written_before_zyx, valid_label_group

UTM = RasterGeometry(
    crs_wkt=CRS.from_epsg(32618).to_wkt(),
    transform=(30.0, 0.0, 300000.0, 0.0, -30.0, 4500000.0),
    georeferenced=True,
)
OBLIQUE = (
    (-0.9986295347545738, 0.0523359562429438, 0.0, 127.5),
    (0.0, 0.0, -1.5, 145.1),
    (0.0523359562429438, 0.9986295347545738, 0.0, -109.3),
    (0.0, 0.0, 0.0, 1.0),
)
VOLUME = VolumeGeometry(
    affine=OBLIQUE, sform_code=2, qform_code=1, orientation=("L", "I", "A"), zooms=(1.0, 1.0, 1.5)
)


def make_store(
    path: Path, labels: np.ndarray, geometry, chunk, num_classes=4, finalize=True
) -> ZarrSink:
    classes = [ClassInfo(name=f"class {i}", color=(10 * i, 20, 30)) for i in range(num_classes)]
    sink = ZarrSink.create(
        path,
        OutputLayout(labels.shape, chunk, num_classes),
        geometry,
        classes,
        {"input": {"path": "in"}},
        "fp",
    )
    for index in np.ndindex(*sink.chunk_grid_shape):
        region = sink.chunk_region(index)
        sink.write_chunk(index, labels[region], None)
    if finalize:
        sink.finalize({})
    return sink


def blobs(shape, num_classes=4, seed=0, nodata=255) -> np.ndarray:
    """Piecewise-constant regions plus noise and a nodata corner."""
    rng = np.random.default_rng(seed)
    grids = np.indices(shape)
    labels = (sum(g // (5 + 3 * i) for i, g in enumerate(grids)) % num_classes).astype(np.uint8)
    noise = rng.random(shape) < 0.1
    labels[noise] = rng.integers(0, num_classes, noise.sum())
    labels[(slice(0, 7),) * len(shape)] = nodata
    return labels


def reference_mode(labels: np.ndarray, factor, nodata: int) -> np.ndarray:
    """GDAL's MODE, one block at a time: count in scan order, a label becomes the answer
    when its count first exceeds the best so far."""
    out_shape = tuple(-(-n // f) for n, f in zip(labels.shape, factor))
    out = np.empty(out_shape, labels.dtype)
    for index in itertools.product(*(range(n) for n in out_shape)):
        block = labels[tuple(slice(i * f, (i + 1) * f) for i, f in zip(index, factor))]
        counts: Counter[int] = Counter()
        best, best_count = nodata, 0
        for value in (int(v) for v in block.ravel() if v != nodata):
            counts[value] += 1
            if counts[value] > best_count:
                best, best_count = value, counts[value]
        out[index] = best
    return out


# --- downsampling -----------------------------------------------------------------------------


def test_mode_ignores_nodata_and_breaks_ties_like_gdal():
    nodata = 255
    labels = np.array(
        [
            [1, 2, 255, 255, 3, 3],
            [2, 2, 255, 255, 255, 4],
            [5, 6, 255, 7, 9, 8],
            [6, 5, 255, 255, 8, 9],
        ],
        dtype=np.uint8,
    )
    out = downsample_labels(labels, 2, nodata)
    # 2 wins 3:1; an all-nodata block stays nodata; 3 beats the lone 4 despite nodata;
    # 5,6,6,5 -> 6 (first to reach two); a single valid 7 wins over nodata; 9,8,8,9 -> 8
    np.testing.assert_array_equal(out, [[2, 255, 3], [6, 7, 8]])


@pytest.mark.parametrize(
    ("shape", "factor"),
    [((37, 53), (2, 2)), ((16, 9), (2, 1)), ((13, 11, 9), (2, 2, 2)), ((12, 10, 7), (2, 2, 1))],
)
def test_mode_matches_a_brute_force_reference_including_odd_edges(shape, factor):
    labels = blobs(shape, num_classes=5, seed=len(shape))
    np.testing.assert_array_equal(
        downsample_labels(labels, factor, 255, "mode"), reference_mode(labels, factor, 255)
    )


def test_nearest_takes_the_block_centre_and_keeps_edge_labels():
    labels = np.arange(35, dtype=np.uint16).reshape(5, 7)
    out = downsample_labels(labels, 2, 65535, "nearest")
    assert out.shape == (3, 4)
    np.testing.assert_array_equal(out[:2, :3], labels[1:4:2, 1:6:2])
    assert out[2, 3] == labels[4, 6]  # partial edge block: its own (last) pixel, not padding


def test_unknown_resampling_suggests_the_closest_name():
    with pytest.raises(ConfigError, match="did you mean 'mode'"):
        Resampling.parse("mdoe")


def test_plan_factors_stops_at_the_min_size_and_evens_out_thick_slices():
    assert plan_factors((1000, 1300)) == [(2, 2), (2, 2), (2, 2)]  # 1300 -> 650 -> 325 -> 163
    assert plan_factors((200, 100)) == []
    assert plan_factors((200, 100), levels=2) == [(2, 2), (2, 2)]
    # 0.8 x 0.8 x 3 mm: in-plane first, then all axes once the spacing is about even
    steps = plan_factors((512, 512, 40), (0.8, 0.8, 3.0), min_size=32)
    assert steps[:3] == [(2, 2, 1), (2, 2, 1), (2, 2, 2)]


def test_level_geometry_formulas():
    assert raster_level_transform((30.0, 1.0, 5.0, 2.0, -30.0, 9.0), (4, 2)) == (
        60.0,
        4.0,
        5.0,
        4.0,
        -120.0,
        9.0,
    )
    affine = np.asarray(OBLIQUE)
    level = volume_level_affine(affine, (2, 2, 1))
    # a level voxel's centre is the mean of the centres of the voxels it covers
    block = [affine @ [i, j, 0, 1] for i in (0, 1) for j in (0, 1)]
    np.testing.assert_allclose(level @ [0, 0, 0, 1], np.mean(block, axis=0))
    np.testing.assert_allclose(level @ [1, 0, 0, 1] - level @ [0, 0, 0, 1], 2 * affine[:, 0])


# --- stores -----------------------------------------------------------------------------------


def test_raster_pyramid_levels_open_with_xarray_and_rioxarray(tmp_path):
    labels = blobs((700, 1100))
    store = tmp_path / "out.zarr"
    make_store(store, labels, UTM, (128, 256))
    levels = build_pyramid(store)
    assert [lv.shape for lv in levels] == [(350, 550), (175, 275), (88, 138)]
    assert pyramid_levels(store) == levels
    expected = labels
    for lv in levels:
        expected = downsample_labels(expected, 2, 255)  # each level from the one before
        ds = xr.open_zarr(store, group=f"overviews/{lv.level}", mask_and_scale=False)
        np.testing.assert_array_equal(ds["labels"].values, expected)
        np.testing.assert_array_equal(open_level(store, lv.level)[...], expected)
        assert ds["labels"].rio.crs == CRS.from_epsg(32618)
        assert tuple(ds["labels"].rio.transform())[:6] == raster_level_transform(
            UTM.transform, lv.factor
        )
        assert ds["labels"].attrs["flag_meanings"].startswith("class_0")
    # level 0 is untouched and the whole store still opens as a tree
    root = xr.open_zarr(store)
    assert list(root.data_vars) == ["labels"]
    tree = xr.open_datatree(store, engine="zarr")
    assert tree["overviews/2"].dataset["labels"].shape == (175, 275)


def test_chunking_does_not_change_the_levels(tmp_path):
    labels = blobs((300, 260), seed=3)
    a = make_store(tmp_path / "a.zarr", labels, UTM, (64, 64))
    b = make_store(tmp_path / "b.zarr", labels, UTM, (300, 100))
    build_pyramid(a, levels=3, min_size=1)
    build_pyramid(b, levels=3, min_size=1, workers=1)
    for level in (1, 2, 3):
        np.testing.assert_array_equal(open_level(a, level)[...], open_level(b, level)[...])


def test_volume_levels_are_ome_multiscale_datasets(tmp_path):
    labels = blobs((70, 64, 40), seed=4)
    store = tmp_path / "vol.zarr"
    make_store(store, labels, VOLUME, (32, 32, 16))
    levels = build_pyramid(store, min_size=16)
    assert [lv.path for lv in levels] == ["1", "2", "3"]
    assert [lv.shape for lv in levels] == [(35, 32, 20), (18, 16, 10), (9, 8, 5)]
    root = zarr.open_group(store, mode="r")
    ome = root.attrs["ome"]
    valid_label_group(store)  # every level listed, with its array
    datasets = ome["multiscales"][0]["datasets"]
    assert [d["path"] for d in datasets] == ["0", "1", "2", "3"]
    scales = [d["coordinateTransformations"][0]["scale"] for d in datasets]
    assert scales == [[1.0, 1.0, 1.5], [2.0, 2.0, 3.0], [4.0, 4.0, 6.0], [8.0, 8.0, 12.0]]
    expected, previous = labels, (1, 1, 1)
    for lv in levels:
        step = tuple(f // p for f, p in zip(lv.factor, previous))
        expected, previous = downsample_labels(expected, step, 255), lv.factor
        np.testing.assert_array_equal(root[lv.path][...], expected)
        assert root[lv.path].dtype == np.uint8
    recorded = root.attrs["segflow"]["pyramid"]["levels"]
    np.testing.assert_allclose(recorded[1]["affine"], volume_level_affine(OBLIQUE, (4, 4, 4)))


def test_levels_take_the_axis_names_of_level_0(tmp_path):
    labels = blobs((40, 36, 20), seed=5)
    new, old = tmp_path / "new.zarr", tmp_path / "old.zarr"
    make_store(new, labels, VOLUME, (16, 16, 8))
    make_store(old, labels, VOLUME, (16, 16, 8))
    as_written_before_zyx(old)  # a store written when the axes were named i, j, k
    for store, names in ((new, ["z", "y", "x"]), (old, ["i", "j", "k"])):
        levels = build_pyramid(store, levels=2, min_size=1)
        valid_label_group(store)  # every level's dimension_names match the OME axes
        root = zarr.open_group(store, mode="r")
        assert [a["name"] for a in root.attrs["ome"]["multiscales"][0]["axes"]] == names
        for lv in levels:
            assert list(root[lv.path].metadata.dimension_names) == names
        np.testing.assert_array_equal(root["1"][...], open_level(new, 1)[...])


def test_rebuild_needs_overwrite_and_replaces_the_levels(tmp_path):
    store = tmp_path / "out.zarr"
    make_store(store, blobs((300, 300)), UTM, (128, 128))
    build_pyramid(store, levels=2, min_size=1)
    with pytest.raises(OutputError, match="--overwrite"):
        build_pyramid(store)
    levels = build_pyramid(store, levels=1, min_size=1, resampling="nearest", overwrite=True)
    assert [lv.level for lv in levels] == [1]
    assert "2" not in zarr.open_group(store, mode="r", use_consolidated=False)["overviews"]
    assert zarr.open_group(store, mode="r").attrs["segflow"]["pyramid"]["resampling"] == "nearest"


def test_incomplete_store_is_refused(tmp_path):
    store = tmp_path / "out.zarr"
    sink = ZarrSink.create(
        store,
        OutputLayout((64, 64), (32, 32), 2),
        UTM,
        [ClassInfo(name="a"), ClassInfo(name="b")],
        {},
        "fp",
    )
    sink.write_chunk((0, 0), np.zeros((32, 32), np.uint8), None)
    with pytest.raises(OutputError, match="1 of 4 chunks"):
        build_pyramid(store)
