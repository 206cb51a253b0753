"""keep-largest, top-K and min-size on a chunked store equal the whole-array answer."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from segflow.errors import ConfigError, OutputError, one_line
from segflow.io.zarr_sink import ZarrSink
from segflow.outputs.postprocess import parse_min_size, postprocess
from tests.outputs.label_stores import (
    NODATA,
    blobs,
    raster_geometry,
    volume_geometry,
    write_store,
)


def structure(ndim: int, connectivity: str) -> np.ndarray:
    return ndimage.generate_binary_structure(ndim, ndim if connectivity == "full" else 1)


def reference(labels, *, keep=(), top=1, min_pixels=None, fill=0, connectivity="full", k=3):
    """The whole-array answer: scipy.ndimage.label on each class of the full array."""
    out = labels.copy()
    for value in range(k):
        if value == fill or (value not in keep and min_pixels is None):
            continue
        ids, n = ndimage.label(labels == value, structure(labels.ndim, connectivity))
        sizes = np.bincount(ids.ravel(), minlength=n + 1)[1:]
        drop = np.zeros(n + 1, bool)
        if value in keep:
            order = np.argsort(-sizes, kind="stable")  # ties: first in raster order
            drop[order[top:] + 1] = True
        if min_pixels is not None:
            drop[1:] |= sizes < min_pixels
        out[drop[ids]] = fill
    return out


def read(path) -> np.ndarray:
    return ZarrSink.open_finished(path).read_labels()


@pytest.mark.parametrize("connectivity", ["full", "face"])
@pytest.mark.parametrize(
    ("shape", "chunk"), [((90, 110), (16, 16)), ((22, 26, 30), (8, 8, 8))], ids=["2d", "3d"]
)
@pytest.mark.parametrize(
    "ops",
    [
        {"keep": (1,)},
        {"keep": (1, 2), "top": 3},
        {"min_pixels": 7},
        {"keep": (2,), "top": 2, "min_pixels": 4, "fill": 1},
    ],
    ids=["largest", "top3", "min-size", "combined-fill"],
)
def test_operations_equal_whole_array_answer(tmp_path, shape, chunk, connectivity, ops):
    labels = blobs(shape, seed=len(shape))
    store = write_store(tmp_path / "in.zarr", labels, chunk)
    result = postprocess(
        store,
        tmp_path / "out.zarr",
        keep_largest=list(ops.get("keep", ())) or None,
        keep_top=ops.get("top", 1),
        min_size=ops.get("min_pixels"),
        fill=ops.get("fill", 0),
        connectivity=connectivity,
    )
    expected = reference(labels, connectivity=connectivity, **ops)
    np.testing.assert_array_equal(read(result.path), expected)
    assert (read(result.path) == NODATA).sum() == (labels == NODATA).sum()


def test_result_does_not_depend_on_the_chunking(tmp_path):
    labels = blobs((100, 90), seed=3)
    outputs = []
    for i, chunk in enumerate([(16, 16), (7, 11), (100, 90)]):
        store = write_store(tmp_path / f"{i}.zarr", labels, chunk)
        outputs.append(read(postprocess(store, tmp_path / f"o{i}.zarr", min_size=9).path))
    np.testing.assert_array_equal(outputs[0], outputs[1])
    np.testing.assert_array_equal(outputs[0], outputs[2])


def test_new_store_keeps_geometry_classes_and_records_provenance(tmp_path):
    labels = blobs((50, 60))
    source = write_store(tmp_path / "in.zarr", labels, (16, 16))
    result = postprocess(source, tmp_path / "out.zarr", keep_largest="forest", keep_top=2)
    made = ZarrSink.open_finished(result.path)
    assert made.geometry == source.geometry and made.classes == source.classes
    assert made.layout.chunk_shape == source.layout.chunk_shape
    steps = made.attrs["postprocess"]
    assert steps["source"] == str(source.path) and steps["keep_largest"] == [1]
    assert steps["keep_top"] == 2 and made.attrs["input"] == {"path": "x"}
    row = made.summary["components"][0]
    assert row["name"] == "forest" and row["kept"] == 2
    assert row["components"] == ndimage.label(labels == 1, np.ones((3, 3)))[1]
    assert row["removed"] == row["components"] - 2 and len(row["largest_m2"]) == 2
    assert row["largest_m2"][0] == row["largest"][0] * 900.0


def test_min_size_in_hectares_and_millilitres(tmp_path):
    labels = blobs((60, 60))
    store = write_store(tmp_path / "r.zarr", labels, (16, 16))  # 30 m pixels: 900 m²
    result = postprocess(store, tmp_path / "ha.zarr", min_size="0.5ha")  # 5.56 pixels
    np.testing.assert_array_equal(read(result.path), reference(labels, min_pixels=50 / 9))
    volume = blobs((20, 20, 20))
    vstore = write_store(tmp_path / "v.zarr", volume, (8, 8, 8), geometry=volume_geometry())
    voxel_mm3 = 0.8 * 0.8 * 2.0
    vresult = postprocess(vstore, tmp_path / "ml.zarr", min_size="0.01 mL")
    expected = reference(volume, min_pixels=10.0 / voxel_mm3)
    np.testing.assert_array_equal(read(vresult.path), expected)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"keep_largest": "forrest"}, ConfigError, "did you mean 'forest'"),
        ({"keep_largest": "7"}, ConfigError, "class 7 does not exist"),
        ({"min_size": 0}, ConfigError, "greater than 0"),
        ({"min_size": "0ha"}, ConfigError, "greater than 0"),
        ({"min_size": "ten"}, ConfigError, "a size like 100"),
        ({"min_size": "3mL"}, ConfigError, "does not fit a raster store"),
        ({}, ConfigError, "nothing to do"),
        ({"keep_largest": "forest", "fill": "forest"}, ConfigError, "cannot also be"),
        ({"keep_largest": "forest", "keep_top": 0}, ConfigError, "at least 1"),
        ({"keep_largest": "forest", "connectivity": "diagonal"}, ConfigError, "connectivity"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, kwargs, error, match):
    store = write_store(tmp_path / "in.zarr", blobs((20, 20)), (16, 16))
    with pytest.raises(error, match=match) as caught:
        postprocess(store, tmp_path / "out.zarr", **kwargs)
    assert "\n" not in one_line(caught.value)
    assert not (tmp_path / "out.zarr").exists()


def test_physical_min_size_needs_a_crs(tmp_path):
    geometry = raster_geometry(None, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0))
    store = write_store(tmp_path / "in.zarr", blobs((20, 20)), (16, 16), geometry=geometry)
    with pytest.raises(ConfigError, match="needs a projected CRS"):
        postprocess(store, tmp_path / "out.zarr", min_size="1ha")
    postprocess(store, tmp_path / "out.zarr", min_size="3px")  # pixels always work


def test_store_errors(tmp_path):
    partial = write_store(tmp_path / "p.zarr", blobs((40, 40)), (16, 16), finalize=False)
    with pytest.raises(OutputError, match="not complete"):
        postprocess(partial, tmp_path / "o.zarr", min_size=3)
    done = write_store(tmp_path / "d.zarr", blobs((40, 40)), (16, 16))
    with pytest.raises(OutputError, match="is the input store"):
        postprocess(done, done.path, min_size=3)
    postprocess(done, tmp_path / "o.zarr", min_size=3)
    with pytest.raises(OutputError, match="exists"):
        postprocess(done, tmp_path / "o.zarr", min_size=3)
    postprocess(done, tmp_path / "o.zarr", min_size=4, overwrite=True)


def test_parse_min_size_units():
    assert parse_min_size("100") == parse_min_size(100) == parse_min_size("100 px")
    assert parse_min_size("0.5ha").unit == "ha" and parse_min_size("2mL").unit == "ml"
    assert parse_min_size(None) is None
