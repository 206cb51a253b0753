"""Clean a finished label store by its connected components, into a new store.

Operations (applied together, decided on the components of the input store):

- keep the largest (or the ``keep_top`` largest) components of given classes; the
  others become ``fill`` (class 0 unless told);
- drop components smaller than ``min_size`` (pixels / voxels, or m², ha, km², mm³,
  mL) of every class but ``fill``: they become ``fill``;
- ``sieve``: components smaller than the threshold merge into their largest
  neighbour, as GDAL's sieve (``rasterio.features.sieve``) does on the whole array
  (volumes: the same rule in 3-D), see :mod:`segflow.outputs.sieve`. With keep-largest / min-size as well, the
  sieve comes first and those are decided on the sieved components (through a
  temporary store beside the output).

Ties in size go to the component whose first pixel comes first in raster order, so
the result does not depend on the chunking. Nodata stays nodata (for the sieve it is
rasterio's ``mask``: no polygon, no neighbour). The new store keeps the geometry,
classes and colours; its provenance names the source store and the operations, and
its summary holds per-class component statistics.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from segflow.errors import ConfigError, OutputError
from segflow.io.classes import ClassInfo
from segflow.io.source import RasterGeometry, VolumeGeometry
from segflow.io.stores import StorePath
from segflow.io.zarr_sink import OutputLayout, ZarrSink
from segflow.options import did_you_mean, parse_list
from segflow.outputs.components import Components, ComponentTable, Connectivity, find_components
from segflow.outputs.sieve import plan_sieve
from segflow.outputs.stats import planar_pixel_area_m2, voxel_volume_mm3

# size units: square metres per unit (rasters), cubic millimetres per unit (volumes)
AREA_UNITS = {"m2": 1.0, "m²": 1.0, "ha": 1e4, "km2": 1e6, "km²": 1e6}
VOLUME_UNITS = {"mm3": 1.0, "mm³": 1.0, "ml": 1e3, "cm3": 1e3, "cm³": 1e3, "l": 1e6}
COUNT_UNITS = ("", "px", "pixels", "vx", "voxels")
LARGEST_SHOWN = 10  # component sizes listed per class in the summary


# --- parsing ---------------------------------------------------------------------------------


def resolve_class(token: str | int, classes: Sequence[ClassInfo]) -> int:
    """A class given by value (``"3"``) or by name (any case); ConfigError with a hint."""
    text = str(token).strip()
    if text.isdigit():
        value = int(text)
        if value >= len(classes):
            raise ConfigError(f"class {value} does not exist (the store has 0..{len(classes) - 1})")
        return value
    names = [c.name for c in classes]
    folded = [n.lower() for n in names]
    if text.lower() in folded:
        return folded.index(text.lower())
    raise ConfigError(
        f"unknown class '{text}' (the store has {', '.join(names)}){did_you_mean(text, names)}"
    )


def resolve_classes(
    tokens: str | Sequence[str | int] | None, classes: Sequence[ClassInfo]
) -> tuple[int, ...]:
    """``"kidney,liver"`` or ``[1, "liver"]`` as sorted class values."""
    if tokens is None:
        return ()
    items = parse_list(tokens) if isinstance(tokens, str) else [str(t) for t in tokens]
    return tuple(sorted({resolve_class(t, classes) for t in items or []}))


@dataclass(frozen=True)
class MinSize:
    """A minimum component size: a number and its unit ("" for pixels / voxels)."""

    value: float
    unit: str = ""

    def in_pixels(self, pixel_size: float | None, kind: str, option: str = "--min-size") -> float:
        """The threshold in pixels; ``pixel_size`` is m² per pixel or mm³ per voxel."""
        if self.unit in COUNT_UNITS:
            return self.value
        units = AREA_UNITS if kind == "raster" else VOLUME_UNITS
        if self.unit not in units:
            allowed = ", ".join(["px" if kind == "raster" else "voxels", *units])
            raise ConfigError(
                f"{option} unit '{self.unit}' does not fit a {kind} store (use {allowed})"
            )
        if pixel_size is None:
            raise ConfigError(
                f"{option} in {self.unit} needs a projected CRS; this store has none, give pixels"
            )
        return self.value * units[self.unit] / pixel_size

    def describe(self) -> dict[str, Any]:
        return {"value": self.value, "unit": self.unit or "px"}


def parse_min_size(
    value: str | float | MinSize | None, option: str = "--min-size"
) -> MinSize | None:
    """``100``, ``"100px"``, ``"0.5 ha"``, ``"2mL"`` as a positive :class:`MinSize`."""
    if value is None or isinstance(value, MinSize):
        size = value
    elif isinstance(value, int | float):
        size = MinSize(float(value))
    else:
        match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([^\s0-9.].*?)?\s*", str(value))
        try:
            size = MinSize(float(match.group(1)), (match.group(2) or "").lower()) if match else None
        except ValueError:
            size = None
        if size is None:
            raise ConfigError(f"{option} takes a size like 100, 100px, 0.5ha or 2mL, got '{value}'")
    if size is not None and size.unit in COUNT_UNITS:
        size = MinSize(size.value)  # pixels and voxels are the default unit
    if size is not None and not (math.isfinite(size.value) and size.value > 0):
        raise ConfigError(f"{option} must be greater than 0, got {size.value:g}")
    return size


@dataclass(frozen=True)
class Operations:
    """What :func:`postprocess` does, with classes resolved to values."""

    keep_largest: tuple[int, ...] = ()
    keep_top: int = 1
    min_size: MinSize | None = None
    fill: int = 0
    connectivity: Connectivity = Connectivity.FULL
    sieve: MinSize | None = None

    @property
    def drops(self) -> bool:
        """Whether keep-largest or min-size turn components into ``fill``."""
        return bool(self.keep_largest) or self.min_size is not None

    def labelled_classes(self, num_classes: int) -> tuple[int, ...]:
        """The classes whose components matter: kept ones, and all but fill for min-size."""
        if self.min_size is not None:
            return tuple(v for v in range(num_classes) if v != self.fill)
        return self.keep_largest

    def describe(self) -> dict[str, Any]:
        return {
            "keep_largest": list(self.keep_largest),
            "keep_top": self.keep_top if self.keep_largest else None,
            "min_size": None if self.min_size is None else self.min_size.describe(),
            "sieve": None if self.sieve is None else self.sieve.describe(),
            "fill": self.fill,
            "connectivity": self.connectivity.value,
        }


def parse_operations(
    classes: Sequence[ClassInfo],
    *,
    keep_largest: str | Sequence[str | int] | None = None,
    keep_top: int = 1,
    min_size: str | float | MinSize | None = None,
    fill: str | int = 0,
    connectivity: str | Connectivity = Connectivity.FULL,
    sieve: str | float | MinSize | None = None,
) -> Operations:
    keep = resolve_classes(keep_largest, classes)
    fill_value = resolve_class(fill, classes)
    if keep_top < 1:
        raise ConfigError(f"--keep-top must be at least 1, got {keep_top}")
    if fill_value in keep:
        raise ConfigError(f"--fill class {fill_value} cannot also be in --keep-largest")
    size = parse_min_size(min_size)
    sieve_size = parse_min_size(sieve, "--sieve")
    if not keep and size is None and sieve_size is None:
        raise ConfigError("nothing to do: give --keep-largest, --min-size and/or --sieve")
    conn = Connectivity.parse(connectivity)
    return Operations(keep, keep_top, size, fill_value, conn, sieve_size)


# --- running ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostprocessResult:
    path: StorePath
    summary: dict[str, Any]


def postprocess(
    store: str | os.PathLike[str] | ZarrSink,
    output: str | os.PathLike[str],
    *,
    keep_largest: str | Sequence[str | int] | None = None,
    keep_top: int = 1,
    min_size: str | float | MinSize | None = None,
    sieve: str | float | MinSize | None = None,
    fill: str | int = 0,
    connectivity: str | Connectivity = Connectivity.FULL,
    overwrite: bool = False,
) -> PostprocessResult:
    """Apply the operations to a complete store and write the result as a new store.

    ``sieve``: components smaller than this (pixels, or m², ha, km²; voxels or mL for
    volumes) merge into their largest neighbour like ``rasterio.features.sieve`` with
    ``connectivity`` 8 (full) or 4 (face) and ``mask=labels != nodata``; volumes use
    the same rule with 26 or 6 neighbours.
    """
    source = ZarrSink.open_finished(store, purpose="post-processing")
    ops = parse_operations(
        source.classes,
        keep_largest=keep_largest,
        keep_top=keep_top,
        min_size=min_size,
        fill=fill,
        connectivity=connectivity,
        sieve=sieve,
    )
    if Path(output).expanduser().resolve() == source.path.resolve():
        raise OutputError(f"{output} is the input store; write the result to a new store")
    pixel_size = pixel_size_of(source)
    threshold = None if ops.min_size is None else ops.min_size.in_pixels(pixel_size, source.kind)
    sieve_pixels = None
    if ops.sieve is not None:
        sieve_pixels = ops.sieve.in_pixels(pixel_size, source.kind, "--sieve")
    target = _create_target(source, output, ops, overwrite)
    summary: dict[str, Any] = {
        "postprocess": ops.describe(),
        "source": str(source.path),
        "min_size_pixels": threshold,
        "sieve_pixels": sieve_pixels,
    }
    if sieve_pixels is None:
        summary["components"] = _drop_into(source, target, ops, threshold, pixel_size)
    elif not ops.drops:
        summary["sieve"] = _sieve_into(source, target, ops, sieve_pixels, pixel_size)
    else:  # sieve first, then keep-largest / min-size on the sieved components
        beside = target.path.parent if isinstance(target.path, Path) else None  # else local temp
        with tempfile.TemporaryDirectory(prefix=".sieved-", dir=beside) as tmp:
            middle = _create_target(source, Path(tmp) / "sieved.zarr", ops, False)
            summary["sieve"] = _sieve_into(source, middle, ops, sieve_pixels, pixel_size)
            middle.finalize({})
            sieved = ZarrSink.open_finished(middle.path)
            summary["components"] = _drop_into(sieved, target, ops, threshold, pixel_size)
    target.finalize(summary)
    return PostprocessResult(target.path, summary)


def _drop_into(
    source: ZarrSink,
    target: ZarrSink,
    ops: Operations,
    threshold: float | None,
    pixel_size: float | None,
) -> list[dict[str, Any]]:
    """Keep-largest / min-size from ``source`` into ``target``; per-class statistics."""
    components = find_components(
        source,
        classes=ops.labelled_classes(source.layout.num_classes),
        connectivity=ops.connectivity,
    )
    drop = components_to_drop(components.table, ops, threshold)
    _write_mapped(components, target, np.where(drop, ops.fill, -1))
    return component_summary(components, drop, pixel_size)


def _sieve_into(
    source: ZarrSink,
    target: ZarrSink,
    ops: Operations,
    threshold: float,
    pixel_size: float | None,
) -> dict[str, Any]:
    """The sieve from ``source`` into ``target``; counts and per-class statistics."""
    components = find_components(source, connectivity=ops.connectivity)
    plan = plan_sieve(components, threshold)
    _write_mapped(components, target, plan.becomes)
    # a chain of biggest neighbours can end on the component's own class: merged, unchanged
    own = np.concatenate(([-1], components.table.classes))
    changed = (plan.becomes >= 0) & (plan.becomes != own)
    pixels = int(components.table.sizes[changed[1:]].sum())
    rows = component_summary(components, changed, pixel_size)
    return {**plan.describe(), "pixels_changed": pixels, "classes": rows}


def components_to_drop(
    table: ComponentTable, ops: Operations, threshold: float | None
) -> npt.NDArray[np.bool_]:
    """Per global id (index 0 = none): True where the component becomes ``fill``."""
    drop = np.zeros(len(table) + 1, dtype=bool)
    for value in ops.keep_largest:
        ids = table.of_class(value)
        # largest first; a stable sort keeps raster order among equal sizes
        ranked = ids[np.argsort(-table.sizes[ids - 1], kind="stable")]
        drop[ranked[ops.keep_top :]] = True
    if threshold is not None:
        small = (table.sizes < threshold) & (table.classes != ops.fill)
        drop[1:] |= small
    return drop


def pixel_size_of(sink: ZarrSink) -> float | None:
    """m² per pixel (projected rasters), mm³ per voxel (volumes), None otherwise."""
    geometry = sink.geometry
    if isinstance(geometry, VolumeGeometry):
        return voxel_volume_mm3(geometry.affine)
    assert isinstance(geometry, RasterGeometry)
    if geometry.crs_wkt is None:
        return None
    import pyproj

    try:
        crs = pyproj.CRS.from_wkt(geometry.crs_wkt)
    except pyproj.exceptions.CRSError:
        return None
    return None if crs.is_geographic else planar_pixel_area_m2(geometry.transform, crs)


def component_summary(
    components: Components, drop: npt.NDArray[np.bool_], pixel_size: float | None
) -> list[dict[str, Any]]:
    """Per labelled class: components before and after, pixels removed, largest kept sizes."""
    table = components.table
    volume = components.sink.kind == "volume"
    names = components.sink.classes
    rows = []
    for value in components.classes:
        ids = table.of_class(value)
        sizes = table.sizes[ids - 1]
        kept = np.sort(sizes[~drop[ids]])[::-1]
        row: dict[str, Any] = {
            "value": value,
            "name": names[value].name,
            "components": int(ids.size),
            "kept": int(kept.size),
            "removed": int(ids.size - kept.size),
            "pixels_removed": int(sizes.sum() - kept.sum()),
            "largest": [int(s) for s in kept[:LARGEST_SHOWN]],
        }
        if pixel_size is not None:
            scale = pixel_size / (1e3 if volume else 1.0)  # mL per voxel or m² per pixel
            key = "largest_ml" if volume else "largest_m2"
            row[key] = [float(s) * scale for s in kept[:LARGEST_SHOWN]]
        rows.append(row)
    return rows


def _create_target(
    source: ZarrSink, output: str | os.PathLike[str], ops: Operations, overwrite: bool
) -> ZarrSink:
    layout = OutputLayout(
        source.layout.spatial_shape,
        source.layout.chunk_shape,
        source.layout.num_classes,
        zarr_format=source.layout.zarr_format,  # a cleaned store opens where its source did
    )
    steps = ops.describe()
    provenance = {
        **{k: v for k, v in source.attrs.items() if k in ("input", "model")},
        "postprocess": {
            "source": str(source.path),
            "source_fingerprint": source.fingerprint,
            **steps,
        },
        "source_provenance": source.attrs,
    }
    blob = json.dumps([source.fingerprint, steps], sort_keys=True).encode()
    fingerprint = hashlib.sha256(blob).hexdigest()
    return ZarrSink.create(
        output,
        layout,
        source.geometry,
        source.classes,
        provenance,
        fingerprint,
        overwrite=overwrite,
    )


def _write_mapped(components: Components, target: ZarrSink, becomes: npt.NDArray[np.int64]) -> None:
    """Each chunk with the pixels of component ``i`` set to class ``becomes[i]`` (-1: kept)."""
    for index in components.chunk_indices():
        labels, ids = components.read_chunk(index)
        mapped = becomes[ids]
        cleaned = np.where(mapped >= 0, mapped, labels).astype(target.label_dtype, copy=False)
        target.write_chunk(index, cleaned, None)
