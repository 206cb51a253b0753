"""--sieve on a chunked store equals rasterio.features.sieve on the whole array (GDAL's sieve)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import rasterio.features
from scipy import ndimage

from segflow.errors import ConfigError, one_line
from segflow.io.zarr_sink import ZarrSink
from segflow.outputs.components import find_components
from segflow.outputs.postprocess import postprocess
from segflow.outputs.sieve import plan_sieve
from tests.outputs.label_stores import NODATA, blobs, specks, write_store

NEIGHBOURS = {"full": 8, "face": 4}


def rasterio_sieve(labels: np.ndarray, size: int, connectivity: str) -> np.ndarray:
    """The whole-array answer; nodata is rasterio's mask (no polygon, no neighbour)."""
    return rasterio.features.sieve(
        labels, size, mask=labels != NODATA, connectivity=NEIGHBOURS[connectivity]
    )


def sieved(tmp_path, labels, chunk, size, connectivity="full", k=3, name="o.zarr", **kwargs):
    store = write_store(tmp_path / f"in-{name}", labels, chunk, k=k)
    result = postprocess(store, tmp_path / name, sieve=size, connectivity=connectivity, **kwargs)
    return ZarrSink.open_finished(result.path).read_labels(), result.summary


CHUNKINGS = [(16, 16), (7, 11), (13, 64), (64, 64)]


@pytest.mark.parametrize("connectivity", ["full", "face"])
@pytest.mark.parametrize("chunk", CHUNKINGS, ids=[f"{a}x{b}" for a, b in CHUNKINGS])
@pytest.mark.parametrize("size", [2, 9])
def test_sieve_equals_rasterio_on_the_whole_array(tmp_path, chunk, connectivity, size):
    labels = specks((61, 75), seed=size)
    got, summary = sieved(tmp_path, labels, chunk, size, connectivity)
    expected = rasterio_sieve(labels, size, connectivity)
    assert (expected != labels).sum() > 20  # the sieve does something
    np.testing.assert_array_equal(got, expected)
    assert summary["sieve"]["merged"] > 0


@pytest.mark.parametrize("connectivity", ["full", "face"])
@pytest.mark.parametrize("seed", range(9))
def test_random_images_and_chunkings(tmp_path, seed, connectivity):
    """Noise, blocks and nodata with few classes: equal sizes (ties) everywhere."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(8, 40, 2))
    k = int(rng.integers(2, 4))
    if seed % 3 == 0:
        labels = rng.integers(0, k, shape).astype(np.uint8)  # all specks
    elif seed % 3 == 1:  # a checkerboard of b x b blocks: every neighbour the same size
        b = int(rng.integers(1, 4))
        yy, xx = np.indices(shape)
        labels = ((yy // b + xx // b) % k).astype(np.uint8)
    else:
        labels = specks(shape, k=k, seed=seed, density=0.2)
    labels[rng.random(shape) < 0.05 * (seed % 2)] = NODATA
    chunk = (int(rng.integers(1, 12)), int(rng.integers(1, 12)))
    size = int(rng.integers(2, 15))
    got, _ = sieved(tmp_path, labels, chunk, size, connectivity, k=k)
    np.testing.assert_array_equal(got, rasterio_sieve(labels, size, connectivity))


def test_chunks_of_256_with_components_across_borders_and_corners(tmp_path):
    labels = specks((530, 600), seed=7, density=0.03)
    got, _ = sieved(tmp_path, labels, (256, 256), 9)
    np.testing.assert_array_equal(got, rasterio_sieve(labels, 9, "full"))


def test_ties_go_to_the_neighbour_gdal_touches_first(tmp_path):
    labels = np.zeros((7, 7), np.uint8)
    labels[:, 4:] = 2  # 21 pixels of water right of the speck, 21 of background left
    labels[:, 3] = 1
    labels[3, 3] = 0  # splits the forest column: two forest pieces of 3
    labels[0:3, 3] = 1
    for connectivity in ("full", "face"):
        got, _ = sieved(tmp_path, labels, (2, 2), 4, connectivity, name=f"{connectivity}.zarr")
        expected = rasterio_sieve(labels, 4, connectivity)
        np.testing.assert_array_equal(got, expected)
    # the upper forest piece touches background (left of its first pixel) first
    assert (expected[0:3, 3] == 0).all()


def test_chains_of_small_neighbours_and_nodata(tmp_path):
    labels = np.full((9, 12), 0, np.uint8)
    labels[1:4, 1:4] = 1  # 9 px of forest ...
    labels[2, 2] = 2  # ... around a water speck: speck -> forest (small) -> background
    labels[6:9, 8:12] = NODATA  # nodata is larger than anything but is no neighbour
    labels[7, 7] = 2  # a speck between nodata and background: goes to background
    labels[0:3, 9:12] = NODATA
    labels[0, 11] = 1  # enclosed by nodata and the edges: isolated, stays
    got, summary = sieved(tmp_path, labels, (4, 5), 10)
    expected = rasterio_sieve(labels, 10, "full")
    np.testing.assert_array_equal(got, expected)
    assert got[2, 2] == 0 and got[7, 7] == 0 and got[0, 11] == 1
    assert (got == NODATA).sum() == (labels == NODATA).sum()
    assert summary["sieve"]["isolated"] == 1 and summary["sieve"]["merged"] == 3


def test_a_cycle_of_small_neighbours_stays(tmp_path):
    labels = np.array([[1, 1, 2, 2]], np.uint8)  # two polygons of 2, nothing large
    got, summary = sieved(tmp_path, labels, (1, 3), 3)
    np.testing.assert_array_equal(got, rasterio_sieve(labels, 3, "full"))
    np.testing.assert_array_equal(got, labels)
    assert summary["sieve"]["unmergeable"] == 2


def test_plan_counts(tmp_path):
    labels = specks((40, 50), seed=3)
    store = write_store(tmp_path / "s.zarr", labels, (16, 16))
    components = find_components(store)
    plan = plan_sieve(components, 6)
    sizes = components.table.sizes
    assert plan.small == int((sizes < 6).sum())
    assert plan.merged + plan.isolated + plan.unmergeable == plan.small
    assert plan.becomes[0] == -1 and (plan.becomes[1:][sizes >= 6] == -1).all()


def test_sieve_then_min_size_and_keep_largest(tmp_path):
    labels = specks((70, 66), seed=11)
    got, summary = sieved(tmp_path, labels, (16, 24), 5, min_size=30, keep_largest="water")
    first = rasterio_sieve(labels, 5, "full")
    expected = first.copy()
    for value in (1, 2):  # min-size on every class but fill, on the sieved image
        ids, n = ndimage.label(first == value, np.ones((3, 3)))
        sizes = np.bincount(ids.ravel(), minlength=n + 1)
        drop = sizes < 30
        if value == 2:
            drop[1:][np.argsort(-sizes[1:], kind="stable")[1:]] = True
        drop[0] = False
        expected[drop[ids]] = 0
    np.testing.assert_array_equal(got, expected)
    assert summary["sieve"]["merged"] > 0 and summary["components"][0]["name"] == "forest"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".sieved-")]  # cleaned up


def test_provenance_summary_and_units(tmp_path):
    labels = specks((50, 40), seed=4)
    store = write_store(tmp_path / "in.zarr", labels, (16, 16))  # 30 m pixels: 900 m²
    result = postprocess(store, tmp_path / "ha.zarr", sieve="0.5ha", connectivity="face")
    made = ZarrSink.open_finished(result.path)
    assert made.attrs["postprocess"]["sieve"] == {"value": 0.5, "unit": "ha"}
    assert made.summary["sieve_pixels"] == pytest.approx(50 / 9)
    rows = {row["name"]: row for row in made.summary["sieve"]["classes"]}
    assert set(rows) == {"background", "forest", "water"}
    changed = int((made.read_labels() != labels).sum())
    assert sum(row["pixels_removed"] for row in rows.values()) == changed
    assert made.summary["sieve"]["pixels_changed"] == changed
    np.testing.assert_array_equal(made.read_labels(), rasterio_sieve(labels, 6, "face"))


@pytest.mark.parametrize(
    ("value", "match"),
    [(0, "--sieve must be greater than 0"), ("many", "--sieve takes a size"), ("3mL", "unit")],
)
def test_bad_sieve_sizes(tmp_path, value, match):
    store = write_store(tmp_path / "in.zarr", blobs((20, 20)), (16, 16))
    with pytest.raises(ConfigError, match=match) as caught:
        postprocess(store, tmp_path / "o.zarr", sieve=value)
    assert "\n" not in one_line(caught.value) and not (tmp_path / "o.zarr").exists()


# --- volumes: GDAL's rule in 3-D ---------------------------------------------------------------


def whole_array_sieve(labels: np.ndarray, size: int, connectivity: str) -> np.ndarray:
    """GDAL's rule on the whole array, written out plainly (any dimension): components of
    equal values; each small one's biggest neighbour is the largest, ties to the first
    contact (later voxel in raster order, then the rank of the offset back to the earlier
    one); a chain of biggest neighbours gives the first large component's value."""
    rank = labels.ndim if connectivity == "full" else 1
    structure = ndimage.generate_binary_structure(labels.ndim, rank)
    ids = np.zeros(labels.shape, np.int64)
    value_of = [None]
    for value in np.unique(labels[labels != NODATA]):
        found, n = ndimage.label(labels == value, structure)
        ids[found > 0] = found[found > 0] + len(value_of) - 1
        value_of += [int(value)] * n
    sizes = np.bincount(ids.ravel(), minlength=len(value_of))
    steps = (0, -1, 1) if connectivity == "full" else (0,)
    offsets = [
        (0,) * lead + (-1,) + tail
        for lead in range(labels.ndim)
        for tail in itertools.product(steps, repeat=labels.ndim - lead - 1)
    ]
    best: dict[int, tuple[int, int, int]] = {}  # small id -> (-size, contact, neighbour)
    flat = np.arange(ids.size).reshape(ids.shape)
    for r, d in enumerate(offsets):
        here = tuple(slice(max(0, -s), n - max(0, s)) for s, n in zip(d, ids.shape))
        there = tuple(slice(h.start + s, h.stop + s) for h, s in zip(here, d))
        a, b, at = ids[here].ravel(), ids[there].ravel(), flat[here].ravel()
        for x, y, p in zip(a.tolist(), b.tolist(), at.tolist()):
            if x and y and x != y:
                for who, other in ((x, y), (y, x)):
                    if sizes[who] < size:
                        offer = (-int(sizes[other]), p * len(offsets) + r, other)
                        best[who] = min(best.get(who, offer), offer)
    out = labels.copy()
    for who in best:
        seen, step = {who}, best[who][2]
        while sizes[step] < size and step in best and best[step][2] not in seen:
            seen.add(step)
            step = best[step][2]
        if sizes[step] >= size:
            out[ids == who] = value_of[step]
    return out


def test_the_plain_rule_is_gdals_in_2d():
    labels = specks((40, 47), seed=5)
    for connectivity in ("full", "face"):
        for size in (3, 8):
            expected = rasterio_sieve(labels, size, connectivity)
            np.testing.assert_array_equal(whole_array_sieve(labels, size, connectivity), expected)


@pytest.mark.parametrize("connectivity", ["full", "face"])
@pytest.mark.parametrize("chunk", [(5, 6, 7), (16, 16, 16), (3, 17, 4)])
@pytest.mark.parametrize(("size", "noise"), [(3, False), (12, False), (2, True), (4, True)])
def test_volume_sieve_equals_the_rule_on_the_whole_array(
    tmp_path, chunk, connectivity, size, noise
):
    rng = np.random.default_rng(size)
    labels = blobs((12, 17, 15), seed=size, scale=2)  # smooth regions, specks and nodata
    labels[rng.random(labels.shape) < 0.05] = rng.integers(0, 3)
    if noise:  # and blocks of noise: equal sizes (ties) everywhere
        block = (slice(2, 10), slice(3, 15), slice(1, 12))
        labels[block] = rng.choice([0, 1, 2, 2, 2], labels[block].shape)
    labels[rng.random(labels.shape) < 0.02] = NODATA
    got, summary = sieved(tmp_path, labels, chunk, size, connectivity, name="v.zarr")
    np.testing.assert_array_equal(got, whole_array_sieve(labels, size, connectivity))
    assert summary["sieve"]["merged"] > 0
    assert (got == NODATA).sum() == (labels == NODATA).sum()


def test_volume_ties_go_to_the_first_offset(tmp_path):
    """A speck between two equal neighbours in the slice before it: up-back (-1, 0, -1)
    ranks before up-front (-1, 0, +1), as GDAL's up-left before up-right."""
    labels = np.full((5, 5, 5), NODATA, np.uint8)
    labels[2, 2, 2] = 1
    labels[0:2, 2, 1] = 0
    labels[0:2, 2, 3] = 2
    for chunk in [(5, 5, 5), (2, 2, 2), (3, 1, 2)]:
        got, _ = sieved(tmp_path, labels, chunk, 2, name=f"{chunk}.zarr")
        assert got[2, 2, 2] == 0
        np.testing.assert_array_equal(got, whole_array_sieve(labels, 2, "full"))
