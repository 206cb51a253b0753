"""Shared reader machinery: regions, chunks, nodata masks, per-thread handles, Dask."""

from __future__ import annotations

import hashlib
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import dask
import numpy as np
import pytest

from segflow.errors import ConfigError, ReaderError
from segflow.io.files import check_input_file, sha256_file
from segflow.io.geotiff import GeoTiffSource
from segflow.io.lazy import (
    ThreadHandles,
    as_dask,
    check_user_nodata,
    coerce_chunks,
    normalize_region,
    valid_as_dask,
    valid_mask,
)
from tests.io.conformance import coord_image, write_geotiff

# -- regions and chunks ---------------------------------------------------------------


def test_normalize_region_fills_open_ends() -> None:
    assert normalize_region((slice(None), slice(3, None)), (10, 20)) == (slice(0, 10), slice(3, 20))
    assert normalize_region((slice(4, 4), slice(0, 0)), (10, 20)) == (slice(4, 4), slice(0, 0))


@pytest.mark.parametrize(
    "region",
    [
        (slice(0, 11), slice(0, 5)),  # past the end
        (slice(-1, 5), slice(0, 5)),  # negative: no wrap-around
        (slice(5, 4), slice(0, 5)),  # reversed
        (slice(0, 5),),  # too few axes
        [slice(0, 5), slice(0, 5)],  # not a tuple
        (slice(0, 5, 2), slice(0, 5)),  # strided
        (3, slice(0, 5)),  # an index is not a region
    ],
)
def test_normalize_region_refuses(region: object) -> None:
    with pytest.raises(ValueError):
        normalize_region(region, (10, 20))  # type: ignore[arg-type]


def test_coerce_chunks() -> None:
    assert coerce_chunks(4, (10, 3)) == ((4, 4, 2), (3,))
    assert coerce_chunks((5, (1, 2)), (10, 3)) == ((5, 5), (1, 2))
    assert coerce_chunks(4, (0, 3)) == ((0,), (3,))
    with pytest.raises(ConfigError, match="spatial axes"):
        coerce_chunks((4, 4, 4), (10, 3))
    with pytest.raises(ConfigError, match="add up"):
        coerce_chunks((5, (1, 1)), (10, 3))
    with pytest.raises(ConfigError, match="at least 1"):
        coerce_chunks(0, (10, 3))


# -- nodata -----------------------------------------------------------------------------


def test_valid_mask_needs_every_channel_nodata() -> None:
    data = np.array([[[0, 0, 1]], [[0, 2, 0]]], np.uint8)  # (C=2, 1, 3)
    np.testing.assert_array_equal(valid_mask(data, (0, 0)), [[False, True, True]])
    np.testing.assert_array_equal(valid_mask(data, (0, None)), [[True, True, True]])
    np.testing.assert_array_equal(valid_mask(data, (None, None)), [[True, True, True]])


def test_valid_mask_of_data_without_nodata_takes_no_memory() -> None:
    data = np.zeros((2, 64, 64), np.int16)
    valid = valid_mask(data, (None, None))
    assert valid.shape == (64, 64) and bool(valid.all())
    assert valid.strides == (0, 0)  # a view of one value, not a byte per pixel
    assert not valid.flags.writeable


def test_valid_mask_nan_always_counts_for_floats() -> None:
    nan = np.nan
    data = np.array([[[nan, nan, 1.0, -1.0]], [[nan, 2.0, nan, -1.0]]], np.float32)
    np.testing.assert_array_equal(valid_mask(data, (None, None)), [[False, True, True, True]])
    np.testing.assert_array_equal(valid_mask(data, (-1.0, -1.0)), [[False, True, True, False]])
    np.testing.assert_array_equal(valid_mask(data, (nan, nan)), [[False, True, True, True]])


def test_check_user_nodata(tmp_path: Path) -> None:
    p = tmp_path / "x.tif"
    assert check_user_nodata(None, np.dtype(np.uint8), p) is None
    assert check_user_nodata(255, np.dtype(np.uint8), p) == 255.0
    assert check_user_nodata(-32768, np.dtype(np.int16), p) == -32768.0
    assert np.isnan(check_user_nodata(float("nan"), np.dtype(np.float32), p) or 0.0)
    for bad, dtype in [(256, np.uint8), (-1, np.uint16), (0.5, np.int16), (float("nan"), np.int32)]:
        with pytest.raises(ConfigError, match=str(np.dtype(dtype))):
            check_user_nodata(bad, np.dtype(dtype), p)


# -- files ---------------------------------------------------------------------------------


def test_check_input_file(tmp_path: Path) -> None:
    f = tmp_path / "f.bin"
    f.write_bytes(b"abc")
    assert check_input_file(f) == 3
    with pytest.raises(ReaderError, match="not found"):
        check_input_file(tmp_path / "none")
    with pytest.raises(ReaderError, match="directory"):
        check_input_file(tmp_path)
    (tmp_path / "e").touch()
    with pytest.raises(ReaderError, match="empty"):
        check_input_file(tmp_path / "e")


def test_sha256_streams_in_blocks(tmp_path: Path) -> None:
    content = bytes(range(256)) * 1000
    f = tmp_path / "f.bin"
    f.write_bytes(content)
    assert sha256_file(f, block=1000) == hashlib.sha256(content).hexdigest()


# -- per-thread handles -----------------------------------------------------------------


class _Handle:
    def __init__(self) -> None:
        self.owner = threading.get_ident()
        self.closed = False


def _handles() -> tuple[ThreadHandles[_Handle], list[_Handle]]:
    opened: list[_Handle] = []

    def opener() -> _Handle:
        h = _Handle()
        opened.append(h)
        return h

    def closer(h: _Handle) -> None:
        h.closed = True

    return ThreadHandles(opener, closer), opened


def test_one_handle_per_thread() -> None:
    handles, opened = _handles()
    assert handles.get() is handles.get()  # reused within a thread
    barrier = threading.Barrier(4)
    seen: list[_Handle] = []

    def work() -> None:
        barrier.wait()
        h = handles.get()
        assert h is handles.get() and h.owner == threading.get_ident()
        seen.append(h)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(h) for h in seen}) == 4 and len(opened) == 5


def test_handles_of_ended_threads_are_closed() -> None:
    handles, opened = _handles()
    t = threading.Thread(target=handles.get)
    t.start()
    t.join()
    assert len(opened) == 1 and not opened[0].closed
    handles.get()  # the next open prunes the dead thread's handle
    assert opened[0].closed and len(handles) == 1


def test_close_closes_all() -> None:
    handles, opened = _handles()
    handles.get()
    handles.close()
    assert all(h.closed for h in opened) and len(handles) == 0
    assert not handles.get().closed  # reopens on demand


# -- Dask -----------------------------------------------------------------------------------


@pytest.fixture
def raster(tmp_path: Path) -> tuple[GeoTiffSource, np.ndarray]:
    data = coord_image(2, (50, 70), "int16")
    data[:, :8, :8] = -1
    return GeoTiffSource(write_geotiff(tmp_path / "r.tif", data, nodata=-1)), data


def test_as_dask_chunks_and_laziness(raster: tuple[GeoTiffSource, np.ndarray]) -> None:
    src, data = raster
    arr = as_dask(src, (16, (30, 40)))
    assert arr.chunks == ((2,), (16, 16, 16, 2), (30, 40))
    assert arr.dtype == np.int16
    np.testing.assert_array_equal(
        arr[1, 10:20, 25:35].compute(scheduler="sync"), data[1, 10:20, 25:35]
    )
    valid = valid_as_dask(src, 16)
    assert valid.chunks == ((16, 16, 16, 2), (16, 16, 16, 16, 6)) and valid.dtype == bool
    np.testing.assert_array_equal(valid.compute(scheduler="sync"), (data != -1).any(axis=0))


def test_as_dask_names_follow_options(raster: tuple[GeoTiffSource, np.ndarray]) -> None:
    src, _ = raster
    assert as_dask(src, 16).name == as_dask(src, 16).name
    assert as_dask(src, 16).name != as_dask(src, 8).name
    other = GeoTiffSource(src.path, bands=[2])
    assert as_dask(src, 16).name != as_dask(other, 16).name
    assert as_dask(src, 16).name != valid_as_dask(src, 16).name


def test_as_dask_in_worker_processes(raster: tuple[GeoTiffSource, np.ndarray]) -> None:
    """The graph (with the source) is pickled to other processes, which open their own handles."""
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    src, data = raster
    src.read((slice(0, 1), slice(0, 1)))  # the parent holds a handle
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        out = dask.compute(as_dask(src, 16), scheduler="processes", pool=pool)[0]
    np.testing.assert_array_equal(out, data)
