"""Zarr v3 output store: labels and class probabilities written chunk by chunk.

Layout (rasters, readable with ``xarray.open_zarr`` + rioxarray)::

    labels          (y, x)          uint8/uint16, nodata = max of dtype
    probabilities   (class, y, x)   optional: uint8 (p * 254, 255 nodata) or float16 (NaN nodata)
    y, x, class     1-D coordinates (pixel centres)
    spatial_ref     0-d CF grid mapping (crs_wkt, GeoTransform)
    _segflow/done   per-chunk completion record

Layout (volumes, OME-Zarr 0.5 label image)::

    0                   (i, j, k) labels in the file's voxel order
    probabilities/0     (c, i, j, k) optional, an OME image group
    _segflow/done

The root attribute ``segflow`` holds the store's own description (layout, classes,
exact geometry, provenance, completion). Each output chunk is written whole by one
task, then recorded in ``_segflow/done`` (one object per chunk, so concurrent writers
never share an object). A missing data chunk is not proof of "not done": Zarr skips
chunks that equal the fill value.

A sink pickles to its path plus cached metadata; Zarr arrays are opened lazily in
each process.
"""

from __future__ import annotations

import difflib
import math
import os
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import zarr
from zarr.codecs import ZstdCodec
from zarr.core.sync import sync

from segflow.classes import ClassInfo
from segflow.errors import ConfigError, OutputError
from segflow.io import zarr_meta as meta
from segflow.io.source import Geometry, RasterGeometry, Region, VolumeGeometry
from segflow.io.zarr_meta import (
    PROBABILITY_MODES,
    ProbabilityMode,
    dequantize_probabilities,
    label_dtype_for,
    quantize_probabilities,
)

__all__ = [  # the quantization helpers live in zarr_meta, next to the attributes describing them
    "OutputLayout",
    "ProbabilityMode",
    "ZarrSink",
    "consolidate_store",
    "dequantize_probabilities",
    "label_dtype_for",
    "quantize_probabilities",
    "read_geometry",
]

DONE_PATH = "_segflow/done"
CHUNK_KEY_ENCODING: dict[str, Any] = {"name": "default", "separator": "/"}
PROBABILITY_CHUNK_BYTES = 8 * 2**20  # target raw size of one probabilities object
COORD_CHUNK = 2**20
ZSTD_LEVEL = 3


@dataclass(frozen=True)
class OutputLayout:
    """What the store holds and how it is chunked."""

    spatial_shape: tuple[int, ...]  # (y, x) for rasters, (i, j, k) voxel axes for volumes
    chunk_shape: tuple[int, ...]  # spatial chunk shape of the output arrays
    num_classes: int
    write_labels: bool = True
    probabilities: ProbabilityMode = "none"

    def __post_init__(self) -> None:
        object.__setattr__(self, "spatial_shape", tuple(int(s) for s in self.spatial_shape))
        object.__setattr__(self, "chunk_shape", tuple(int(c) for c in self.chunk_shape))
        if len(self.spatial_shape) not in (2, 3) or any(s < 1 for s in self.spatial_shape):
            raise ConfigError(
                f"output shape must be 2 or 3 positive sizes, got {self.spatial_shape}"
            )
        if len(self.chunk_shape) != len(self.spatial_shape) or any(c < 1 for c in self.chunk_shape):
            raise ConfigError(
                f"chunk shape {self.chunk_shape} must have one positive size per axis of "
                f"{self.spatial_shape}"
            )
        if not 1 <= self.num_classes <= 65535:
            raise ConfigError(f"num_classes must be 1..65535, got {self.num_classes}")
        if self.probabilities not in PROBABILITY_MODES:
            close = difflib.get_close_matches(str(self.probabilities), PROBABILITY_MODES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"probabilities must be one of {', '.join(PROBABILITY_MODES)}, "
                f"got {self.probabilities!r}{hint}"
            )
        if not self.write_labels and self.probabilities == "none":
            raise ConfigError("nothing to write: enable labels or probabilities")

    @property
    def chunk_grid_shape(self) -> tuple[int, ...]:
        return tuple(
            math.ceil(s / c) for s, c in zip(self.spatial_shape, self.chunk_shape, strict=True)
        )


class ZarrSink:
    """A segflow output store. Build with :meth:`create` or :meth:`open`, not the constructor."""

    def __init__(self, path: Path, info: Mapping[str, Any]) -> None:
        self.path = path
        self._info = dict(info)  # the root "segflow" attribute, as stored
        self._arrays: dict[str, zarr.Array] = {}
        layout = info["layout"]
        self.layout = OutputLayout(
            spatial_shape=tuple(layout["spatial_shape"]),
            chunk_shape=tuple(layout["chunk_shape"]),
            num_classes=int(layout["num_classes"]),
            write_labels=bool(layout["write_labels"]),
            probabilities=layout["probabilities"],
        )
        self.kind: Literal["raster", "volume"] = info["kind"]
        self.classes = meta.classes_from_attrs(info["classes"])
        self.geometry = meta.geometry_from_attrs(info["geometry"])
        self.label_dtype = label_dtype_for(self.layout.num_classes)
        self.label_nodata = int(np.iinfo(self.label_dtype).max)
        self.chunk_grid_shape = self.layout.chunk_grid_shape

    # --- construction ----------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
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
        target = _local_path(path)
        info = _build_info(layout, geometry, classes, attrs, fingerprint)
        if target.exists() or target.is_symlink():
            if resume:
                sink = cls.open(target)
                sink._check_matches(info)
                return sink
            if not overwrite:
                raise OutputError(
                    f"{target} exists; pass --resume to continue it or --overwrite to replace it"
                )
            _check_can_create(target)
            _remove_store(target)
        else:
            _check_can_create(target)
        _make_dir(target)
        _write_store(target, info, layout, geometry, classes)
        return cls(target, info)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> ZarrSink:
        """Open an existing segflow store (read-only until a chunk is written)."""
        target = _local_path(path)
        if not target.is_dir():
            what = "a file" if target.exists() else "missing"
            raise OutputError(f"{target} is not a segflow zarr store ({what}); check the path")
        try:
            group = zarr.open_group(target, mode="r", zarr_format=3)
        except (FileNotFoundError, ValueError, TypeError, KeyError) as exc:
            raise OutputError(
                f"{target} is not a zarr v3 store ({exc}); pass --overwrite to replace it "
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
        return self._info["arrays"]["labels"]

    @property
    def probabilities_path(self) -> str | None:
        return self._info["arrays"]["probabilities"]

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
        done = self._array(DONE_PATH, writable=False)
        prefix = f"{done.store_path.path}/c/"

        async def keys() -> list[str]:
            return [k async for k in done.store_path.store.list_prefix(prefix)]

        found: set[tuple[int, ...]] = set()
        grid = self.chunk_grid_shape
        for key in sync(keys()):
            parts = key[len(prefix) :].split("/")
            if len(parts) != len(grid) or not all(p.isdigit() for p in parts):
                continue  # not a chunk object (e.g. a temporary file)
            index = tuple(int(p) for p in parts)
            if all(0 <= i < g for i, g in zip(index, grid, strict=True)):
                found.add(index)
        return found

    # --- writing ---------------------------------------------------------------------------

    def write_chunk(
        self,
        index: Sequence[int],
        labels: npt.NDArray[np.generic] | None,
        probabilities: npt.NDArray[np.floating] | None,
    ) -> None:
        """Write one whole chunk, then record it as done.

        ``labels``: the chunk region in :attr:`label_dtype`, :attr:`label_nodata` where nodata.
        ``probabilities``: float (K, *region) in [0, 1], NaN where nodata.
        """
        index = self._check_index(index)
        region = self.chunk_region(index)
        shape = tuple(s.stop - s.start for s in region)
        if self.layout.write_labels:
            if labels is None:
                raise ValueError("this store records labels; write_chunk needs them")
            if labels.shape != shape:
                raise ValueError(
                    f"labels for chunk {index} have shape {labels.shape}, expected {shape}"
                )
            if labels.dtype != self.label_dtype:
                raise ValueError(f"labels must be {self.label_dtype}, got {labels.dtype}")
        elif labels is not None:
            raise ValueError("this store was created without labels")
        mode = self.layout.probabilities
        if mode != "none":
            expected = (self.layout.num_classes, *shape)
            if probabilities is None or probabilities.shape != expected:
                got = None if probabilities is None else probabilities.shape
                raise ValueError(
                    f"probabilities for chunk {index} must have shape {expected}, got {got}"
                )
        elif probabilities is not None:
            raise ValueError("this store was created without probabilities")

        if labels is not None and self.labels_path is not None:
            self._array(self.labels_path)[region] = labels
        if probabilities is not None and self.probabilities_path is not None:
            stored = quantize_probabilities(probabilities, mode)
            self._array(self.probabilities_path)[(slice(None), *region)] = stored
        self._array(DONE_PATH)[index] = np.uint8(1)  # only after the data is fully written

    def finalize(self, extra_attrs: Mapping[str, Any]) -> None:
        """Mark the store complete and record a run summary; every chunk must be done."""
        missing = math.prod(self.chunk_grid_shape) - len(self.done_chunks())
        if missing:
            raise OutputError(
                f"{self.path}: {missing} chunk(s) not written yet; run again with --resume"
            )
        group = zarr.open_group(self.path, mode="r+", zarr_format=3)
        info = self._read_info()
        info["complete"] = True
        info["summary"] = meta.jsonable(extra_attrs)
        group.attrs["segflow"] = info
        consolidate_store(self.path)  # refresh the consolidated copy of the metadata
        self._info = info

    # --- reading ---------------------------------------------------------------------------

    def labels_array(self) -> zarr.Array:
        """The level-0 labels array, read-only."""
        if self.labels_path is None:
            raise OutputError(f"{self.path} holds no labels (written without them)")
        return self._array(self.labels_path, writable=False)

    def probabilities_array(self) -> zarr.Array:
        """The level-0 stored probabilities (quantized), read-only; see dequantize_probabilities."""
        if self.probabilities_path is None:
            raise OutputError(f"{self.path} holds no probabilities (written without them)")
        return self._array(self.probabilities_path, writable=False)

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
        info = zarr.open_group(self.path, mode="r", zarr_format=3).attrs.get("segflow")
        return dict(info) if isinstance(info, dict) else {}

    def _array(self, name: str, writable: bool = True) -> zarr.Array:
        key = f"{name}:{'w' if writable else 'r'}"
        array = self._arrays.get(key)
        if array is None:
            try:
                opened = zarr.open_array(
                    self.path, path=name, mode="r+" if writable else "r", zarr_format=3
                )
            except (OSError, ValueError) as exc:  # missing (FileNotFoundError) or bad JSON
                raise OutputError(f"cannot open {self.path}/{name}: {exc}") from exc
            if not isinstance(opened, zarr.Array):
                raise OutputError(f"{self.path}/{name} is not an array")
            array = self._arrays[key] = opened
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
        for key in ("spatial_shape", "chunk_shape", "num_classes", "write_labels", "probabilities"):
            checks.append((key.replace("_", " "), have["layout"].get(key), wanted["layout"][key]))
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
        chunks = _clip_chunks(layout)
        if self.labels_path is not None:
            expected.append((self.labels_path, layout.spatial_shape, chunks))
        if self.probabilities_path is not None:
            expected.append(
                (self.probabilities_path, (layout.num_classes, *layout.spatial_shape), None)
            )
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
    return meta.geometry_from_attrs(sink._info["geometry"])


# --- store creation -----------------------------------------------------------------------------


def _build_info(
    layout: OutputLayout,
    geometry: Geometry,
    classes: Sequence[ClassInfo],
    attrs: Mapping[str, Any],
    fingerprint: str,
) -> dict[str, Any]:
    if isinstance(geometry, RasterGeometry):
        kind, ndim = "raster", 2
    elif isinstance(geometry, VolumeGeometry):
        kind, ndim = "volume", 3
    else:
        raise ConfigError(f"unsupported geometry {type(geometry).__name__}")
    if len(layout.spatial_shape) != ndim:
        raise ConfigError(f"a {kind} output needs {ndim} spatial axes, got {layout.spatial_shape}")
    if len(classes) != layout.num_classes:
        raise ConfigError(f"{len(classes)} class names given for {layout.num_classes} classes")
    labels = None if not layout.write_labels else ("labels" if kind == "raster" else "0")
    probabilities = None
    if layout.probabilities != "none":
        probabilities = "probabilities" if kind == "raster" else "probabilities/0"
    arrays = {"labels": labels, "probabilities": probabilities, "done": DONE_PATH}
    return meta.store_info(kind, asdict(layout), arrays, classes, geometry, attrs, fingerprint)


def _local_path(path: str | os.PathLike[str]) -> Path:
    if "://" in str(path):
        raise OutputError(f"output {path} is a URI; segflow writes local (or mounted) paths only")
    return Path(path).expanduser()


def _check_can_create(target: Path) -> None:
    """Fail before writing anything when the store's folder cannot be created."""
    parent = target.parent
    while not parent.exists():
        if parent.is_symlink() or parent == parent.parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"cannot create {target}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(
            f"cannot create {target}: {parent} is not writable; choose another output"
        )


def _remove_store(target: Path) -> None:
    """--overwrite: delete an existing zarr store, and nothing that is not one."""
    if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
        target.rmdir()  # left by a run that stopped before writing metadata
        return
    is_store = target.is_dir() and any(
        (target / marker).is_file() for marker in ("zarr.json", ".zgroup", ".zarray")
    )
    if not is_store:
        raise OutputError(f"{target} exists and is not a zarr store; refusing to delete it")
    try:
        shutil.rmtree(target)
    except OSError as exc:
        raise OutputError(f"cannot remove the existing store {target}: {exc}") from exc


def _make_dir(target: Path) -> None:
    try:
        target.mkdir(parents=True)
    except OSError as exc:
        raise OutputError(f"cannot create {target}: {exc.strerror or exc}") from exc


def _clip_chunks(layout: OutputLayout) -> tuple[int, ...]:
    return tuple(min(c, s) for c, s in zip(layout.chunk_shape, layout.spatial_shape, strict=True))


def _probability_spec(layout: OutputLayout) -> tuple[tuple[int, ...], tuple[int, ...], Any, Any]:
    """Shape, chunks, dtype and fill of the probabilities array.

    All classes share one object unless it would exceed ~8 MiB (e.g. hundreds of classes).
    """
    dtype = np.dtype(np.uint8 if layout.probabilities == "uint8" else np.float16)
    per_class = math.prod(_clip_chunks(layout)) * dtype.itemsize
    class_chunk = max(1, min(layout.num_classes, PROBABILITY_CHUNK_BYTES // per_class))
    fill = 255 if layout.probabilities == "uint8" else np.nan
    shape = (layout.num_classes, *layout.spatial_shape)
    return shape, (class_chunk, *_clip_chunks(layout)), dtype, fill


def _create(
    group: zarr.Group,
    path: str,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dtype: Any,
    fill: Any,
    dims: Sequence[str],
    attrs: Mapping[str, Any],
    *,
    compress: bool = True,
) -> zarr.Array:
    return group.create_array(
        path,
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        fill_value=fill,
        compressors=ZstdCodec(level=ZSTD_LEVEL) if compress else None,
        dimension_names=list(dims),
        attributes=dict(attrs),
        chunk_key_encoding=CHUNK_KEY_ENCODING,
    )


def _write_store(
    target: Path,
    info: dict[str, Any],
    layout: OutputLayout,
    geometry: Geometry,
    classes: Sequence[ClassInfo],
) -> None:
    nodata = int(np.iinfo(label_dtype_for(layout.num_classes)).max)
    attrs: dict[str, Any] = {"segflow": info}
    if isinstance(geometry, RasterGeometry):
        attrs["Conventions"] = "CF-1.8"
    elif layout.write_labels:  # without labels the root is a plain group over "probabilities"
        attrs["ome"] = meta.ome_label_image_attrs(target.stem, geometry, classes, nodata)
    try:
        root = zarr.create_group(target, zarr_format=3, attributes=attrs)
        dims = ("y", "x") if isinstance(geometry, RasterGeometry) else meta.VOLUME_AXES
        _create(
            root,
            DONE_PATH,
            layout.chunk_grid_shape,
            (1,) * len(dims),
            np.uint8,
            0,
            [f"chunk_{d}" for d in dims],
            {"description": "1 where that output chunk is written"},
            compress=False,
        )
        if isinstance(geometry, RasterGeometry):
            _write_raster_arrays(root, layout, geometry, classes)
        else:
            _write_volume_arrays(root, layout, geometry, target.stem, info["probabilities"])
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc}") from exc
    consolidate_store(target)


def _write_raster_arrays(
    root: zarr.Group, layout: OutputLayout, geometry: RasterGeometry, classes: Sequence[ClassInfo]
) -> None:
    height, width = layout.spatial_shape
    y, x = meta.pixel_center_coordinates(geometry.transform, (height, width))
    y_attrs, x_attrs = meta.cf_xy_coordinate_attrs(geometry.crs_wkt)
    for name, values, attrs in (("y", y, y_attrs), ("x", x, x_attrs)):
        chunk = (min(len(values), COORD_CHUNK),)
        _create(root, name, values.shape, chunk, np.float64, np.nan, [name], attrs)[:] = values
    grid_mapping = meta.cf_grid_mapping_attrs(geometry.crs_wkt, geometry.transform)
    _create(root, meta.GRID_MAPPING, (), (), np.int64, 0, [], grid_mapping, compress=False)
    dtype = label_dtype_for(layout.num_classes)
    nodata = int(np.iinfo(dtype).max)
    chunks = _clip_chunks(layout)
    if layout.write_labels:
        label_attrs = meta.cf_label_attrs(classes, nodata)
        _create(
            root, "labels", layout.spatial_shape, chunks, dtype, nodata, ("y", "x"), label_attrs
        )
    if layout.probabilities != "none":
        shape, prob_chunks, prob_dtype, fill = _probability_spec(layout)
        prob_attrs = meta.cf_probability_attrs(layout.probabilities)
        _create(
            root,
            "probabilities",
            shape,
            prob_chunks,
            prob_dtype,
            fill,
            ("class", "y", "x"),
            prob_attrs,
        )
        k = layout.num_classes
        class_attrs = {"long_name": "class index", "flag_meanings": meta.flag_meanings(classes)}
        _create(root, "class", (k,), (k,), np.uint16, 0, ("class",), class_attrs)[:] = np.arange(k)


def _write_volume_arrays(
    root: zarr.Group,
    layout: OutputLayout,
    geometry: VolumeGeometry,
    name: str,
    encoding: Mapping[str, Any] | None,
) -> None:
    dtype = label_dtype_for(layout.num_classes)
    nodata = int(np.iinfo(dtype).max)
    if layout.write_labels:
        attrs = {"long_name": "class label", "nodata": nodata}
        _create(
            root,
            "0",
            layout.spatial_shape,
            _clip_chunks(layout),
            dtype,
            nodata,
            meta.VOLUME_AXES,
            attrs,
        )
    if layout.probabilities != "none":
        ome = meta.ome_probability_image_attrs(f"{name} probabilities", geometry)
        group = root.create_group("probabilities", attributes={"ome": ome})
        shape, chunks, prob_dtype, fill = _probability_spec(layout)
        attrs = {"long_name": "class probability", **(encoding or {})}
        _create(group, "0", shape, chunks, prob_dtype, fill, ["c", *meta.VOLUME_AXES], attrs)


def consolidate_store(target: Path) -> None:
    """Consolidated metadata lets xarray.open_zarr open the store in one read, without a warning.

    Call again after adding arrays (e.g. overview levels): readers that use the
    consolidated copy do not see arrays added after it. Zarr warns that consolidation is
    not in the v3 spec yet; readers that ignore it read the per-array metadata.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(target, zarr_format=3)
