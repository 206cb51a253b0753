"""Machinery shared by the lazy readers: files, regions, per-thread handles, Dask arrays.

``check_input_file`` / ``sha256_file`` do the file-level work both readers
need, ``normalize_region`` checks the regions readers are asked for, ``ThreadHandles``
keeps one open file handle per thread and process (GDAL and nibabel handles
are not thread-safe, and Sources are pickled to worker processes), and
``as_dask`` / ``valid_as_dask`` expose any Source as a Dask array built from
``source.read`` block by block. ``FileSourceBase`` gives both readers their shared
checksum, close, context-manager and pickling behaviour.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

import numpy as np
import numpy.typing as npt

from segflow.errors import ConfigError
from segflow.io.files import sha256_file
from segflow.io.source import Region, Source
from segflow.io.uris import ObjectPath

if TYPE_CHECKING:  # dask is imported where a Dask array is made: opening a file needs none
    import dask.array as da


H = TypeVar("H")

# Spatial chunks: one size for every axis, or per axis a size or explicit block sizes.
Chunks = int | Sequence[int | Sequence[int]]


def file_token(path: Path | ObjectPath) -> tuple[str, int, int | str]:
    """Cheap identity of a file's content for Dask names: resolved path, size, mtime
    (an object's URI, size and ETag)."""
    if isinstance(path, ObjectPath):
        from segflow.io.remote import token

        return token(path)
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def one_line(error: BaseException) -> str:
    """An exception's message (and its cause's) on one line, for ReaderError texts."""
    parts = [str(error)]
    if error.__cause__ is not None and str(error.__cause__) not in parts[0]:
        parts.append(str(error.__cause__))
    return " ".join(" ".join(parts).split())


def check_user_nodata(
    nodata: float | None, dtype: np.dtype, path: Path | ObjectPath
) -> float | None:
    """A user's nodata value as a float; ConfigError if ``dtype`` data can never hold it."""
    if nodata is None:
        return None
    value = float(nodata)
    if dtype.kind in "iub":
        info = np.iinfo(dtype) if dtype.kind != "b" else np.iinfo(np.uint8)
        if math.isnan(value) or value != int(value) or not info.min <= value <= info.max:
            raise ConfigError(
                f"nodata={nodata} cannot occur in {path.name}, whose data is {dtype}; "
                f"give an integer in {info.min}..{info.max}"
            )
    return value


def valid_mask(data: npt.NDArray[Any], nodata: Sequence[float | None]) -> npt.NDArray[np.bool_]:
    """``(C, *spatial)`` -> ``(*spatial)``: False where every channel is nodata or NaN.

    ``nodata`` has one value (or None) per channel; NaN counts as nodata in
    float data whatever ``nodata`` says.
    """
    is_float = data.dtype.kind == "f"
    if not is_float and all(v is None or math.isnan(v) for v in nodata):
        return all_valid(data.shape[1:])
    invalid = np.ones(data.shape[1:], bool)
    for channel, value in zip(data, nodata, strict=True):
        bad = np.isnan(channel) if is_float else np.zeros(channel.shape, bool)
        if value is not None and not math.isnan(value):
            # a Python float compares in the channel's own dtype (NumPy 2 promotion),
            # so a float32 nodata like 0.1 matches its float32 pixels
            bad |= channel == float(value)
        invalid &= bad
    return ~invalid


def all_valid(shape: tuple[int, ...]) -> npt.NDArray[np.bool_]:
    """A read-only mask that is True everywhere and takes no memory (a broadcast view).

    Most inputs cannot hold nodata (an integer volume without a nodata value);
    a real mask for them cost a byte per voxel, 30 MB per 3-D region read.
    """
    return np.broadcast_to(np.True_, shape)


def normalize_region(region: Region, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Check a region against a spatial shape; return it with explicit start/stop.

    Regions come from the engine, not from users, so a bad one is a bug:
    it raises ValueError instead of clipping silently (a clipped read would
    return a smaller array than the caller sized its buffers for).
    """
    if not isinstance(region, tuple) or len(region) != len(shape):
        raise ValueError(f"region {region!r} must be a tuple of {len(shape)} slices")
    out: list[slice] = []
    for axis, (s, n) in enumerate(zip(region, shape, strict=True)):
        if not isinstance(s, slice) or s.step not in (None, 1):
            raise ValueError(f"region axis {axis}: {s!r} is not a slice with step 1")
        start = 0 if s.start is None else int(s.start)
        stop = n if s.stop is None else int(s.stop)
        if not 0 <= start <= stop <= n:
            raise ValueError(f"region axis {axis}: {start}:{stop} is outside 0:{n}")
        out.append(slice(start, stop))
    return tuple(out)


def region_shape(region: tuple[slice, ...]) -> tuple[int, ...]:
    """Shape of a normalized region."""
    return tuple(int(s.stop) - int(s.start) for s in region)


class ThreadHandles(Generic[H]):
    """One handle per thread, reopened in a new process, never pickled.

    Handles are keyed by thread id; when a thread opens its first handle,
    handles of threads that have ended are closed, so short-lived threads do
    not leak file descriptors.
    """

    def __init__(self, opener: Callable[[], H], closer: Callable[[H], None]) -> None:
        self._opener = opener
        self._closer = closer
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._handles: dict[int, H] = {}

    def get(self) -> H:
        if self._pid != os.getpid():
            # forked: the parent's handles share file offsets with it; drop them
            self._reset()
        # current_thread() registers threads started outside `threading`, so
        # _prune() sees them alive and never closes a handle still in use
        ident = threading.current_thread().ident
        assert ident is not None
        with self._lock:
            handle = self._handles.get(ident)
        if handle is None:
            handle = self._opener()  # outside the lock: opening may be slow
            with self._lock:
                stale = self._prune()
                self._handles[ident] = handle
            for old in stale:
                self._closer(old)
        return handle

    def _prune(self) -> list[H]:
        alive = {t.ident for t in threading.enumerate()}
        dead = [i for i in self._handles if i not in alive]
        return [self._handles.pop(i) for i in dead]

    def close(self) -> None:
        """Close every handle; call only when no read is in flight."""
        with self._lock:
            handles = list(self._handles.values())
            self._handles.clear()
        for handle in handles:
            self._closer(handle)

    def __len__(self) -> int:
        return len(self._handles)


class FileSourceBase(Generic[H]):
    """Checksum, close, ``with`` and pickling for a file Source with per-thread handles.

    Subclasses set ``path``, ``_checksum = None`` and ``_handles = self._new_handles()``
    in ``__init__``; ``_new_handles`` is called again after unpickling.
    """

    path: Path | ObjectPath
    _checksum: str | None
    _handles: ThreadHandles[H]

    def _new_handles(self) -> ThreadHandles[H]:
        raise NotImplementedError

    def checksum(self) -> str:
        """sha256 of a local file; for an object in storage its ETag (``etag:...``), which
        the store computed, instead of reading the whole object a second time."""
        if self._checksum is None:
            if isinstance(self.path, ObjectPath):
                from segflow.io.remote import token

                self._checksum = f"etag:{token(self.path)[2].strip(chr(34))}"
            else:
                self._checksum = sha256_file(self.path)
        return self._checksum

    def close(self) -> None:
        """Close the open handles (only when no read is in flight); reads reopen them."""
        self._handles.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_handles"]  # open handles never travel to another process
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._handles = self._new_handles()


def coerce_chunks(chunks: Chunks, shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """Spatial chunk spec -> explicit block sizes per spatial axis."""
    spec: Sequence[int | Sequence[int]]
    spec = (chunks,) * len(shape) if isinstance(chunks, int | np.integer) else chunks
    if len(spec) != len(shape):
        raise ConfigError(
            f"chunks {chunks!r} has {len(spec)} axes; the image has {len(shape)} spatial axes"
        )
    out: list[tuple[int, ...]] = []
    for c, n in zip(spec, shape, strict=True):
        if isinstance(c, int | np.integer):
            if c < 1:
                raise ConfigError(f"chunk size {c} must be at least 1")
            size = int(c)
            sizes = tuple(min(size, n - o) for o in range(0, n, size)) or (0,)
        else:
            sizes = tuple(int(v) for v in c)
            if sum(sizes) != n or any(v < 0 for v in sizes):
                raise ConfigError(f"chunk sizes {c!r} do not add up to the axis length {n}")
        out.append(sizes)
    return tuple(out)


class _Reader:
    """Array-like view of a Source for ``da.from_array``: ``data`` or ``valid``."""

    def __init__(self, source: Source, what: str) -> None:
        self.source = source
        self.what = what
        spatial = tuple(source.spatial_shape)
        if what == "data":
            self.shape: tuple[int, ...] = (source.channels, *spatial)
            self.dtype = np.dtype(source.dtype)
        else:
            self.shape = spatial
            self.dtype = np.dtype(bool)
        self.ndim = len(self.shape)

    def __getitem__(self, key: tuple[slice, ...]) -> npt.NDArray[np.generic]:
        if self.what == "data":
            result = self.source.read(tuple(key[1:]))
            return result.data[key[0]]
        return self.source.read(tuple(key)).valid


def _as_dask(source: Source, chunks: Chunks, what: str) -> da.Array:
    import dask.array as da
    from dask.base import tokenize

    reader = _Reader(source, what)
    spatial = coerce_chunks(chunks, tuple(source.spatial_shape))
    full = ((reader.shape[0],), *spatial) if what == "data" else spatial
    from_array: Any = da.from_array  # dask ships it without type hints
    name = f"read-{what}-{tokenize(source, full)}"
    meta = np.empty((0,) * reader.ndim, dtype=reader.dtype)
    array: da.Array = from_array(
        reader, chunks=full, name=name, meta=meta, asarray=False, fancy=False
    )
    return array


def as_dask(source: Source, chunks: Chunks) -> da.Array:
    """The source as a lazy ``(C, *spatial)`` Dask array; one ``source.read`` per block.

    ``chunks`` are spatial only (the channel axis is one chunk): an int for
    every axis, or per axis an int or a tuple of block sizes. Aligning them to
    ``source.block_shape`` avoids decoding file blocks twice.
    """
    return _as_dask(source, chunks, "data")


def valid_as_dask(source: Source, chunks: Chunks) -> da.Array:
    """The validity mask as a lazy ``(*spatial)`` bool Dask array (reads each block again)."""
    return _as_dask(source, chunks, "valid")
