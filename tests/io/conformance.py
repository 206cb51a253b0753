"""What every reader must do, as a test class to subclass, plus test-image writers.

A reader's tests subclass ``SourceConformance`` and implement ``make_source``
(write a file into tmp_path, open it) and ``reference`` (the full array read
straight with rasterio / nibabel). Test images encode their own coordinates
in their values, so an offset, transpose or flip shows as a wrong value.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import pickle
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dask
import nibabel as nib
import numpy as np
import numpy.typing as npt
import pytest
import rasterio
from dask.base import tokenize
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine

from segflow.io.lazy import as_dask, valid_as_dask
from segflow.io.source import RasterGeometry, ReadResult, Source, VolumeGeometry

# -- test images ----------------------------------------------------------------


def load_image(path: Path) -> Any:
    """nibabel.load, typed loosely (its stubs return the FileBasedImage base)."""
    return nib.load(path)


def coord_image(channels: int, shape: Sequence[int], dtype: str | np.dtype) -> npt.NDArray[Any]:
    """``(C, *shape)``: value = flat spatial index + c * size (e.g. y*W + x + c*H*W).

    Integer types too small to hold that wrap modulo a prime (uint8), or are
    shifted to include negatives (int16); floats get +0.25 so they are not
    integers. Every test image stays small enough to be unique in its type.
    """
    dt = np.dtype(dtype)
    size = math.prod(shape)
    flat = np.arange(size, dtype=np.int64).reshape(tuple(shape))
    values = np.stack([flat + c * size for c in range(channels)])
    if dt == np.uint8:
        values = values % 251
    elif dt.kind == "i":
        values = values - min(values.max() // 2, np.iinfo(dt).max // 2)
    assert dt.kind == "f" or values.max() <= np.iinfo(dt).max
    out = values.astype(dt)
    return out + 0.25 if dt.kind == "f" else out


UTM18 = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_500_000.0)  # 10 m pixels, north up


def write_geotiff(
    path: Path,
    data: npt.NDArray[Any],
    *,
    crs: str | None = "EPSG:32618",
    transform: Affine | None = UTM18,
    nodata: float | None = None,
    tiled: bool = True,
    block: tuple[int, int] = (32, 32),
    interleave: str = "pixel",
    compress: str | None = "deflate",
    descriptions: Sequence[str] | None = None,
    mask: npt.NDArray[Any] | None = None,
) -> Path:
    """Write ``(C, H, W)`` as a GeoTIFF; crs=None and transform=None give a plain TIFF."""
    count, height, width = data.shape
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": data.dtype,
        "interleave": interleave,
    }
    if tiled:
        profile.update(tiled=True, blockysize=block[0], blockxsize=block[1])
    else:
        profile.update(blockysize=block[0])
    if compress:
        profile["compress"] = compress
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    if nodata is not None:
        profile["nodata"] = nodata
    with (
        warnings.catch_warnings(),
        rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True),
    ):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # wanted, for plain TIFFs
        _write(path, data, profile, descriptions, mask)
    return path


def _write(
    path: Path,
    data: npt.NDArray[Any],
    profile: dict[str, Any],
    descriptions: Sequence[str] | None,
    mask: npt.NDArray[Any] | None,
) -> None:
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if descriptions:
            for i, d in enumerate(descriptions, start=1):
                dst.set_band_description(i, d)
        if mask is not None:
            dst.write_mask(mask.astype(np.uint8) * 255)


def write_nifti(
    path: Path,
    data: npt.NDArray[Any],
    affine: npt.ArrayLike,
    *,
    sform_code: int = 2,
    qform_code: int = 0,
    qform: npt.ArrayLike | None = None,
    big_endian: bool = False,
    on_disk: str | np.dtype | None = None,
) -> Path:
    """Write ``(i, j, k[, t])`` as NIfTI-1 (.nii or .nii.gz from the name).

    ``qform`` defaults to ``affine``; ``on_disk`` stores float data as an
    integer type, which makes nibabel write scl_slope / scl_inter.
    """
    header = nib.Nifti1Header(endianness=">" if big_endian else "<")
    header.set_data_dtype(np.dtype(on_disk) if on_disk is not None else data.dtype)
    img = nib.Nifti1Image(data, None, header=header)
    img.set_sform(np.asarray(affine), code=sform_code)
    img.set_qform(np.asarray(affine if qform is None else qform), code=qform_code)
    nib.save(img, path)
    assert load_image(path).get_data_dtype() == header.get_data_dtype()
    return path


# voxel-to-world affines in the orientations the engine must keep (DESIGN.md property 4)


def ras(
    zooms: tuple[float, float, float] = (2.0, 3.0, 4.0),
) -> npt.NDArray[np.float64]:
    aff = np.diag([*zooms, 1.0])
    aff[:3, 3] = (-20.5, 10.25, 3.0)
    return aff


def lps() -> npt.NDArray[np.float64]:
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras()


def lia() -> npt.NDArray[np.float64]:
    """i -> Left, j -> Inferior, k -> Anterior (FreeSurfer 'conformed')."""
    aff = np.zeros((4, 4))
    aff[0, 0], aff[2, 1], aff[1, 2], aff[3, 3] = -1.0, -1.5, 2.0, 1.0
    aff[:3, 3] = (100.0, -90.0, 80.0)
    return aff


def oblique() -> npt.NDArray[np.float64]:
    """30 degrees about z, then 10 about x: not aligned with any world axis."""
    a, b = math.radians(30), math.radians(10)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    aff = np.eye(4)
    aff[:3, :3] = rx @ rz @ np.diag([2.0, 3.0, 4.0])
    aff[:3, 3] = (5.0, -7.0, 9.0)
    return aff


# -- the conformance suite --------------------------------------------------------


def _regions(
    shape: tuple[int, ...], block: tuple[int, ...], n_random: int = 12
) -> list[tuple[slice, ...]]:
    """Whole, first block, block-crossing, edge, single-voxel corner and random regions."""
    regions = [
        tuple(slice(0, n) for n in shape),
        tuple(slice(0, min(b, n)) for b, n in zip(block, shape, strict=True)),
        tuple(slice(n // 3, n - n // 4) for n in shape),
        tuple(slice(max(0, n - 5), n) for n in shape),
        tuple(slice(n - 1, n) for n in shape),
        tuple(slice(0, 1) for _ in shape),
    ]
    rng = np.random.default_rng(1234)
    for _ in range(n_random):
        region = []
        for n in shape:
            a, b = sorted(int(v) for v in rng.integers(0, n + 1, 2))
            region.append(slice(a, max(b, a + 1) if a < n else n))
        if all(s.stop > s.start for s in region):
            regions.append(tuple(region))
    return regions


def _read_in_fork(source: Source, region: tuple[slice, ...], queue: Any) -> None:
    queue.put(source.read(region).data)


class SourceConformance:
    """Tests every Source must pass. Subclasses implement the two hooks below."""

    def make_source(self, tmp_path: Path) -> Source:
        """Write a test file into ``tmp_path`` and open it with the reader under test."""
        raise NotImplementedError

    def reference(self, source: Source) -> npt.NDArray[Any]:
        """The whole ``(C, *spatial)`` array, read directly with rasterio / nibabel."""
        raise NotImplementedError

    def expected_valid(self, source: Source, reference: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
        """Valid where not every channel is nodata (or NaN, for floats)."""
        bad = np.zeros(reference.shape, bool)
        if reference.dtype.kind == "f":
            bad |= np.isnan(reference)
        if source.nodata is not None and not math.isnan(source.nodata):
            bad |= reference == source.nodata
        return np.logical_not(bad.all(axis=0))

    @pytest.fixture
    def source(self, tmp_path: Path) -> Source:
        return self.make_source(tmp_path)

    @pytest.fixture
    def full(self, source: Source) -> ReadResult:
        return source.read(tuple(slice(0, n) for n in source.spatial_shape))

    def test_is_a_source(self, source: Source) -> None:
        assert isinstance(source, Source)
        assert isinstance(source.path, Path) and source.path.is_file()
        if source.kind == "raster":
            assert isinstance(source.geometry, RasterGeometry)
            assert len(source.spatial_shape) == 2
        else:
            assert source.kind == "volume"
            assert isinstance(source.geometry, VolumeGeometry)
            assert len(source.spatial_shape) == 3

    def test_shape_channels_dtype_consistent(self, source: Source, full: ReadResult) -> None:
        assert full.data.shape == (source.channels, *source.spatial_shape)
        assert full.data.dtype == source.dtype
        assert source.dtype.isnative
        assert full.valid.shape == tuple(source.spatial_shape)
        assert full.valid.dtype == np.bool_
        assert len(source.band_names) == source.channels
        assert len(source.block_shape) == len(source.spatial_shape)
        assert all(
            1 <= b <= n for b, n in zip(source.block_shape, source.spatial_shape, strict=True)
        )

    def test_full_read_equals_library(self, source: Source, full: ReadResult) -> None:
        ref = self.reference(source)
        assert ref.shape == full.data.shape
        np.testing.assert_array_equal(full.data, ref)  # NaN == NaN here
        np.testing.assert_array_equal(full.valid, self.expected_valid(source, ref))

    def test_regions_agree_with_full_read(self, source: Source, full: ReadResult) -> None:
        for region in _regions(tuple(source.spatial_shape), tuple(source.block_shape)):
            part = source.read(region)
            np.testing.assert_array_equal(part.data, full.data[(slice(None), *region)])
            np.testing.assert_array_equal(part.valid, full.valid[region])
            assert part.data.flags.c_contiguous

    def test_empty_region(self, source: Source) -> None:
        region = (slice(0, 0), *(slice(0, n) for n in source.spatial_shape[1:]))
        out = source.read(region)
        assert out.data.shape == (source.channels, 0, *source.spatial_shape[1:])
        assert out.valid.shape == (0, *source.spatial_shape[1:])

    def test_bad_regions_raise(self, source: Source) -> None:
        shape = source.spatial_shape
        whole = tuple(slice(0, n) for n in shape)
        with pytest.raises(ValueError, match="outside"):
            source.read((slice(0, shape[0] + 1), *whole[1:]))
        with pytest.raises(ValueError, match="slices"):
            source.read(whole[1:])
        with pytest.raises(ValueError, match="step"):
            source.read((slice(0, shape[0], 2), *whole[1:]))

    def test_pickle_round_trip(self, source: Source, full: ReadResult) -> None:
        source.read(tuple(slice(0, 1) for _ in source.spatial_shape))  # a handle is open now
        clone = pickle.loads(pickle.dumps(source))
        again = clone.read(tuple(slice(0, n) for n in clone.spatial_shape))
        np.testing.assert_array_equal(again.data, full.data)
        np.testing.assert_array_equal(again.valid, full.valid)
        assert clone.geometry == source.geometry
        assert (clone.dtype, clone.nodata is None, clone.band_names) == (
            source.dtype,
            source.nodata is None,
            source.band_names,
        )
        assert tokenize(clone) == tokenize(source)

    def test_reads_from_four_threads_agree(self, source: Source, full: ReadResult) -> None:
        regions = _regions(tuple(source.spatial_shape), tuple(source.block_shape), n_random=24)
        start = threading.Barrier(4)

        def work(offset: int) -> list[tuple[tuple[slice, ...], ReadResult]]:
            start.wait()
            order = regions[offset:] + regions[:offset]
            return [(r, source.read(r)) for r in order * 2]

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(work, range(0, 4 * 5, 5)))
        for batch in results:
            for region, part in batch:
                np.testing.assert_array_equal(part.data, full.data[(slice(None), *region)])
                np.testing.assert_array_equal(part.valid, full.valid[region])

    def test_reads_in_a_forked_process(self, source: Source, full: ReadResult) -> None:
        if "fork" not in multiprocessing.get_all_start_methods():
            pytest.skip("no fork on this platform")
        if threading.active_count() > 1:
            # e.g. a Prefect server started by an earlier test: forking a threaded process can hang
            pytest.skip("other threads are running in this process; fork is unsafe here")
        source.read(tuple(slice(0, 1) for _ in source.spatial_shape))  # parent holds a handle
        region = tuple(slice(n // 4, n) for n in source.spatial_shape)
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        proc = ctx.Process(target=_read_in_fork, args=(source, region, queue))
        proc.start()
        data = queue.get(timeout=30)
        proc.join(timeout=30)
        assert proc.exitcode == 0
        np.testing.assert_array_equal(data, full.data[(slice(None), *region)])

    def test_as_dask_equals_full_read(self, source: Source, full: ReadResult) -> None:
        chunks = tuple(max(1, n // 3 + 1) for n in source.spatial_shape)  # not block aligned
        data = as_dask(source, chunks)
        valid = valid_as_dask(source, chunks)
        assert data.shape == full.data.shape and data.dtype == source.dtype
        assert data.chunks[0] == (source.channels,)
        assert data.numblocks[1:] == valid.numblocks
        assert as_dask(source, chunks).name == data.name  # deterministic graph names
        with dask.config.set(scheduler="threads", num_workers=4):
            d, v = dask.compute(data, valid)
        np.testing.assert_array_equal(d, full.data)
        np.testing.assert_array_equal(v, full.valid)
        # a lazy slice reads only what it needs and still agrees
        np.testing.assert_array_equal(data[:, 1:3].compute(), full.data[:, 1:3])

    def test_checksum_is_sha256_of_file(self, source: Source) -> None:
        digest = hashlib.sha256(source.path.read_bytes()).hexdigest()
        assert source.checksum() == digest
        assert source.checksum() == digest  # cached, same answer

    def test_close_then_read_reopens(self, source: Source, full: ReadResult) -> None:
        close = getattr(source, "close", None)
        if close is None:
            pytest.skip("this source has no close()")
        close()
        again = source.read(tuple(slice(0, n) for n in source.spatial_shape))
        np.testing.assert_array_equal(again.data, full.data)
