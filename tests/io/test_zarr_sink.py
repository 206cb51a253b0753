"""ZarrSink on real zarr stores: geometry round trips, OME layout, concurrency, resume, errors."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import pickle
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
import zarr
from rasterio.crs import CRS
from rasterio.transform import Affine

from segflow.errors import ConfigError, OutputError
from segflow.io.source import RasterGeometry, VolumeGeometry
from segflow.io.zarr_sink import (
    OutputLayout,
    ZarrSink,
    dequantize_probabilities,
    label_dtype_for,
    quantize_probabilities,
    read_geometry,
)
from segflow.models.meta import ClassInfo, default_colors
from tests.io.ome import as_written_before_zyx, valid_image_group, valid_label_group

UTM_TRANSFORM = Affine(300.0379266750948, 0.0, 101985.0, 0.0, -300.041782729805, 2826915.0)
GEO_TRANSFORM = Affine(0.000269494585236, 0.0, -74.0042, 0.0, -0.000269494585236, 40.7549)
PIXEL_TRANSFORM = Affine(2.0, 0.0, 10.0, 0.0, -2.0, 100.0)
LIA = VolumeGeometry(
    affine=(
        (-0.9986295347545738, 0.0523359562429438, 0.0, 127.49999999999997),
        (0.0, 0.0, -1.0000000000000002, 145.1),
        (0.0523359562429438, 0.9986295347545738, 0.0, -109.33333333333333),
        (0.0, 0.0, 0.0, 1.0),
    ),
    sform_code=2,
    qform_code=1,
    orientation=("L", "I", "A"),
    zooms=(1.0, 1.0000000000000002, 1.0),
)
PROVENANCE = {
    "model": {"name": "unet", "sha256": "ab" * 32},
    "input": Path("/data/in.tif"),
    "patch": (256, 256),
}


def classes(n: int) -> list[ClassInfo]:
    return [ClassInfo(name=f"class {i}", color=c) for i, c in enumerate(default_colors(n))]


def raster_geometry(crs: CRS | None, transform: Affine) -> RasterGeometry:
    return RasterGeometry(
        crs_wkt=None if crs is None else crs.to_wkt(),
        transform=(transform.a, transform.b, transform.c, transform.d, transform.e, transform.f),
        georeferenced=True,
    )


def make_sink(
    path: Path,
    geometry: RasterGeometry | VolumeGeometry | None = None,
    *,
    shape: tuple[int, ...] = (37, 53),
    chunk: tuple[int, ...] = (16, 16),
    num_classes: int = 3,
    write_labels: bool = True,
    probabilities: Any = "none",
    fingerprint: str = "fp-1",
    zarr_format: int = 3,
    **flags: bool,
) -> ZarrSink:
    if geometry is None:
        geometry = raster_geometry(CRS.from_epsg(32618), UTM_TRANSFORM) if len(shape) == 2 else LIA
    layout = OutputLayout(shape, chunk, num_classes, write_labels, probabilities, zarr_format)
    return ZarrSink.create(
        path, layout, geometry, classes(num_classes), PROVENANCE, fingerprint, **flags
    )


def expected_labels(shape: tuple[int, ...], num_classes: int, nodata: int) -> np.ndarray:
    """Values encode their own position, so a misplaced or flipped chunk shows."""
    grids = np.indices(shape)
    values = sum((g * (3 + 4 * n)) for n, g in enumerate(grids)) % num_classes
    labels = values.astype(label_dtype_for(num_classes))
    labels[(slice(0, 3),) * len(shape)] = nodata  # a nodata corner
    return labels


def expected_probabilities(shape: tuple[int, ...], num_classes: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    p = rng.random((num_classes, *shape), dtype=np.float32)
    p[0].flat[::7] = 0.0
    p[-1].flat[::11] = 1.0
    p[(slice(None), *(slice(0, 3),) * len(shape))] = np.nan
    return p


def write_chunks(
    sink: ZarrSink, labels: np.ndarray | None, probs: np.ndarray | None, only: Any = None
) -> None:
    for index in np.ndindex(*sink.chunk_grid_shape):
        if only is not None and index not in only:
            continue
        region = sink.chunk_region(index)
        sink.write_chunk(
            index,
            None if labels is None else labels[region],
            None if probs is None else probs[(slice(None), *region)],
        )


def all_chunks(sink: ZarrSink) -> set[tuple[int, ...]]:
    return set(np.ndindex(*sink.chunk_grid_shape))


def stored_objects(root: Path, array: str) -> dict[str, bytes]:
    base = root / array / "c"
    return {str(p.relative_to(base)): p.read_bytes() for p in base.rglob("*") if p.is_file()}


def node_json(store: Path, node: str = "") -> dict[str, Any]:
    """A node's zarr.json as written, parsed as strict JSON (a bare NaN would fail here)."""

    def refuse(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    doc: dict[str, Any] = json.loads(
        (store / node / "zarr.json").read_text(), parse_constant=refuse
    )
    return doc


# --- rasters: geometry through xarray + rioxarray ----------------------------------------------


@pytest.mark.parametrize(
    ("crs", "transform"),
    [
        (CRS.from_epsg(32618), UTM_TRANSFORM),
        (CRS.from_epsg(4326), GEO_TRANSFORM),
        (None, PIXEL_TRANSFORM),
    ],
    ids=["epsg32618", "epsg4326", "no-crs"],
)
@pytest.mark.parametrize("zarr_format", [3, 2], ids=["v3", "v2"])
def test_raster_geometry_survives_plain_open_zarr(
    tmp_path: Path, crs: CRS | None, transform: Affine, zarr_format: int
) -> None:
    geometry = raster_geometry(crs, transform)
    sink = make_sink(tmp_path / "out.zarr", geometry, zarr_format=zarr_format)
    labels = expected_labels((37, 53), 3, sink.label_nodata)
    write_chunks(sink, labels, None)
    sink.finalize({})

    ds = xr.open_zarr(tmp_path / "out.zarr")
    assert "spatial_ref" in ds.coords
    assert ds.labels.dims == ("y", "x")
    assert ds.labels.rio.crs == crs
    assert ds.labels.rio.transform() == transform
    assert ds.rio.transform() == transform
    # nodata is the CF _FillValue: xarray masks it, rioxarray knows the stored value
    assert ds.labels.rio.encoded_nodata == 255
    np.testing.assert_array_equal(ds.labels.values, np.where(labels == 255, np.nan, labels))
    raw = xr.open_zarr(tmp_path / "out.zarr", mask_and_scale=False)
    assert raw.labels.dtype == np.uint8 and raw.labels.rio.nodata == 255
    np.testing.assert_array_equal(raw.labels.values, labels)
    assert read_geometry(ZarrSink.open(tmp_path / "out.zarr")) == geometry


def test_rotated_transform_survives(tmp_path: Path) -> None:
    transform = Affine(0.5, 0.1, 1000.0, 0.2, -0.5, 2000.0)
    geometry = raster_geometry(CRS.from_epsg(32618), transform)
    make_sink(tmp_path / "out.zarr", geometry)
    ds = xr.open_zarr(tmp_path / "out.zarr")
    assert ds.labels.rio.transform() == transform
    assert read_geometry(ZarrSink.open(tmp_path / "out.zarr")) == geometry


@pytest.mark.shared_data
def test_real_geotiff_geometry_survives(tmp_path: Path, shared_file: Callable[[str], Path]) -> None:
    import rasterio

    with rasterio.open(shared_file("geo/rasterio_RGB.byte.tif")) as src:
        crs, transform, shape, bounds = src.crs, src.transform, src.shape, src.bounds
    geometry = raster_geometry(crs, transform)
    make_sink(tmp_path / "out.zarr", geometry, shape=shape, chunk=(256, 256))
    ds = xr.open_zarr(tmp_path / "out.zarr")
    assert ds.labels.shape == shape
    assert ds.labels.rio.crs == crs
    assert ds.labels.rio.transform() == transform
    np.testing.assert_allclose(ds.labels.rio.bounds(), tuple(bounds))


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["t1_crop.nii.gz", "example_mr_sm.nii.gz", "anatomical.nii"])
def test_real_nifti_geometry_survives(
    tmp_path: Path, shared_file: Callable[[str], Path], name: str
) -> None:
    import nibabel as nib

    img: Any = nib.load(shared_file(f"med/{name}"))
    header = img.header
    zi, zj, zk = (float(z) for z in header.get_zooms()[:3])
    geometry = VolumeGeometry(
        affine=tuple(tuple(float(v) for v in row) for row in img.affine),
        sform_code=int(header["sform_code"]),
        qform_code=int(header["qform_code"]),
        orientation=tuple(nib.aff2axcodes(img.affine)),
        zooms=(zi, zj, zk),
    )
    sink = make_sink(tmp_path / "out.zarr", geometry, shape=img.shape[:3], chunk=(64, 64, 64))
    reopened = ZarrSink.open(tmp_path / "out.zarr")
    assert read_geometry(reopened) == geometry
    recovered = read_geometry(sink)
    assert isinstance(recovered, VolumeGeometry)
    np.testing.assert_array_equal(np.array(recovered.affine), img.affine)
    ome = node_json(tmp_path / "out.zarr")["attributes"]["ome"]
    translation = ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][1][
        "translation"
    ]
    assert translation == [float(v) for v in img.affine[:3, 3]]


# --- volumes: OME-Zarr 0.5 ---------------------------------------------------------------------


def test_volume_store_is_an_ome_label_image(tmp_path: Path) -> None:
    shape = (10, 11, 12)
    sink = make_sink(
        tmp_path / "scan.zarr", LIA, shape=shape, chunk=(4, 4, 4), probabilities="uint8"
    )
    assert sink.kind == "volume"
    assert (sink.labels_path, sink.probabilities_path) == ("0", "probabilities/0")
    labels = expected_labels(shape, 3, sink.label_nodata)
    probs = expected_probabilities(shape, 3)
    write_chunks(sink, labels, probs)
    sink.finalize({"voxels": 1320})

    store = tmp_path / "scan.zarr"
    attrs = node_json(store)["attributes"]
    ome = attrs["ome"]
    valid_label_group(store)  # the attributes and the arrays they describe
    assert ome["version"] == "0.5"
    (ms,) = ome["multiscales"]
    assert ms["name"] == "scan"
    assert [(a["name"], a["type"], a["unit"]) for a in ms["axes"]] == [
        ("z", "space", "millimeter"),  # the file's voxel axes i, j, k, as OME tools name them
        ("y", "space", "millimeter"),
        ("x", "space", "millimeter"),
    ]
    (ds,) = ms["datasets"]
    assert ds["path"] == "0"
    scale, translation = ds["coordinateTransformations"]
    assert scale == {"type": "scale", "scale": list(LIA.zooms)}
    assert translation == {"type": "translation", "translation": [row[3] for row in LIA.affine[:3]]}
    label = ome["image-label"]
    assert label["version"] == "0.5"
    assert [c["label-value"] for c in label["colors"]] == [0, 1, 2, 255]
    assert label["colors"][1]["rgba"] == [*default_colors(3)[1], 255]
    assert [p["name"] for p in label["properties"][:3]] == ["class 0", "class 1", "class 2"]

    assert node_json(store, "0")["dimension_names"] == ["z", "y", "x"]  # as the OME axes
    np.testing.assert_array_equal(sink.read_labels(), labels)

    prob_ome = node_json(store, "probabilities")["attributes"]["ome"]
    valid_image_group(store, "probabilities")
    assert [a["name"] for a in prob_ome["multiscales"][0]["axes"]] == ["c", "z", "y", "x"]
    assert node_json(store, "probabilities/0")["dimension_names"] == ["c", "z", "y", "x"]
    stored = sink.read_probabilities(decode=False)
    np.testing.assert_array_equal(stored, quantize_probabilities(probs, "uint8"))

    info = attrs["segflow"]
    assert info["geometry"]["affine"] == [list(row) for row in LIA.affine]
    assert (info["geometry"]["sform_code"], info["geometry"]["qform_code"]) == (2, 1)
    assert info["geometry"]["orientation"] == ["L", "I", "A"]
    assert info["complete"] is True and info["summary"] == {"voxels": 1320}
    assert read_geometry(sink) == LIA


def test_volume_dims_in_xarray_are_the_ome_axis_names(tmp_path: Path) -> None:
    shape = (6, 7, 8)
    sink = make_sink(
        tmp_path / "scan.zarr", LIA, shape=shape, chunk=(4, 4, 4), probabilities="uint8"
    )
    labels = expected_labels(shape, 3, sink.label_nodata)
    write_chunks(sink, labels, expected_probabilities(shape, 3))
    sink.finalize({})
    ds = xr.open_zarr(tmp_path / "scan.zarr", mask_and_scale=False)
    assert ds["0"].dims == ("z", "y", "x")  # axis 0 is still the file's voxel axis i
    np.testing.assert_array_equal(ds["0"].values, labels)
    probs = xr.open_zarr(tmp_path / "scan.zarr", group="probabilities")
    assert probs["0"].dims == ("c", "z", "y", "x")


def test_stores_written_with_axes_i_j_k_still_open_and_resume(tmp_path: Path) -> None:
    shape, path = (9, 10, 11), tmp_path / "old.zarr"
    sink = make_sink(path, LIA, shape=shape, chunk=(4, 4, 4), probabilities="uint8")
    labels = expected_labels(shape, 3, sink.label_nodata)
    probs = expected_probabilities(shape, 3)
    first = set(list(np.ndindex(*sink.chunk_grid_shape))[:5])
    write_chunks(sink, labels, probs, only=first)
    as_written_before_zyx(path)
    assert node_json(path, "0")["dimension_names"] == ["i", "j", "k"]
    valid_label_group(path)  # the old names are valid OME too

    resumed = make_sink(path, LIA, shape=shape, chunk=(4, 4, 4), probabilities="uint8", resume=True)
    assert resumed.done_chunks() == first
    write_chunks(resumed, labels, probs, only=all_chunks(resumed) - first)
    resumed.finalize({})
    reopened = ZarrSink.open(path)
    assert read_geometry(reopened) == LIA
    np.testing.assert_array_equal(reopened.read_labels(), labels)
    stored = reopened.read_probabilities(decode=False)
    np.testing.assert_array_equal(stored, quantize_probabilities(probs, "uint8"))
    assert xr.open_zarr(path, mask_and_scale=False)["0"].dims == ("i", "j", "k")


def test_every_array_is_zarr_v3_zstd_with_dimension_names(tmp_path: Path) -> None:
    make_sink(tmp_path / "r.zarr", probabilities="float16")
    make_sink(tmp_path / "v.zarr", LIA, shape=(5, 6, 7), chunk=(4, 4, 4), probabilities="float16")
    for store in ("r.zarr", "v.zarr"):
        for meta_file in (tmp_path / store).rglob("zarr.json"):
            doc = node_json(meta_file.parent)
            assert doc["zarr_format"] == 3
            if doc["node_type"] != "array":
                continue
            # zarr leaves "dimension_names" out of 0-d arrays (spatial_ref), as the spec allows
            assert len(doc.get("dimension_names", [])) == len(doc["shape"]), meta_file
            codecs = [c["name"] for c in doc["codecs"]]
            if doc["shape"] and "_segflow" not in str(meta_file):
                assert "zstd" in codecs, meta_file


# --- dtypes and probabilities -------------------------------------------------------------------


def test_uint16_labels_for_300_classes(tmp_path: Path) -> None:
    sink = make_sink(tmp_path / "out.zarr", num_classes=300, chunk=(20, 20))
    assert (sink.label_dtype, sink.label_nodata) == (np.dtype(np.uint16), 65535)
    labels = expected_labels((37, 53), 300, 65535)
    assert labels.max() == 65535 and (labels[labels != 65535] >= 255).any()
    write_chunks(sink, labels, None)
    ds = xr.open_zarr(tmp_path / "out.zarr", mask_and_scale=False)
    assert ds.labels.dtype == np.uint16
    assert ds.labels.rio.nodata == 65535
    np.testing.assert_array_equal(ds.labels.values, labels)
    assert label_dtype_for(255) == np.uint8 and label_dtype_for(256) == np.uint16


def test_quantize_uint8() -> None:
    p = np.array([0.0, 1.0, 0.5, 1 / 254, 0.2, 1.5, -0.1, np.nan], dtype=np.float32)
    q = quantize_probabilities(p, "uint8")
    assert q.dtype == np.uint8
    assert q.tolist() == [0, 254, 127, 1, 51, 254, 0, 255]
    back = dequantize_probabilities(q, "uint8")
    assert back.dtype == np.float32 and np.isnan(back[-1])
    assert np.nanmax(np.abs(back[:5] - p[:5])) <= 0.5 / 254 + 1e-7


def test_quantize_float16_keeps_nan() -> None:
    p = np.array([0.0, 1.0, 0.123456, np.nan], dtype=np.float32)
    q = quantize_probabilities(p, "float16")
    assert q.dtype == np.float16 and np.isnan(q[-1])
    np.testing.assert_allclose(dequantize_probabilities(q, "float16")[:3], p[:3], atol=1e-3)


def test_uint8_probabilities_in_the_store(tmp_path: Path) -> None:
    sink = make_sink(tmp_path / "out.zarr", probabilities="uint8")
    probs = expected_probabilities((37, 53), 3)
    labels = expected_labels((37, 53), 3, 255)
    write_chunks(sink, labels, probs)
    raw = sink.read_probabilities(decode=False)
    assert raw.dtype == np.uint8
    expected = np.where(np.isnan(probs), 255, np.rint(np.nan_to_num(probs) * 254)).astype(np.uint8)
    np.testing.assert_array_equal(raw, expected)
    assert (raw[:, :3, :3] == 255).all() and (raw == 254).any() and (raw == 0).any()
    # CF packing: xarray decodes to probabilities with NaN where nodata
    decoded = xr.open_zarr(tmp_path / "out.zarr").probabilities
    assert decoded.dims == ("class", "y", "x")
    values = decoded.values
    assert np.isnan(values[:, :3, :3]).all()
    np.testing.assert_allclose(values, probs, atol=0.5 / 254 + 1e-6, equal_nan=True)
    assert decoded.rio.crs == CRS.from_epsg(32618)


def test_float16_probabilities_in_the_store(tmp_path: Path) -> None:
    sink = make_sink(tmp_path / "out.zarr", write_labels=False, probabilities="float16")
    assert sink.labels_path is None
    probs = expected_probabilities((37, 53), 3)
    write_chunks(sink, None, probs)
    raw = sink.read_probabilities(decode=False)
    assert raw.dtype == np.float16
    np.testing.assert_array_equal(np.isnan(raw), np.isnan(probs))
    np.testing.assert_allclose(raw.astype(np.float32), probs, atol=1e-3, equal_nan=True)
    ds = xr.open_zarr(tmp_path / "out.zarr")
    assert "labels" not in ds and ds.probabilities.dtype == np.float16
    with pytest.raises(OutputError, match="no labels"):
        sink.read_labels()


def test_large_class_counts_split_probability_chunks(tmp_path: Path) -> None:
    sink = make_sink(
        tmp_path / "out.zarr",
        shape=(600, 600),
        chunk=(512, 512),
        num_classes=300,
        probabilities="float16",
    )
    class_chunk = sink.probabilities_array().chunks[0]
    assert 1 <= class_chunk < 300
    assert class_chunk * 512 * 512 * 2 <= 8 * 2**20


# --- chunks, completion and concurrency ----------------------------------------------------------


def test_chunk_regions_are_clipped_at_the_edge(tmp_path: Path) -> None:
    sink = make_sink(tmp_path / "out.zarr")
    assert sink.chunk_grid_shape == (3, 4)
    assert sink.chunk_region((0, 0)) == (slice(0, 16), slice(0, 16))
    assert sink.chunk_region((2, 3)) == (slice(32, 37), slice(48, 53))
    with pytest.raises(IndexError):
        sink.chunk_region((3, 0))
    with pytest.raises(IndexError):
        sink.chunk_region((0,))


def test_four_threads_write_concurrently(tmp_path: Path) -> None:
    shape = (61, 45)
    sink = make_sink(
        tmp_path / "out.zarr", shape=shape, chunk=(8, 8), num_classes=5, probabilities="uint8"
    )
    labels = expected_labels(shape, 5, 255)
    probs = expected_probabilities(shape, 5)
    todo: queue.Queue[tuple[int, ...]] = queue.Queue()
    for index in np.ndindex(*sink.chunk_grid_shape):
        todo.put(index)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            while True:
                try:
                    index = todo.get_nowait()
                except queue.Empty:
                    return
                region = sink.chunk_region(index)
                sink.write_chunk(index, labels[region], probs[(slice(None), *region)])
        except BaseException as exc:  # reported to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sink.done_chunks() == all_chunks(sink)
    reopened = ZarrSink.open(tmp_path / "out.zarr")
    np.testing.assert_array_equal(reopened.read_labels(), labels)
    np.testing.assert_array_equal(
        reopened.read_probabilities(decode=False), quantize_probabilities(probs, "uint8")
    )
    decoded = reopened.read_probabilities()
    assert decoded.dtype == np.float32
    np.testing.assert_allclose(decoded, probs, atol=0.5 / 254 + 1e-6, equal_nan=True)


def test_done_is_recorded_even_when_the_chunk_is_all_nodata(tmp_path: Path) -> None:
    sink = make_sink(tmp_path / "out.zarr")
    region = sink.chunk_region((1, 1))
    shape = tuple(s.stop - s.start for s in region)
    sink.write_chunk((1, 1), np.full(shape, 255, np.uint8), None)
    # Zarr skips chunks equal to the fill value, so the data object does not exist ...
    assert stored_objects(tmp_path / "out.zarr", "labels") == {}
    # ... and completion is still known.
    assert sink.done_chunks() == {(1, 1)}
    assert (sink.read_labels(region) == 255).all()


def test_completion_and_finalize(tmp_path: Path) -> None:
    sink = make_sink(tmp_path / "out.zarr")
    assert not sink.is_complete
    assert xr.open_zarr(tmp_path / "out.zarr").attrs["segflow"]["complete"] is False
    labels = expected_labels((37, 53), 3, 255)
    write_chunks(sink, labels, None, only={(0, 0), (2, 3)})
    with pytest.raises(OutputError, match="10 chunk"):
        sink.finalize({})
    assert not ZarrSink.open(tmp_path / "out.zarr").is_complete
    write_chunks(sink, labels, None)
    sink.finalize({"class_counts": np.array([1, 2, 3]), "seconds": 1.5})
    assert sink.is_complete
    reopened = ZarrSink.open(tmp_path / "out.zarr")
    assert reopened.is_complete
    assert reopened.summary == {"class_counts": [1, 2, 3], "seconds": 1.5}
    assert reopened.attrs == {
        "model": {"name": "unet", "sha256": "ab" * 32},
        "input": "/data/in.tif",
        "patch": [256, 256],
    }
    assert reopened.fingerprint == "fp-1"
    assert reopened.classes == tuple(classes(3))
    assert reopened.layout == sink.layout
    ds = xr.open_zarr(tmp_path / "out.zarr")  # consolidated metadata was refreshed
    assert ds.attrs["segflow"]["complete"] is True


def test_write_chunk_checks_its_inputs(tmp_path: Path) -> None:
    sink = make_sink(tmp_path / "out.zarr", probabilities="uint8")
    good = np.zeros((16, 16), np.uint8)
    probs = np.zeros((3, 16, 16), np.float32)
    with pytest.raises(ValueError, match="shape"):
        sink.write_chunk((0, 0), np.zeros((16, 15), np.uint8), probs)
    with pytest.raises(ValueError, match="uint8"):
        sink.write_chunk((0, 0), good.astype(np.int64), probs)
    with pytest.raises(ValueError, match="needs them"):
        sink.write_chunk((0, 0), None, probs)
    with pytest.raises(ValueError, match="probabilities"):
        sink.write_chunk((0, 0), good, None)
    with pytest.raises(ValueError, match="probabilities"):
        sink.write_chunk((0, 0), good, probs[:2])
    assert sink.done_chunks() == set()


def test_layout_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"unknown probabilities .*did you mean 'float16'"):
        OutputLayout((4, 4), (2, 2), 2, probabilities="float32")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="nothing to write"):
        OutputLayout((4, 4), (2, 2), 2, write_labels=False)
    with pytest.raises(ConfigError, match="chunk shape"):
        OutputLayout((4, 4), (2, 2, 2), 2)
    with pytest.raises(ConfigError, match="num_classes"):
        OutputLayout((4, 4), (2, 2), 0)


def test_create_checks_geometry_and_classes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="3 spatial axes"):
        make_sink(tmp_path / "a.zarr", LIA, shape=(4, 4), chunk=(2, 2))
    layout = OutputLayout((4, 4), (2, 2), 3)
    with pytest.raises(ConfigError, match="2 class names"):
        ZarrSink.create(
            tmp_path / "b.zarr",
            layout,
            raster_geometry(None, PIXEL_TRANSFORM),
            classes(2),
            {},
            "fp",
        )
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "b.zarr").exists()


# --- existing stores: refuse, resume, overwrite ---------------------------------------------------


def test_existing_store_needs_resume_or_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "out.zarr"
    make_sink(path)
    with pytest.raises(
        OutputError, match="exists; pass --resume to continue it or --overwrite to replace it"
    ):
        make_sink(path)
    with pytest.raises(ConfigError, match="exclude"):
        make_sink(path, resume=True, overwrite=True)


def test_resume_keeps_done_chunks_and_gives_the_same_bytes(tmp_path: Path) -> None:
    labels = expected_labels((37, 53), 3, 255)
    probs = expected_probabilities((37, 53), 3)
    whole = make_sink(tmp_path / "whole.zarr", probabilities="uint8")
    write_chunks(whole, labels, probs)
    whole.finalize({})

    first = make_sink(tmp_path / "resumed.zarr", probabilities="uint8")
    early = {(0, 0), (1, 2), (2, 3)}
    write_chunks(first, labels, probs, only=early)
    before = stored_objects(tmp_path / "resumed.zarr", "labels")

    resumed = make_sink(tmp_path / "resumed.zarr", probabilities="uint8", resume=True)
    assert resumed.done_chunks() == early
    assert stored_objects(tmp_path / "resumed.zarr", "labels") == before  # nothing rewritten
    write_chunks(resumed, labels, probs, only=all_chunks(resumed) - resumed.done_chunks())
    resumed.finalize({})
    for array in ("labels", "probabilities"):
        assert stored_objects(tmp_path / "resumed.zarr", array) == stored_objects(
            tmp_path / "whole.zarr", array
        )

    # resuming a store that does not exist yet simply creates it
    fresh = make_sink(tmp_path / "new.zarr", resume=True)
    assert fresh.done_chunks() == set()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"fingerprint": "fp-2"}, "fingerprint differs"),
        ({"chunk": (8, 8)}, "chunk shape differs"),
        ({"shape": (37, 54)}, "spatial shape differs"),
        ({"num_classes": 4}, "num classes differs"),
        ({"probabilities": "uint8"}, "probabilities differs"),
        ({"geometry": raster_geometry(CRS.from_epsg(4326), UTM_TRANSFORM)}, "geometry differs"),
        ({"geometry": LIA, "shape": (37, 53, 2), "chunk": (16, 16, 2)}, "kind differs"),
    ],
)
def test_resume_refuses_a_different_store(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    path = tmp_path / "out.zarr"
    make_sink(path)
    write_chunks(ZarrSink.open(path), expected_labels((37, 53), 3, 255), None, only={(0, 0)})
    with pytest.raises(OutputError, match=message):
        make_sink(path, resume=True, **change)
    assert ZarrSink.open(path).done_chunks() == {(0, 0)}  # untouched


def test_resume_refuses_other_class_names(tmp_path: Path) -> None:
    path = tmp_path / "out.zarr"
    sink = make_sink(path)
    other = [ClassInfo(name="a"), ClassInfo(name="b"), ClassInfo(name="c")]
    with pytest.raises(OutputError, match="classes differs"):
        ZarrSink.create(path, sink.layout, sink.geometry, other, {}, "fp-1", resume=True)


def test_resume_refuses_what_is_not_a_segflow_store(tmp_path: Path) -> None:
    plain = tmp_path / "plain.zarr"
    zarr.create_group(plain, zarr_format=3)
    with pytest.raises(OutputError, match="not a segflow output"):
        make_sink(plain, resume=True)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="not a zarr store"):
        make_sink(folder, resume=True)
    with pytest.raises(OutputError, match="missing"):
        ZarrSink.open(tmp_path / "nothing.zarr")


def test_resume_refuses_a_store_missing_an_array(tmp_path: Path) -> None:
    path = tmp_path / "out.zarr"
    make_sink(path)
    for item in sorted((path / "labels").rglob("*"), reverse=True):
        item.unlink() if item.is_file() else item.rmdir()
    (path / "labels").rmdir()
    with pytest.raises(OutputError, match="labels is missing"):
        make_sink(path, resume=True)


def test_overwrite_replaces_a_store_but_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "out.zarr"
    old = make_sink(path)
    write_chunks(old, expected_labels((37, 53), 3, 255), None)
    new = make_sink(path, overwrite=True, fingerprint="fp-2")
    assert new.done_chunks() == set()
    assert ZarrSink.open(path).fingerprint == "fp-2"
    assert stored_objects(path, "labels") == {}

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="not a zarr store; refusing"):
        make_sink(folder, overwrite=True)
    assert (folder / "notes.txt").read_text() == "keep me"


# --- output paths that cannot be written --------------------------------------------------------


def test_path_under_a_file_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        make_sink(blocker / "sub" / "out.zarr")
    assert blocker.read_text() == "x"
    with pytest.raises(OutputError, match="exists"):
        make_sink(blocker)


def test_read_only_folder_is_refused_before_writing(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user (root) who can write a chmod 500 folder")
        with pytest.raises(OutputError, match="not writable"):
            make_sink(locked / "out.zarr")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_parent_folders_are_created(tmp_path: Path) -> None:
    sink = make_sink(tmp_path / "a" / "b" / "out.zarr")
    assert sink.path.is_dir() and ZarrSink.open(sink.path).kind == "raster"


# --- pickling and worker processes --------------------------------------------------------------


def test_sink_pickles_without_open_arrays(tmp_path: Path) -> None:
    sink = make_sink(tmp_path / "out.zarr")
    labels = expected_labels((37, 53), 3, 255)
    write_chunks(sink, labels, None, only={(0, 0)})  # opens arrays in this process
    state = sink.__getstate__()
    assert set(state) == {"path", "info"}
    copy = pickle.loads(pickle.dumps(sink))
    assert copy.done_chunks() == {(0, 0)}
    assert (copy.layout, copy.label_dtype, copy.chunk_grid_shape) == (
        sink.layout,
        sink.label_dtype,
        sink.chunk_grid_shape,
    )
    write_chunks(copy, labels, None, only={(1, 1)})
    assert sink.done_chunks() == {(0, 0), (1, 1)}


def _chunk_args(sink: ZarrSink, labels: np.ndarray) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    for index in np.ndindex(*sink.chunk_grid_shape):
        yield index, labels[sink.chunk_region(index)]


@pytest.mark.timeout(120)
def test_worker_processes_write_through_pickled_sinks(tmp_path: Path) -> None:
    shape = (40, 40)
    sink = make_sink(tmp_path / "out.zarr", shape=shape, chunk=(10, 10))
    labels = expected_labels(shape, 3, 255)
    context = multiprocessing.get_context("spawn")  # what Dask's nanny uses; nothing inherited
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        futures = [
            pool.submit(sink.write_chunk, index, block, None)
            for index, block in _chunk_args(sink, labels)
        ]
        for future in futures:
            future.result()
    assert sink.done_chunks() == all_chunks(sink)
    np.testing.assert_array_equal(ZarrSink.open(sink.path).read_labels(), labels)
    assert math.prod(sink.chunk_grid_shape) == 16


# --- uncertainty ------------------------------------------------------------------------------


def uncertainty_sink(path: Path, *, uncertainty: bool = True, **kwargs: Any) -> ZarrSink:
    shape = kwargs.pop("shape", (37, 53))
    chunk = kwargs.pop("chunk", (16,) * len(shape))
    geometry = kwargs.pop("geometry", None)
    if geometry is None:
        geometry = raster_geometry(CRS.from_epsg(32618), UTM_TRANSFORM) if len(shape) == 2 else LIA
    layout = OutputLayout(shape, chunk, 3, uncertainty=uncertainty, **kwargs)
    return ZarrSink.create(path, layout, geometry, classes(3), PROVENANCE, "fp-1")


def write_uncertain_chunks(sink: ZarrSink, values: np.ndarray) -> None:
    labels = np.zeros(values.shape, np.uint8)
    for index in np.ndindex(*sink.chunk_grid_shape):
        region = sink.chunk_region(index)
        sink.write_chunk(index, labels[region], None, values[region])


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_uncertainty_is_a_cf_packed_raster_array(tmp_path: Path, zarr_format: int) -> None:
    path = tmp_path / "u.zarr"
    sink = uncertainty_sink(path, zarr_format=zarr_format)
    values = (np.arange(37 * 53).reshape(37, 53) % 256).astype(np.uint8)  # 255: nodata
    write_uncertain_chunks(sink, values)
    np.testing.assert_array_equal(ZarrSink.open(path).read_uncertainty(), values)
    info = zarr.open_group(path, mode="r").attrs["segflow"]
    assert info["layout"]["uncertainty"] is True and info["arrays"]["uncertainty"] == "uncertainty"
    assert info["uncertainty"]["scale"] == 1 / 254 and "ln(K)" in info["uncertainty"]["formula"]
    decoded = xr.open_zarr(path)["uncertainty"]
    assert decoded.attrs["long_name"] == "normalized entropy of the class probabilities"
    assert decoded.rio.crs == CRS.from_epsg(32618)
    expected = np.where(values == 255, np.nan, values / 254.0)
    np.testing.assert_allclose(decoded.values, expected)
    if zarr_format == 2:  # GDAL (and so QGIS) reads v2 stores
        import rasterio

        with rasterio.open(f'ZARR:"{path}":/uncertainty') as gdal:
            assert (gdal.crs, gdal.nodata, gdal.scales) == (CRS.from_epsg(32618), 255, (1 / 254,))
            np.testing.assert_array_equal(gdal.read(1), values)


def test_stores_without_uncertainty_record_nothing_of_it(tmp_path: Path) -> None:
    make_sink(tmp_path / "plain.zarr")
    info = zarr.open_group(tmp_path / "plain.zarr", mode="r").attrs["segflow"]
    assert "uncertainty" not in info and "uncertainty" not in info["layout"]
    assert "uncertainty" not in info["arrays"]
    assert ZarrSink.open(tmp_path / "plain.zarr").uncertainty_path is None


def test_a_volume_keeps_uncertainty_as_an_ome_image(tmp_path: Path) -> None:
    path = tmp_path / "v.zarr"
    sink = uncertainty_sink(path, shape=(20, 18, 9))
    values = np.full((20, 18, 9), 17, np.uint8)
    write_uncertain_chunks(sink, values)
    assert sink.uncertainty_path == "uncertainty/0"
    np.testing.assert_array_equal(ZarrSink.open(path).read_uncertainty(), values)
    valid_image_group(path / "uncertainty")


def test_write_chunk_needs_uncertainty_exactly_when_recorded(tmp_path: Path) -> None:
    sink = uncertainty_sink(tmp_path / "u.zarr")
    labels = np.zeros((16, 16), np.uint8)
    with pytest.raises(ValueError, match=r"uncertainty for chunk \(0, 0\) must be uint8"):
        sink.write_chunk((0, 0), labels, None)
    with pytest.raises(ValueError, match="must be uint8"):
        sink.write_chunk((0, 0), labels, None, np.zeros((16, 16), np.float32))
    plain = make_sink(tmp_path / "plain.zarr")
    with pytest.raises(ValueError, match="without uncertainty"):
        plain.write_chunk((0, 0), labels, None, np.zeros((16, 16), np.uint8))
    assert sink.done_chunks() == set() and plain.done_chunks() == set()


@pytest.mark.parametrize("before", [True, False])
def test_resume_refuses_another_uncertainty_choice(tmp_path: Path, before: bool) -> None:
    path = tmp_path / "u.zarr"
    uncertainty_sink(path, uncertainty=before)
    layout = OutputLayout((37, 53), (16, 16), 3, uncertainty=not before)
    geometry = raster_geometry(CRS.from_epsg(32618), UTM_TRANSFORM)
    with pytest.raises(OutputError, match="uncertainty differs"):
        ZarrSink.create(path, layout, geometry, classes(3), PROVENANCE, "fp-1", resume=True)
    same = OutputLayout((37, 53), (16, 16), 3, uncertainty=before)
    ZarrSink.create(path, same, geometry, classes(3), PROVENANCE, "fp-1", resume=True)


def test_uncertainty_alone_is_something_to_write() -> None:
    layout = OutputLayout((4, 4), (2, 2), 2, write_labels=False, uncertainty=True)
    assert layout.to_attrs()["uncertainty"] is True
    assert "uncertainty" not in OutputLayout((4, 4), (2, 2), 2).to_attrs()
