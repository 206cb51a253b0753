"""Synthetic land-cover scene: determinism, windows, geometry, classes, nodata collar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS

from segflow.errors import ConfigError
from segflow.samples import (
    SAMPLE_FILES,
    landcover_classes,
    make_landcover_scene,
    render_landcover,
    write_samples,
)
from segflow.samples.landcover import (
    BAND_NAMES,
    FIELD,
    FOREST,
    IMAGE_NODATA,
    TRUTH_NODATA,
    URBAN,
    WATER,
)


def _render(
    size: tuple[int, int], seed: int = 0, *, bands: int = 4, nodata_collar: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    return render_landcover(
        slice(0, size[0]),
        slice(0, size[1]),
        size=size,
        seed=seed,
        bands=bands,
        nodata_collar=nodata_collar,
    )


@pytest.fixture(scope="module")
def big() -> tuple[np.ndarray, np.ndarray]:
    """One 1024^2 scene shared by the statistics tests (~0.5 s)."""
    return _render((1024, 1024), seed=3)


def test_classes_are_the_documented_four() -> None:
    classes = landcover_classes()
    assert [c.name for c in classes] == ["water", "forest", "field", "urban"]
    assert (WATER, FOREST, FIELD, URBAN) == (0, 1, 2, 3)
    assert len({c.color for c in classes}) == 4  # distinguishable colours


def test_same_seed_same_data_other_seed_other_data() -> None:
    a_img, a_truth = _render((200, 300), seed=7)
    b_img, b_truth = _render((200, 300), seed=7)
    c_img, c_truth = _render((200, 300), seed=8)
    assert a_img.dtype == np.uint16 and a_img.shape == (4, 200, 300)
    assert a_truth.dtype == np.uint8 and a_truth.shape == (200, 300)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_truth, b_truth)
    assert not np.array_equal(a_img, c_img)
    assert not np.array_equal(a_truth, c_truth)


@pytest.mark.parametrize("collar", [False, True])
def test_windows_equal_the_whole_scene(collar: bool) -> None:
    size = (333, 517)  # odd sizes, windows that cut blocks, streets and parcels anywhere
    img, truth = _render(size, seed=11, nodata_collar=collar)
    for rows, cols in [
        (slice(0, 1), slice(0, 517)),
        (slice(17, 201), slice(5, 290)),
        (slice(300, 333), slice(500, 517)),
        (slice(101, 102), slice(333, 334)),
        (slice(250, None), slice(None, 64)),
    ]:
        w_img, w_truth = render_landcover(rows, cols, size=size, seed=11, nodata_collar=collar)
        np.testing.assert_array_equal(w_img, img[:, rows, cols])
        np.testing.assert_array_equal(w_truth, truth[rows, cols])


def test_layout_does_not_depend_on_scene_size() -> None:
    small_img, small_truth = _render((128, 160), seed=5)
    big_img, big_truth = _render((300, 400), seed=5)
    np.testing.assert_array_equal(small_img, big_img[:, :128, :160])
    np.testing.assert_array_equal(small_truth, big_truth[:128, :160])


def test_three_bands_are_the_first_three_of_four() -> None:
    rgb, truth3 = _render((96, 80), seed=2, bands=3)
    full, truth4 = _render((96, 80), seed=2)
    assert rgb.shape == (3, 96, 80)
    np.testing.assert_array_equal(rgb, full[:3])
    np.testing.assert_array_equal(truth3, truth4)


def test_written_files_match_the_render_and_the_asked_geometry(tmp_path: Path) -> None:
    size = (600, 520)  # > one 512 generation window, partial edge tiles
    info = make_landcover_scene(
        tmp_path / "scene.tif",
        tmp_path / "truth" / "scene_truth.tif",  # parent folders are created
        size=size,
        seed=4,
        crs="EPSG:3857",
        pixel_size=30.0,
        origin=(1000.0, 2000.0),
        tile=128,
    )
    img, truth = _render(size, seed=4)
    with rasterio.open(info.image_path) as src:
        np.testing.assert_array_equal(src.read(), img)
        assert src.crs == CRS.from_epsg(3857)
        assert tuple(src.transform)[:6] == (30.0, 0.0, 1000.0, 0.0, -30.0, 2000.0)
        assert src.dtypes == ("uint16",) * 4
        assert src.block_shapes == [(128, 128)] * 4
        assert src.profile["tiled"] and src.compression.name.lower() == "deflate"
        assert src.descriptions == BAND_NAMES
        assert src.nodata is None
        assert src.tags()["SEGFLOW_SEED"] == "4"
        assert int(src.tags()["REFLECTANCE_SCALE"]) == 10000
        assert int(img.min()) >= 1 and int(img.max()) <= 10000
    with rasterio.open(info.truth_path) as src:
        np.testing.assert_array_equal(src.read(1), truth)
        assert src.crs == CRS.from_epsg(3857)
        assert tuple(src.transform)[:6] == (30.0, 0.0, 1000.0, 0.0, -30.0, 2000.0)
        assert src.dtypes == ("uint8",)
        assert src.nodata == TRUTH_NODATA
        tags = src.tags()
        classes = json.loads(tags["SEGFLOW_CLASSES"])
        assert [c["name"] for c in classes] == ["water", "forest", "field", "urban"]
        assert tags["CLASS_3"] == "urban"
        assert src.colormap(1)[FOREST][:3] == landcover_classes()[FOREST].color
    assert info.shape_yx == size
    assert info.transform == (30.0, 0.0, 1000.0, 0.0, -30.0, 2000.0)
    assert CRS.from_user_input(info.crs) == CRS.from_epsg(3857)
    assert info.class_counts == tuple(np.bincount(truth.ravel(), minlength=4)[:4])
    assert info.nodata is None and info.nodata_pixels == 0
    assert abs(sum(info.class_fractions) - 1.0) < 1e-9


def test_same_seed_writes_the_same_data(tmp_path: Path) -> None:
    a = make_landcover_scene(tmp_path / "a.tif", tmp_path / "at.tif", size=(256, 256), seed=9)
    b = make_landcover_scene(tmp_path / "b.tif", tmp_path / "bt.tif", size=(256, 256), seed=9)
    for pa, pb in [(a.image_path, b.image_path), (a.truth_path, b.truth_path)]:
        with rasterio.open(pa) as sa, rasterio.open(pb) as sb:
            np.testing.assert_array_equal(sa.read(), sb.read())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_class_present_with_plausible_proportions(seed: int) -> None:
    _, truth = _render((1024, 1024), seed=seed)
    fractions = np.bincount(truth.ravel(), minlength=4) / truth.size
    assert fractions.size == 4  # nothing but the four classes without a collar
    assert ((fractions >= 0.05) & (fractions <= 0.60)).all(), fractions


def test_band_means_are_ordered_as_designed(big: tuple[np.ndarray, np.ndarray]) -> None:
    img, truth = big
    x = img.astype(np.float64)
    red, nir = x[2], x[3]
    mean = {k: x[:, truth == k].mean(axis=1) for k in range(4)}
    ndvi = (nir - red) / (nir + red)
    mndvi = {k: ndvi[truth == k].mean() for k in range(4)}
    # NIR: water dark, urban low, fields (mixed crop states) high, forest highest
    assert mean[WATER][3] < mean[URBAN][3] < mean[FIELD][3] < mean[FOREST][3]
    assert mean[WATER][3] < 500  # water absorbs the NIR
    # vegetation index: forest > fields > urban > water (negative)
    assert mndvi[FOREST] > mndvi[FIELD] > mndvi[URBAN] > 0 > mndvi[WATER]
    # visible: urban bright, forest dark; water darker in the NIR than in blue
    assert mean[URBAN][0] > mean[FIELD][0] > mean[FOREST][0]
    assert mean[URBAN][:3].sum() > mean[FOREST][:3].sum()
    assert mean[WATER][3] < mean[WATER][0]
    # forest canopy is rough, water is smooth (texture a CNN can use)
    assert nir[truth == FOREST].std() > 2 * nir[truth == WATER].std()


def test_per_pixel_spectra_overlap_but_separate_on_average(
    big: tuple[np.ndarray, np.ndarray],
) -> None:
    """A per-pixel nearest-class-mean rule is far better than chance but far from perfect."""
    img, truth = big
    x = img.reshape(4, -1).T.astype(np.float64)
    y = truth.ravel()
    x = (x - x.mean(0)) / x.std(0)
    centroids = np.stack([x[y == k].mean(0) for k in range(4)])
    pred = ((x[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    accuracy = (pred == y).mean()
    assert 0.55 < accuracy < 0.92, accuracy


def test_nodata_collar(tmp_path: Path) -> None:
    size = (256, 320)
    info = make_landcover_scene(
        tmp_path / "c.tif", tmp_path / "ct.tif", size=size, seed=1, nodata_collar=True
    )
    with rasterio.open(info.image_path) as src:
        img = src.read()
        assert src.nodata == IMAGE_NODATA
        mask = src.dataset_mask()
    with rasterio.open(info.truth_path) as src:
        truth = src.read(1)
        assert src.nodata == TRUTH_NODATA
    invalid = truth == TRUTH_NODATA
    # corners are outside the rotated footprint, the centre inside
    for r, c in [(0, 0), (0, size[1] - 1), (size[0] - 1, 0), (size[0] - 1, size[1] - 1)]:
        assert invalid[r, c]
    assert not invalid[size[0] // 2, size[1] // 2]
    assert 0.03 < invalid.mean() < 0.3
    # image nodata exactly where the truth is nodata, in every band; never 0 inside
    np.testing.assert_array_equal((img == IMAGE_NODATA).all(axis=0), invalid)
    assert (img[:, ~invalid] > 0).all()
    np.testing.assert_array_equal(mask == 0, invalid)
    assert info.nodata == IMAGE_NODATA
    assert info.nodata_pixels == int(invalid.sum())
    assert sum(info.class_counts) + info.nodata_pixels == truth.size
    assert set(np.unique(truth[~invalid])) <= {0, 1, 2, 3}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bands": 5}, "bands"),
        ({"tile": 100}, "tile"),
        ({"crs": "EPSG:999999"}, "crs"),
        ({"pixel_size": 0.0}, "pixel_size"),
        ({"size": (0, 10)}, "size"),
        ({"seed": -1}, "seed"),
        ({"origin": (1.0,)}, "origin"),
    ],
)
def test_bad_parameters_raise_config_errors(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        make_landcover_scene(tmp_path / "x.tif", tmp_path / "y.tif", **kwargs)


def test_same_path_for_image_and_truth_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="same"):
        make_landcover_scene(tmp_path / "x.tif", tmp_path / "x.tif", size=(32, 32))


def test_bad_windows_are_refused() -> None:
    with pytest.raises(ConfigError, match="empty"):
        render_landcover(slice(10, 10), slice(0, 5), size=(32, 32))
    with pytest.raises(ConfigError, match="step"):
        render_landcover(slice(0, 10, 2), slice(0, 5), size=(32, 32))


# write_samples lives in segflow/samples/__init__.py; tested here with the scene it writes.
def test_write_samples_small(tmp_path: Path) -> None:
    paths = write_samples(tmp_path / "samples", size="small")
    assert set(paths) == set(SAMPLE_FILES)
    assert all(p.is_file() and p.parent == tmp_path / "samples" for p in paths.values())
    with rasterio.open(paths["landcover_image"]) as src:
        assert (src.height, src.width, src.count) == (512, 512, 4)
    with rasterio.open(paths["landcover_truth"]) as src:
        present = np.unique(src.read(1))
    assert set(present.tolist()) == {0, 1, 2, 3}
    with pytest.raises(ConfigError, match="did you mean 'small'"):
        write_samples(tmp_path / "other", size="smal")
