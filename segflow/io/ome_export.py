"""A volume store as OME-Zarr 0.5 that OME-only viewers overlay correctly.

A segflow volume store keeps the labels in the input file's voxel order, so its own
readers (and the NIfTI export) reproduce the file exactly; its ``ome`` block can
then only describe files whose voxel axes already run along +x, +y, +z. OME-Zarr
0.5 has no negative scale and no rotation, so an LPS or LAS file would be shown
mirrored by a viewer that reads only OME metadata. This export writes what such a
viewer needs instead, chunk by chunk:

- the data turned (axes permuted and flipped, never resampled) to the closest
  ``z, y, x`` = superior, anterior, right (RAS+, nibabel's frame) order, so every
  scale is positive and ``scale * index + translation`` is the voxel centre's
  world coordinate in millimetres;
- the input image as the parent OME image (root ``0``), with the labels under
  ``labels/labels`` (``image-label.source`` pointing back at it), as OME 0.5 lays out
  labels;
- the exact voxel-to-world affine of the turned grid under ``segflow.affine_zyx``:
  for an oblique scan the OME scale and translation drop its rotation (a viewer shows
  it axis-aligned), and the affine says by how much.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from segflow.errors import ConfigError, OutputError
from segflow.io import zarr_meta as meta
from segflow.io.export_common import open_exportable
from segflow.io.lazy import as_dask
from segflow.io.nib import io_orientation
from segflow.io.open import open_source
from segflow.io.source import Source, VolumeGeometry
from segflow.io.zarr_sink import ZarrSink
from segflow.io.zarr_write import (
    StoreGroup,
    consolidate_store,
    create_array,
    make_dir,
    remove_store,
)

VIEWER_AXES = ("z", "y", "x")  # superior, anterior, right: RAS+ in OME's slowest-first order
LABELS_NAME = "labels"


@dataclass(frozen=True)
class Turn:
    """How the file's voxel axes become z, y, x: which file axis each one is, and flips."""

    axes: tuple[int, int, int]  # file voxel axis of z, y, x
    flips: tuple[bool, bool, bool]
    affine: npt.NDArray[np.float64]  # 4x4: (z, y, x) index -> RAS+ millimetres

    @property
    def scale(self) -> list[float]:
        return [float(math.hypot(*self.affine[:3, o])) for o in range(3)]

    @property
    def translation(self) -> list[float]:
        return [float(self.affine[2 - o, 3]) for o in range(3)]

    @property
    def residual_degrees(self) -> float:
        """The largest angle between a turned axis and its world axis (0 when aligned)."""
        cosines = [abs(self.affine[2 - o, o]) / self.scale[o] for o in range(3)]
        return max(math.degrees(math.acos(min(1.0, c))) for c in cosines)

    def apply(self, array: Any) -> Any:
        """``array`` (file voxel order, trailing axes) turned to z, y, x (works on dask)."""
        lead = array.ndim - 3
        turned = array.transpose(*range(lead), *(lead + a for a in self.axes))
        flips = tuple(slice(None, None, -1) if f else slice(None) for f in self.flips)
        return turned[(Ellipsis, *flips)]


def plan_turn(geometry: VolumeGeometry, shape: Sequence[int]) -> Turn:
    """The permutation and flips that bring the voxel axes closest to z, y, x (RAS+)."""
    affine = np.asarray(geometry.affine, dtype=np.float64)
    ornt = io_orientation(affine)  # per voxel axis: (world axis R/A/S, direction)
    axes: list[int] = []
    flips: list[bool] = []
    for world in (2, 1, 0):
        (voxel,) = np.nonzero(ornt[:, 0] == world)[0]
        axes.append(int(voxel))
        flips.append(bool(ornt[voxel, 1] < 0))
    index_map = np.zeros((4, 4))  # turned index -> file index
    index_map[3, 3] = 1.0
    for o, (v, f) in enumerate(zip(axes, flips, strict=True)):
        index_map[v, o] = -1.0 if f else 1.0
        index_map[v, 3] = shape[v] - 1 if f else 0
    return Turn(
        axes=(axes[0], axes[1], axes[2]),
        flips=(flips[0], flips[1], flips[2]),
        affine=affine @ index_map,
    )


def export_ome_zarr(
    store: str | os.PathLike[str] | ZarrSink,
    output: str | os.PathLike[str],
    *,
    image: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``output`` (an OME-Zarr 0.5 image with its labels); returns its path.

    ``image`` is the volume the store was made from (default: the input recorded in
    the store); it must have the store's shape and affine.
    """
    sink, geometry = open_exportable(
        store, VolumeGeometry, "is a raster output; export it with --to cog"
    )
    source = _parent_image(sink, geometry, image)
    target = Path(output).expanduser()
    if target.exists() and not overwrite:
        raise OutputError(f"{target} exists; pass --overwrite to replace it")
    if target.exists():
        remove_store(target)  # only a zarr store (or an empty folder) is replaced
    turn = plan_turn(geometry, sink.layout.spatial_shape)
    make_dir(target)
    try:
        _write(target, sink, source, turn)
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc}") from exc
    return target


def _parent_image(
    sink: ZarrSink, geometry: VolumeGeometry, image: str | os.PathLike[str] | None
) -> Source:
    recorded = sink.attrs.get("input", {})
    path = image or (recorded.get("path") if isinstance(recorded, dict) else None)
    if not path or not Path(path).exists():
        raise ConfigError(
            f"the image {sink.path} was made from is not at {path}; pass it with --input"
        )
    source = open_source(Path(path))
    if source.kind != "volume" or tuple(source.spatial_shape) != sink.layout.spatial_shape:
        raise ConfigError(
            f"{path} is not the volume {sink.path} was made from (shape "
            f"{tuple(source.spatial_shape)}, the store has {sink.layout.spatial_shape})"
        )
    other = source.geometry
    if not isinstance(other, VolumeGeometry) or not np.allclose(
        other.affine, geometry.affine, rtol=0, atol=1e-6
    ):
        raise ConfigError(f"{path} has another affine than {sink.path}; pass the right image")
    return source


def _write(target: Path, sink: ZarrSink, source: Source, turn: Turn) -> None:
    import zarr

    shape, chunk = sink.layout.spatial_shape, sink.layout.chunk_shape
    chunks = tuple(min(chunk[a], shape[a]) for a in turn.axes)
    root = zarr.create_group(target, zarr_format=3)
    root.attrs.update(_write_image(root, target.stem, source, turn, chunks))
    _write_labels(root, target.stem, sink, turn, chunks)
    consolidate_store(target)


def _space_axes() -> list[dict[str, Any]]:
    return [{"name": n, "type": "space", "unit": "millimeter"} for n in VIEWER_AXES]


def _write_image(
    root: StoreGroup, name: str, source: Source, turn: Turn, chunks: tuple[int, ...]
) -> dict[str, Any]:
    """The parent image at ``0`` ((c,) z, y, x); returns the root's attributes."""
    channels = source.channels
    image = turn.apply(as_dask(source, _file_chunks(turn, chunks)))
    lead: list[float] = [1.0] if channels > 1 else []
    axes = [meta.ome_channel_axis(), *_space_axes()] if channels > 1 else _space_axes()
    if channels == 1:
        image = image[0]
    stored_chunks = (*([channels] if channels > 1 else []), *chunks)
    _store(root, "0", image, stored_chunks, source.dtype, [str(a["name"]) for a in axes])
    dataset = meta.ome_dataset("0", [*lead, *turn.scale], [*(0.0 for _ in lead), *turn.translation])
    multiscale = meta.ome_multiscale(name, axes, [dataset])
    return {
        "ome": {"version": meta.OME_VERSION, "multiscales": [multiscale]},
        "segflow": _note(turn),
    }


def _write_labels(
    root: StoreGroup, name: str, sink: ZarrSink, turn: Turn, chunks: tuple[int, ...]
) -> None:
    """The labels at ``labels/labels/0``, an OME label image whose parent is the root."""
    import dask.array as da

    from_zarr: Any = da.from_zarr  # dask ships it without type hints
    ome = {"version": meta.OME_VERSION, "labels": [LABELS_NAME]}
    group = root.create_group(LABELS_NAME, attributes={"ome": ome})
    image_label = meta.ome_image_label(sink.classes, sink.label_nodata)
    image_label["source"] = {"image": "../../"}
    dataset = meta.ome_dataset("0", turn.scale, turn.translation)
    multiscale = meta.ome_multiscale(f"{name} labels", _space_axes(), [dataset])
    attrs = {"version": meta.OME_VERSION, "multiscales": [multiscale], "image-label": image_label}
    label_group = group.create_group(LABELS_NAME, attributes={"ome": attrs})
    labels = turn.apply(from_zarr(sink.labels_array()))
    nodata = sink.label_nodata
    _store(label_group, "0", labels, chunks, sink.label_dtype, VIEWER_AXES, fill=nodata)


def _file_chunks(turn: Turn, chunks: Sequence[int]) -> tuple[int, ...]:
    """Chunks in the file's voxel order that become ``chunks`` once turned."""
    order = [0, 0, 0]
    for o, a in enumerate(turn.axes):
        order[a] = chunks[o]
    return tuple(order)


def _store(
    group: StoreGroup,
    path: str,
    data: Any,
    chunks: tuple[int, ...],
    dtype: Any,
    dims: Sequence[str],
    *,
    fill: int | None = None,
) -> None:
    attrs = {} if fill is None else meta.volume_label_attrs(fill)
    array = create_array(
        group, path, tuple(data.shape), chunks, dtype, fill if fill is not None else 0, dims, attrs
    )
    # each target chunk is one task's whole write: the data is rechunked to the target's chunks
    data.rechunk(chunks).store(array, lock=False, compute=True)


def _note(turn: Turn) -> dict[str, Any]:
    """How the stored grid relates to the file's and to the world, exactly."""
    axes = zip(VIEWER_AXES, turn.axes, turn.flips, strict=True)
    return {
        "axes_from_file": {n: {"voxel_axis": a, "flipped": f} for n, a, f in axes},
        "affine_zyx": meta.jsonable(turn.affine),
        "frame": "RAS+ millimetres (nibabel); z, y, x = superior, anterior, right",
        "residual_rotation_degrees": turn.residual_degrees,
    }
