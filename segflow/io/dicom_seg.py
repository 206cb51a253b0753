"""Export a volume store made from a DICOM series as a DICOM Segmentation (SEG) instance.

The SEG is built by highdicom from the source series' headers, so it references the
source series and each source instance, and copies the patient and study identifiers
from them (nothing is made up). Each non-background class becomes one binary segment
with the class name as label and the class colour as its recommended display colour.
The store must be on the series' own voxel grid (it is when the series was its input):
frame k of the mask is source slice k, at that slice's position.

highdicom needs the whole mask at once: one byte per voxel (a 512 x 512 x 2000 series
holds 500 MB here); the labels are read from the store one chunk slab at a time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.sr.codedict import codes

from segflow.errors import ConfigError, OutputError
from segflow.io.classes import ClassInfo
from segflow.io.cog import display_colors
from segflow.io.dicom import DicomInput, DicomSeriesSource
from segflow.io.export_common import open_exportable, prepare_target
from segflow.io.source import VolumeGeometry
from segflow.io.zarr_sink import ZarrSink
from segflow.version import __version__

__all__ = ["export_dicom_seg"]

SEG_SERIES_OFFSET = 1000  # SEG series number = source series number + this


def export_dicom_seg(
    store: str | os.PathLike[str] | ZarrSink,
    output: str | os.PathLike[str],
    *,
    source: DicomInput,
    series: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the labels of a complete volume store as a binary DICOM SEG at ``output``.

    ``source`` is the DICOM series the store was made from (folder, zip, one file of it
    or a list of files; ``series`` picks one by SeriesInstanceUID).
    """
    sink, geometry = open_exportable(
        store, VolumeGeometry, "is a raster output; DICOM SEG needs a volume store"
    )
    target = Path(output).expanduser()
    if not target.name.lower().endswith(".dcm"):
        raise ConfigError(f"{target} must end in .dcm")
    prepare_target(target, overwrite, ".dcm")
    series_source = DicomSeriesSource(source, series=series)
    check_same_grid(sink, geometry, series_source)
    headers = series_source.read_headers()
    mask = source_ordered_mask(sink, series_source, len(headers))
    segmentation = hd.seg.Segmentation(
        source_images=headers,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(sink.classes, sink.attrs),
        series_instance_uid=hd.UID(),
        series_number=SEG_SERIES_OFFSET + (series_source.series.number or 0),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="segflow",
        manufacturer_model_name=_model_name(sink.attrs),
        software_versions=__version__,
        device_serial_number="",
        content_label="SEGFLOW",
        content_description="segflow labels",
    )
    part = target.with_name(target.name + ".part")
    try:
        segmentation.save_as(part)
        os.replace(part, target)
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from exc
    return target


def check_same_grid(sink: ZarrSink, geometry: VolumeGeometry, series: DicomSeriesSource) -> None:
    """The store must be on the series' voxel grid, or frames would land on wrong slices."""
    shape = tuple(sink.layout.spatial_shape)
    if shape != series.spatial_shape:
        raise ConfigError(
            f"{sink.path} has voxel grid {shape}, the series {series.series.uid} has "
            f"{series.spatial_shape}; pass the series the store was made from"
        )
    if not np.allclose(geometry.affine, series.geometry.affine, atol=1e-3):
        raise ConfigError(
            f"{sink.path} is placed differently from series {series.series.uid} (affines "
            "differ); pass the series the store was made from"
        )


def source_ordered_mask(
    sink: ZarrSink, series: DicomSeriesSource, files: int
) -> npt.NDArray[np.integer[Any]]:
    """Labels as ``(frames, rows, columns)`` in the source images' order; nodata -> 0.

    Single-frame series: frame n is the n-th header (slice order). A multi-frame
    object: frame n is the object's own frame n, wherever it sits along the normal.
    """
    labels = sink.labels_array()
    columns, rows, depth = series.spatial_shape
    mask = np.zeros((depth, rows, columns), dtype=sink.label_dtype)
    frame_of = [
        s.frame if files == 1 and s.frame is not None else k for k, s in enumerate(series.slices)
    ]
    step = sink.layout.chunk_shape[2]
    for k0 in range(0, depth, step):
        slab = np.asarray(labels[:, :, k0 : min(k0 + step, depth)])
        slab = np.where(slab == sink.label_nodata, 0, slab)
        for offset in range(slab.shape[2]):
            mask[frame_of[k0 + offset]] = slab[:, :, offset].T  # (i, j) -> (rows, columns)
    return mask


def segment_descriptions(
    classes: Sequence[ClassInfo], attrs: dict[str, Any]
) -> list[hd.seg.SegmentDescription]:
    """One segment per class after the background (class 0), numbered by label value."""
    if len(classes) < 2:
        raise ConfigError("the store has no class besides the background; nothing to segment")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=_model_name(attrs),
        family=codes.cid7162.ArtificialIntelligence,
        version=__version__,
    )
    colors = display_colors(classes)
    return [
        hd.seg.SegmentDescription(
            segment_number=value,
            segment_label=info.name[:64] or f"class {value}",
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*colors[value]),
        )
        for value, info in enumerate(classes)
        if value > 0
    ]


def _model_name(attrs: dict[str, Any]) -> str:
    model = attrs.get("model") if isinstance(attrs.get("model"), dict) else {}
    path = model.get("path") if model else None
    if path:
        return Path(str(path)).name[:64]
    arch = model.get("arch") if model else None
    return str(arch or "segflow model")[:64]
