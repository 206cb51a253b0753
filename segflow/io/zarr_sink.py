"""Zarr v3 output store: labels and class probabilities written chunk by chunk.

Layout (rasters, readable with ``xarray.open_zarr`` + rioxarray)::

    labels          (y, x)          uint8/uint16, nodata = max of dtype
    probabilities   (class, y, x)   optional: uint8 (p * 254, 255 nodata) or float16 (NaN nodata)
    uncertainty     (y, x)          optional: uint8 normalized entropy (H / ln K * 254, 255 nodata)
    y, x, class     1-D coordinates (pixel centres)
    spatial_ref     0-d CF grid mapping (crs_wkt, GeoTransform)
    _segflow/done   per-chunk completion record

Layout (volumes, OME-Zarr 0.5 label image)::

    0                   (z, y, x) labels in the file's voxel order (i, j, k)
    probabilities/0     (c, z, y, x) optional, an OME image group
    uncertainty/0       (z, y, x) optional, an OME image group
    _segflow/done

The OME axis names are labels of the voxel axes (stores written before name them
i, j, k); the exact affine is in the ``segflow`` geometry attributes.

The root attribute ``segflow`` holds the store's own description (layout, classes,
exact geometry, provenance, completion). Each output chunk is written whole by one
task, then recorded in ``_segflow/done`` (one object per chunk, so concurrent writers
never share an object). A missing data chunk is not proof of "not done": Zarr skips
chunks that equal the fill value.

A sink pickles to its path plus cached metadata; Zarr arrays are opened lazily in
each process. The layout lives in :mod:`segflow.io.zarr_layout`, the creation of a
new store in :mod:`segflow.io.zarr_write`.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from segflow.errors import ConfigError, OutputError, SegflowError
from segflow.io import zarr_meta as meta
from segflow.io.classes import ClassInfo
from segflow.io.completion import recorded_chunks
from segflow.io.source import Geometry, RasterGeometry, Region, VolumeGeometry
from segflow.io.stores import (
    StorePath,
    check_can_create_remote,
    is_store,
    remove_remote_store,
    store_location,
)
from segflow.io.uris import ObjectPath, is_uri
from segflow.io.zarr_layout import DONE_PATH, OutputLayout, StoreKind, build_info
from segflow.io.zarr_meta import dequantize_probabilities, label_dtype_for, quantize_probabilities
from segflow.io.zarr_write import (
    StoreArray,
    check_can_create,
    consolidate_store,
    local_path,
    make_dir,
    open_array,
    open_group,
    remove_store,
    write_new_store,
)
from segflow.options import ProbabilityMode

__all__ = [  # the quantization helpers live in zarr_meta, next to the attributes describing them
    "OutputLayout",
    "ProbabilityMode",
    "StoreState",
    "ZarrSink",
    "consolidate_store",
    "dequantize_probabilities",
    "label_dtype_for",
    "quantize_probabilities",
    "read_geometry",
    "store_state",
]

StoreState = Literal["absent", "partial", "complete", "foreign"]


class ZarrSink:
    """A segflow output store. Build with :meth:`create` or :meth:`open`, not the constructor."""

    def __init__(self, path: StorePath, info: Mapping[str, Any]) -> None:
        self.path = path
        self._info = dict(info)  # the root "segflow" attribute, as stored
        self._arrays: dict[str, StoreArray] = {}
        self.layout = OutputLayout.from_attrs(info["layout"])
        kind = info["kind"]
        if kind not in ("raster", "volume"):
            raise ValueError(f"unknown store kind {kind!r}")
        self.kind: StoreKind = kind
        self.classes = meta.classes_from_attrs(info["classes"])
        self.geometry = meta.geometry_from_attrs(info["geometry"])
        self.label_dtype = self.layout.label_dtype
        self.label_nodata = self.layout.label_nodata
        self.chunk_grid_shape = self.layout.chunk_grid_shape

    # --- construction ----------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str] | ObjectPath,
        layout: OutputLayout,
        geometry: Geometry,
        classes: Sequence[ClassInfo],
        attrs: Mapping[str, Any],
        fingerprint: str,
        *,
        resume: bool = False,
        overwrite: bool = False,
    ) -> ZarrSink:
        """Create a new store, or with ``resume`` continue a matching existing one.

        ``attrs`` is the provenance (model identity, parameters, versions, input and its
        checksum); ``fingerprint`` identifies everything that determines the output bytes,
        and a resumed store must carry the same one.
        """
        if resume and overwrite:
            raise ConfigError("--resume and --overwrite exclude each other; pass one of them")
        target = _location(path)
        info = build_info(layout, geometry, classes, attrs, fingerprint)
        if isinstance(target, ObjectPath):
            return cls._create_remote(
                target, info, (layout, geometry, classes), resume=resume, overwrite=overwrite
            )
        if target.exists() or target.is_symlink():
            if resume:
                return cls._resumed(target, info)
            _refuse_existing(target, overwrite)
            check_can_create(target)
            remove_store(target)
        else:
            check_can_create(target)
        make_dir(target)
        write_new_store(target, info, layout, geometry, classes)
        return cls(target, info)

    @classmethod
    def _resumed(cls, target: StorePath, info: dict[str, Any]) -> ZarrSink:
        """The existing store, once it is known to be the same run's."""
        sink = cls.open(target)
        sink._check_matches(info)
        return sink

    @classmethod
    def _create_remote(
        cls,
        target: ObjectPath,
        info: dict[str, Any],
        described: tuple[OutputLayout, Geometry, Sequence[ClassInfo]],
        *,
        resume: bool,
        overwrite: bool,
    ) -> ZarrSink:
        """The same choices as on disk, for a prefix in object storage."""
        check_can_create_remote(target)  # a missing bucket or wrong credentials: one line
        if target.is_dir():
            if resume:
                return cls._resumed(target, info)
            _refuse_existing(target, overwrite)
            remove_remote_store(target)
        from segflow.io import remote  # fsspec only for stores in object storage

        # made locally and put in one concurrent batch: each zarr call on object storage
        # costs a round trip or three, and a store's metadata is some thirty objects
        with tempfile.TemporaryDirectory(prefix="segflow-store-") as folder:
            staged = Path(folder) / target.name
            write_new_store(staged, info, *described)
            remote.upload_tree(staged, target)
        return cls(target, info)

    @classmethod
    def open(cls, path: str | os.PathLike[str] | ObjectPath) -> ZarrSink:
        """Open an existing segflow store (read-only until a chunk is written)."""
        target = _location(path)
        if isinstance(target, ObjectPath):
            check_can_create_remote(target)  # a missing bucket or wrong credentials: one line
        if not _holds_store(target):
            what = "a file" if target.exists() else "missing"
            raise OutputError(f"{target} is not a segflow zarr store ({what}); check the path")
        try:
            group = open_group(target)
        except (FileNotFoundError, ValueError, TypeError, KeyError) as exc:
            raise OutputError(
                f"{target} is not a zarr store ({exc}); pass --overwrite to replace it "
                "or choose another output"
            ) from exc
        info = group.attrs.get("segflow")
        if not isinstance(info, dict) or info.get("format") != meta.STORE_FORMAT:
            raise OutputError(
                f"{target} is a zarr store but not a segflow output; choose another output path"
            )
        if info.get("format_version") != meta.STORE_FORMAT_VERSION:
            raise OutputError(
                f"{target} has segflow store format {info.get('format_version')!r}, this "
                f"segflow writes {meta.STORE_FORMAT_VERSION}; pass --overwrite to replace it"
            )
        try:
            return cls(target, info)
        except (KeyError, TypeError, ValueError) as exc:
            raise OutputError(
                f"{target} has damaged segflow attributes ({exc}); pass --overwrite"
            ) from exc

    @classmethod
    def open_finished(
        cls,
        store: str | os.PathLike[str] | ObjectPath | ZarrSink,
        *,
        need_labels: bool = True,
        need_complete: bool = True,
        purpose: str = "reading it",
    ) -> ZarrSink:
        """Open a store (or take an open one) that holds what ``purpose`` needs.

        One-line OutputErrors when it holds no labels (``need_labels``) or is not
        finalized (``need_complete``); ``purpose`` ends them, e.g. "exporting".
        """
        sink = store if isinstance(store, ZarrSink) else cls.open(store)
        if need_labels and sink.labels_path is None:
            raise OutputError(
                f"{sink.path} holds no labels (written with --no-labels); {purpose} needs them"
            )
        if need_complete and not sink.is_complete:
            done = len(sink.done_chunks())
            raise OutputError(
                f"{sink.path} is not complete ({done} of {sink.chunks_total} chunks written); "
                f"finish it with `segflow run --resume` before {purpose}"
            )
        return sink

    # --- description -----------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        return str(self._info["fingerprint"])

    @property
    def attrs(self) -> dict[str, Any]:
        """The provenance recorded at creation."""
        return dict(self._info["provenance"])

    @property
    def summary(self) -> dict[str, Any] | None:
        """What :meth:`finalize` recorded (read from the store)."""
        summary = self._read_info().get("summary")
        return dict(summary) if isinstance(summary, dict) else None

    @property
    def is_complete(self) -> bool:
        """Read from the store each time: another process may have finalized it."""
        return bool(self._read_info().get("complete", False))

    @property
    def labels_path(self) -> str | None:
        return _optional_str(self._info["arrays"]["labels"])

    @property
    def probabilities_path(self) -> str | None:
        return _optional_str(self._info["arrays"]["probabilities"])

    @property
    def uncertainty_path(self) -> str | None:
        return _optional_str(self._info["arrays"].get("uncertainty"))

    @property
    def chunks_total(self) -> int:
        return math.prod(self.chunk_grid_shape)

    def chunk_region(self, index: Sequence[int]) -> Region:
        """Spatial slices of one output chunk, clipped at the image edge."""
        index = self._check_index(index)
        return tuple(
            slice(i * c, min((i + 1) * c, s))
            for i, c, s in zip(
                index, self.layout.chunk_shape, self.layout.spatial_shape, strict=True
            )
        )

    def done_chunks(self) -> set[tuple[int, ...]]:
        """Chunks recorded as written (one store listing, not one read per chunk)."""
        self._array(DONE_PATH, writable=False)  # the record must exist, even when empty
        grid = self.chunk_grid_shape
        return {
            index
            for index in recorded_chunks(self.path, DONE_PATH, len(grid))
            if all(0 <= i < g for i, g in zip(index, grid, strict=True))
        }

    # --- writing ---------------------------------------------------------------------------

    def write_chunk(
        self,
        index: Sequence[int],
        labels: npt.NDArray[np.generic] | None,
        probabilities: npt.NDArray[np.floating] | None,
        uncertainty: npt.NDArray[np.uint8] | None = None,
    ) -> None:
        """Write one whole chunk, then record it as done.

        ``labels``: the chunk region in :attr:`label_dtype`, :attr:`label_nodata` where nodata.
        ``probabilities``: float (K, *region) in [0, 1], NaN where nodata.
        ``uncertainty``: uint8 of the chunk region as stored (see engine.uncertainty), 255
        where nodata; required exactly when the store records it.
        """
        index = self._check_index(index)
        region = self.chunk_region(index)
        shape = tuple(s.stop - s.start for s in region)
        self._check_labels(index, shape, labels)
        self._check_probabilities(index, shape, probabilities)
        self._check_uncertainty(index, shape, uncertainty)
        mode = self.layout.probabilities
        if labels is not None and self.labels_path is not None:
            self._array(self.labels_path)[region] = labels
        if probabilities is not None and self.probabilities_path is not None:
            stored = quantize_probabilities(probabilities, mode)
            self._array(self.probabilities_path)[(slice(None), *region)] = stored
        if uncertainty is not None and self.uncertainty_path is not None:
            self._array(self.uncertainty_path)[region] = uncertainty
        self._array(DONE_PATH)[index] = np.uint8(1)  # only after the data is fully written

    def _check_labels(
        self, index: tuple[int, ...], shape: tuple[int, ...], labels: npt.NDArray[Any] | None
    ) -> None:
        if not self.layout.write_labels:
            if labels is not None:
                raise ValueError("this store was created without labels")
            return
        if labels is None:
            raise ValueError("this store records labels; write_chunk needs them")
        if labels.shape != shape:
            raise ValueError(
                f"labels for chunk {index} have shape {labels.shape}, expected {shape}"
            )
        if labels.dtype != self.label_dtype:
            raise ValueError(f"labels must be {self.label_dtype}, got {labels.dtype}")

    def _check_uncertainty(
        self, index: tuple[int, ...], shape: tuple[int, ...], values: npt.NDArray[Any] | None
    ) -> None:
        if not self.layout.uncertainty:
            if values is not None:
                raise ValueError("this store was created without uncertainty")
            return
        if values is None or values.shape != shape or values.dtype != np.uint8:
            got = None if values is None else f"{values.dtype} {values.shape}"
            raise ValueError(f"uncertainty for chunk {index} must be uint8 {shape}, got {got}")

    def _check_probabilities(
        self, index: tuple[int, ...], shape: tuple[int, ...], probabilities: npt.NDArray[Any] | None
    ) -> None:
        if self.layout.probabilities is ProbabilityMode.NONE:
            if probabilities is not None:
                raise ValueError("this store was created without probabilities")
            return
        expected = (self.layout.num_classes, *shape)
        if probabilities is None or probabilities.shape != expected:
            got = None if probabilities is None else probabilities.shape
            raise ValueError(
                f"probabilities for chunk {index} must have shape {expected}, got {got}"
            )

    def finalize(self, extra_attrs: Mapping[str, Any]) -> None:
        """Mark the store complete and record a run summary; every chunk must be done."""
        missing = self.chunks_total - len(self.done_chunks())
        if missing:
            raise OutputError(
                f"{self.path}: {missing} chunk(s) not written yet; run again with --resume"
            )
        group = open_group(self.path, "r+")
        info = self._read_info()
        info["complete"] = True
        info["summary"] = meta.jsonable(extra_attrs)
        group.attrs["segflow"] = info
        consolidate_store(self.path)  # refresh the consolidated copy of the metadata
        self._info = info

    # --- reading ---------------------------------------------------------------------------

    def labels_array(self) -> StoreArray:
        """The level-0 labels array, read-only."""
        if self.labels_path is None:
            raise OutputError(f"{self.path} holds no labels (written without them)")
        return self._array(self.labels_path, writable=False)

    def probabilities_array(self) -> StoreArray:
        """The level-0 stored probabilities (quantized), read-only; see dequantize_probabilities."""
        if self.probabilities_path is None:
            raise OutputError(f"{self.path} holds no probabilities (written without them)")
        return self._array(self.probabilities_path, writable=False)

    def uncertainty_array(self) -> StoreArray:
        """The stored uncertainty (uint8, see engine.uncertainty), read-only."""
        if self.uncertainty_path is None:
            raise OutputError(f"{self.path} holds no uncertainty (run with --uncertainty)")
        return self._array(self.uncertainty_path, writable=False)

    def read_uncertainty(self, region: Region | None = None) -> npt.NDArray[np.uint8]:
        """The stored uncertainty of a spatial region (default: everything), 255 where nodata."""
        selection = ... if region is None else tuple(region)
        return np.asarray(self.uncertainty_array()[selection])

    def read_labels(self, region: Region | None = None) -> npt.NDArray[Any]:
        """Labels of a spatial region (default: everything), label_nodata where nodata."""
        selection = ... if region is None else tuple(region)
        return np.asarray(self.labels_array()[selection])

    def read_probabilities(
        self, region: Region | None = None, *, decode: bool = True
    ) -> npt.NDArray[Any]:
        """Probabilities (K, *region): float32 with NaN nodata, or as stored when not ``decode``."""
        selection = ... if region is None else (slice(None), *region)
        stored = np.asarray(self.probabilities_array()[selection])
        return dequantize_probabilities(stored, self.layout.probabilities) if decode else stored

    # --- internals -------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "info": self._info}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["info"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"ZarrSink({str(self.path)!r}, kind={self.kind!r}, layout={self.layout})"

    def _read_info(self) -> dict[str, Any]:
        info = open_group(self.path).attrs.get("segflow")
        return dict(info) if isinstance(info, dict) else {}

    def _array(self, name: str, writable: bool = True) -> StoreArray:
        key = f"{name}:{'w' if writable else 'r'}"
        array = self._arrays.get(key)
        if array is None:
            array = self._arrays[key] = open_array(self.path, name, "r+" if writable else "r")
        return array

    def _check_index(self, index: Sequence[int]) -> tuple[int, ...]:
        idx = tuple(int(i) for i in index)
        grid = self.chunk_grid_shape
        if len(idx) != len(grid) or not all(0 <= i < g for i, g in zip(idx, grid, strict=True)):
            raise IndexError(f"chunk index {idx} outside the chunk grid {grid}")
        return idx

    def _check_matches(self, wanted: Mapping[str, Any]) -> None:
        """Refuse to resume a store made for something else; name the first difference."""
        have = self._info
        checks: list[tuple[str, Any, Any]] = [
            ("kind", have.get("kind"), wanted["kind"]),
            ("fingerprint", have.get("fingerprint"), wanted["fingerprint"]),
        ]
        keys = ("spatial_shape", "chunk_shape", "num_classes", "write_labels", "probabilities")
        for key in keys:
            checks.append((key.replace("_", " "), have["layout"].get(key), wanted["layout"][key]))
        uncertain = (
            bool(have["layout"].get("uncertainty")),
            bool(wanted["layout"].get("uncertainty")),
        )
        checks.append(("uncertainty", *uncertain))
        fmt = self.layout.zarr_format, int(wanted["layout"].get("zarr_format", 3))
        checks.append(("zarr format", *fmt))
        checks.append(("classes", have.get("classes"), wanted["classes"]))
        checks.append(("geometry", have.get("geometry"), wanted["geometry"]))
        for what, old, new in checks:
            if old != new:
                shown = (
                    (old, new) if what not in ("classes", "geometry") else ("stored", "requested")
                )
                raise OutputError(
                    f"cannot resume {self.path}: {what} differs ({shown[0]} vs {shown[1]}); "
                    "pass --overwrite to replace it or choose another output"
                )
        self._check_arrays()

    def _check_arrays(self) -> None:
        """The arrays a resumed run writes into must exist with the recorded shape and chunks."""
        layout = self.layout
        expected: list[tuple[str, tuple[int, ...], tuple[int, ...] | None]] = [
            (DONE_PATH, self.chunk_grid_shape, (1,) * len(self.chunk_grid_shape)),
        ]
        chunks = layout.clipped_chunks
        if self.labels_path is not None:
            expected.append((self.labels_path, layout.spatial_shape, chunks))
        if self.probabilities_path is not None:
            expected.append(
                (self.probabilities_path, (layout.num_classes, *layout.spatial_shape), None)
            )
        if self.uncertainty_path is not None:
            expected.append((self.uncertainty_path, layout.spatial_shape, chunks))
        for name, shape, chunk in expected:
            try:
                array = self._array(name, writable=False)
            except OutputError as exc:
                raise OutputError(
                    f"cannot resume {self.path}: array {name} is missing or damaged; pass --overwrite"
                ) from exc
            if array.shape != shape or (chunk is not None and array.chunks != chunk):
                raise OutputError(
                    f"cannot resume {self.path}: array {name} is {array.shape} in chunks "
                    f"{array.chunks}, expected {shape} in chunks {chunk}; pass --overwrite"
                )


def read_geometry(sink: ZarrSink) -> RasterGeometry | VolumeGeometry:
    """The exact input geometry recorded in the store's attributes."""
    return sink.geometry


def store_state(path: str | os.PathLike[str] | ObjectPath) -> StoreState:
    """absent, partial (chunks may be done, not finalized), complete, or foreign (not ours)."""
    target = _location(path)
    if not (target.is_dir() if isinstance(target, ObjectPath) else target.exists()):
        return "absent"
    try:
        return "complete" if ZarrSink.open(target).is_complete else "partial"
    except SegflowError:
        return "foreign"


def _location(path: str | os.PathLike[str] | ObjectPath) -> StorePath:
    """A local folder, or a prefix in object storage for a URI."""
    if isinstance(path, ObjectPath) or is_uri(os.fspath(path)):
        return store_location(path)
    return local_path(path)


def _holds_store(target: StorePath) -> bool:
    if isinstance(target, ObjectPath):
        return is_store(target)
    return target.is_dir()


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _refuse_existing(target: StorePath, overwrite: bool) -> None:
    """An existing store is replaced only when asked to be."""
    if not overwrite:
        raise OutputError(
            f"{target} exists; pass --resume to continue it or --overwrite to replace it"
        )
