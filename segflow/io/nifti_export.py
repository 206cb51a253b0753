"""Export a volume store's labels as a NIfTI mask that overlays its input exactly.

The mask is written in the store's voxel order (the input file's own (i, j, k) order;
nothing is reoriented) with the input's affine as sform and qform and the input's
sform/qform codes, so a viewer places every voxel where the input's voxel is. With
``reference`` (the input file), its header's spatial fields are copied verbatim
(quaternions, srows, codes, units), so even the float32 header bytes match.

The voxels are streamed to the file (gzip for ``.nii.gz``) one k-slab of store
chunks at a time: memory is one slab, never the whole volume. Label names go to
sidecars next to the mask: ``<name>.labels.json``, an ITK-SNAP label description
(``<name>.label_description.txt``) and a 3D Slicer colour table (``<name>.ctbl``).
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from segflow.errors import ConfigError, OutputError, ReaderError
from segflow.io.classes import ClassInfo
from segflow.io.cog import EXPORTABLE, display_colors
from segflow.io.export_common import open_exportable, prepare_target
from segflow.io.nib import (
    ImageFileError,
    NiftiHeader,
    NiftiImage,
    data_dtype,
    load,
    new_header,
    write_header,
)
from segflow.io.source import VolumeGeometry
from segflow.io.zarr_meta import UNCERTAINTY_NODATA
from segflow.io.zarr_sink import ZarrSink

NIFTI1_MAX_DIM = 32767  # dim[] is int16 in NIfTI-1; larger volumes need NIfTI-2
GZIP_LEVEL = 4
# header fields that place voxels in the world, copied from a reference header
SPATIAL_FIELDS = (
    "qform_code",
    "sform_code",
    "quatern_b",
    "quatern_c",
    "quatern_d",
    "qoffset_x",
    "qoffset_y",
    "qoffset_z",
    "srow_x",
    "srow_y",
    "srow_z",
    "xyzt_units",
)


@dataclass(frozen=True)
class NiftiExport:
    """What :func:`export_nifti` wrote."""

    path: Path
    sidecars: dict[str, Path] = field(default_factory=dict)  # "json", "itksnap", "slicer"


def export_nifti(
    store: str | os.PathLike[str] | ZarrSink,
    output: str | os.PathLike[str],
    *,
    reference: str | os.PathLike[str] | None = None,
    nodata_value: int | None = None,
    sidecars: bool = True,
    overwrite: bool = False,
    array: str = "labels",
) -> NiftiExport:
    """Write the labels of a complete volume store to ``output`` (.nii or .nii.gz).

    ``nodata_value`` replaces the store's nodata label (255 or 65535) in the mask, e.g.
    0 to merge it into the background; by default it is kept and named "nodata".
    ``array="uncertainty"`` writes the stored uncertainty instead: uint8, u / 254 the
    normalized entropy, 255 nodata (no slope, so nodata stays apart), no label sidecars.
    """
    if array not in EXPORTABLE:
        raise ConfigError(f"--array must be one of {', '.join(EXPORTABLE)}, got {array!r}")
    sink, geometry = open_exportable(
        store,
        VolumeGeometry,
        "is a raster output; export it with --to cog",
        need_labels=array == "labels",
    )
    if array == "uncertainty":
        return _export_uncertainty(sink, geometry, output, reference, nodata_value, overwrite)
    target = _checked_target(output, overwrite)
    dtype = sink.label_dtype
    if nodata_value is not None and not 0 <= nodata_value <= np.iinfo(dtype).max:
        raise ConfigError(f"nodata value {nodata_value} does not fit the {dtype} labels")

    header = nifti_header(sink.layout.spatial_shape, dtype, geometry, sink.layout.num_classes)
    if reference is not None:
        copy_spatial_header(header, reference, sink.layout.spatial_shape, geometry)
    _write_file(target, header, sink.labels_array(), sink.label_nodata, nodata_value)
    written: dict[str, Path] = {}
    if sidecars:
        nodata = sink.label_nodata if nodata_value is None else None
        written = write_label_sidecars(target, sink.classes, nodata)
    return NiftiExport(target, written)


def nifti_header(
    shape: Sequence[int], dtype: np.dtype[Any], geometry: VolumeGeometry, num_classes: int
) -> NiftiHeader:
    """A single-file header carrying the geometry's affine with its sform/qform codes."""
    header = new_header(
        shape,
        dtype,
        np.asarray(geometry.affine, dtype=np.float64),
        qform_code=geometry.qform_code,
        sform_code=geometry.sform_code,
        nifti2=max(shape) > NIFTI1_MAX_DIM,  # dim[] is int16 in NIfTI-1
    )
    header["cal_min"] = 0
    header["cal_max"] = max(num_classes - 1, 0)
    header["descrip"] = b"segflow labels"
    return header


def copy_spatial_header(
    header: NiftiHeader,
    reference: str | os.PathLike[str],
    shape: Sequence[int],
    geometry: VolumeGeometry,
) -> None:
    """Copy the reference's spatial header fields after checking it is the store's input grid."""
    path = Path(reference)
    try:
        ref = load(path)
    except (OSError, ValueError, ImageFileError) as exc:
        raise ReaderError(f"{path}: cannot be read as NIfTI ({exc})") from exc
    if not isinstance(ref, NiftiImage):
        raise ReaderError(f"{path}: is not a NIfTI image")
    ref_header: Any = ref.header
    if tuple(ref.shape[:3]) != tuple(shape):
        raise ConfigError(
            f"reference {path} has voxel grid {tuple(ref.shape[:3])}, the store has "
            f"{tuple(shape)}; pass the input the store was made from"
        )
    if not np.allclose(ref_header.get_best_affine(), np.asarray(geometry.affine), atol=1e-4):
        raise ConfigError(
            f"reference {path} has a different affine than the store; pass the input the "
            "store was made from"
        )
    for name in SPATIAL_FIELDS:
        header[name] = ref_header[name]
    pixdim = header["pixdim"].copy()
    pixdim[:4] = ref_header["pixdim"][:4]  # qfac and voxel sizes
    header["pixdim"] = pixdim


def _open(path: Path) -> IO[bytes]:
    if path.name.lower().endswith(".gz.part"):
        return gzip.open(path, "wb", compresslevel=GZIP_LEVEL)  # type: ignore[return-value]
    return path.open("wb")


def _export_uncertainty(
    sink: ZarrSink,
    geometry: VolumeGeometry,
    output: str | os.PathLike[str],
    reference: str | os.PathLike[str] | None,
    nodata_value: int | None,
    overwrite: bool,
) -> NiftiExport:
    array = sink.uncertainty_array()  # one line when the store holds none
    target = _checked_target(output, overwrite)
    if nodata_value is not None and not 0 <= nodata_value <= 255:
        raise ConfigError(f"nodata value {nodata_value} does not fit the uint8 uncertainty")
    shape = sink.layout.spatial_shape
    header = nifti_header(shape, np.dtype(np.uint8), geometry, 255)  # cal_max 254
    header["descrip"] = b"segflow uncertainty: H/ln(K) = value/254, 255 nodata"
    if reference is not None:
        copy_spatial_header(header, reference, shape, geometry)
    _write_file(target, header, array, UNCERTAINTY_NODATA, nodata_value)
    return NiftiExport(target)


def _checked_target(output: str | os.PathLike[str], overwrite: bool) -> Path:
    target = Path(output).expanduser()
    if not target.name.lower().endswith((".nii", ".nii.gz")):
        raise ConfigError(f"{target} must end in .nii or .nii.gz")
    prepare_target(target, overwrite, ".nii.gz")
    return target


def _write_file(
    target: Path, header: NiftiHeader, array: Any, nodata: int, nodata_value: int | None
) -> None:
    """The header, then the voxels, into ``target.part``, renamed once complete."""
    part = target.with_name(target.name + ".part")
    try:
        with _open(part) as f:
            offset = write_header(header, f)
            f.write(b"\x00" * (offset - f.tell()))
            _write_voxels(f, array, header, nodata, nodata_value)
        os.replace(part, target)
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from exc


def _write_voxels(
    f: IO[bytes],
    array: Any,
    header: NiftiHeader,
    nodata: int,
    nodata_value: int | None,
) -> None:
    """NIfTI stores i fastest, then j, then k: one (I, J, ck) slab is one contiguous run."""
    disk = data_dtype(header)
    depth = array.shape[2]
    step = array.chunks[2]
    for k0 in range(0, depth, step):
        slab = np.asarray(array[:, :, k0 : min(k0 + step, depth)])
        if nodata_value is not None:
            slab = np.where(slab == nodata, slab.dtype.type(nodata_value), slab)
        f.write(slab.astype(disk, copy=False).tobytes(order="F"))


# --- sidecars ---------------------------------------------------------------------------------


def write_label_sidecars(
    mask: Path, classes: Sequence[ClassInfo], nodata: int | None
) -> dict[str, Path]:
    """JSON, ITK-SNAP and 3D Slicer label tables beside ``mask``; returns them by kind."""
    stem = mask.name
    for suffix in (".nii.gz", ".nii"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    folder = mask.parent
    colors = display_colors(classes)
    entries = [
        (v, c.name, rgb, 255) for v, (c, rgb) in enumerate(zip(classes, colors, strict=True))
    ]
    if nodata is not None:
        entries.append((nodata, "nodata", (0, 0, 0), 0))
    paths = {
        "json": folder / f"{stem}.labels.json",
        "itksnap": folder / f"{stem}.label_description.txt",
        "slicer": folder / f"{stem}.ctbl",
    }
    labels = [
        {"value": v, "name": name, "color": list(color), "nodata": alpha == 0}
        for v, name, color, alpha in entries
    ]
    paths["json"].write_text(
        json.dumps({"mask": mask.name, "labels": labels}, indent=2) + "\n", encoding="utf-8"
    )
    paths["itksnap"].write_text(itksnap_label_description(entries), encoding="utf-8")
    paths["slicer"].write_text(slicer_color_table(entries), encoding="utf-8")
    return paths


def itksnap_label_description(entries: Sequence[tuple[int, str, tuple[int, int, int], int]]) -> str:
    """ITK-SNAP's label description format: IDX R G B A VIS MSH "LABEL"."""
    lines = [
        "################################################",
        "# ITK-SnAP Label Description File (written by segflow)",
        "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
        "################################################",
    ]
    for value, name, (r, g, b), alpha in entries:
        visible = 1 if alpha else 0
        text = name.replace('"', "'")
        lines.append(
            f'{value:5d} {r:5d} {g:4d} {b:4d} {alpha / 255:8.2f} {visible:2d} {visible:2d}    "{text}"'
        )
    return "\n".join(lines) + "\n"


def slicer_color_table(entries: Sequence[tuple[int, str, tuple[int, int, int], int]]) -> str:
    """3D Slicer colour table (.ctbl): ``value name R G B A``, names without blanks."""
    lines = ["# Color table file written by segflow", f"# {len(entries)} values"]
    for value, name, (r, g, b), alpha in entries:
        lines.append(f"{value} {'_'.join(name.split()) or f'label_{value}'} {r} {g} {b} {alpha}")
    return "\n".join(lines) + "\n"
