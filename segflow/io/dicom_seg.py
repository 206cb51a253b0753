"""Export a volume store made from a DICOM series as a DICOM Segmentation (SEG) instance.

The SEG is built by highdicom from the source series' headers, so it references the
source series and each source instance, and copies the patient and study identifiers
from them (nothing is made up). Each non-background class becomes one segment with the
class name as label, the class colour as its recommended display colour, and the coded
concepts (category and type) its model declared, or generic Tissue ones
(:mod:`segflow.io.concepts`). The store must be on the series' own voxel grid (it is
when the series was its input): frame k of the mask is source slice k, at that slice's
position.

A binary SEG holds the labels; a fractional one (``fractional=True``) holds each class's
stored probability, scaled to 0..254 for a uint8 store (its own quantization, so each
stored value is one SEG value) or 0..255 for a float16 one.

highdicom needs the whole segmentation at once: one byte per voxel for a binary SEG (a
512 x 512 x 2000 series holds 500 MB here), four bytes per voxel and segment for a
fractional one; the store is read one chunk slab at a time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydantic import ValidationError
from pydicom.sr.codedict import codes

from segflow.errors import ConfigError, OutputError
from segflow.io.classes import ClassInfo
from segflow.io.cog import display_colors
from segflow.io.concepts import DEFAULT_CONCEPT, Code, SegmentConcept
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
    fractional: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write a complete volume store as a DICOM SEG at ``output``: binary from its labels,
    or with ``fractional`` from its stored class probabilities.

    ``source`` is the DICOM series the store was made from (folder, zip, one file of it
    or a list of files; ``series`` picks one by SeriesInstanceUID).
    """
    sink, geometry = open_exportable(
        store, VolumeGeometry, "is a raster output; DICOM SEG needs a volume store"
    )
    target = Path(output).expanduser()
    if not target.name.lower().endswith(".dcm"):
        raise ConfigError(f"{target} must end in .dcm")
    if fractional and sink.probabilities_path is None:
        raise ConfigError(
            f"{sink.path} holds no probabilities for a fractional SEG; run with "
            "--probabilities uint8 (or float16), or export a binary SEG"
        )
    descriptions = segment_descriptions(sink.classes, sink.attrs)
    prepare_target(target, overwrite, ".dcm")
    series_source = DicomSeriesSource(source, series=series)
    check_same_grid(sink, geometry, series_source)
    headers = series_source.read_headers()
    frame_of = frame_order(series_source, len(headers))
    pixels: npt.NDArray[Any]
    if fractional:
        pixels = source_ordered_probabilities(sink, series_source, frame_of)
        kind: dict[str, Any] = {
            "segmentation_type": hd.seg.SegmentationTypeValues.FRACTIONAL,
            "fractional_type": hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
            "max_fractional_value": fractional_scale(sink),
        }
    else:
        pixels = source_ordered_mask(sink, series_source, frame_of)
        kind = {"segmentation_type": hd.seg.SegmentationTypeValues.BINARY}
    segmentation = hd.seg.Segmentation(
        source_images=headers,
        pixel_array=pixels,
        segment_descriptions=descriptions,
        **kind,
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


def frame_order(series: DicomSeriesSource, files: int) -> list[int]:
    """The SEG frame of each slice ``k`` along the normal.

    Single-frame series: frame n is the n-th header (slice order). A multi-frame
    object: frame n is the object's own frame n, wherever it sits along the normal.
    """
    return [
        s.frame if files == 1 and s.frame is not None else k for k, s in enumerate(series.slices)
    ]


def source_ordered_mask(
    sink: ZarrSink, series: DicomSeriesSource, frame_of: Sequence[int]
) -> npt.NDArray[np.integer[Any]]:
    """Labels as ``(frames, rows, columns)`` in the source images' order; nodata -> 0."""
    labels = sink.labels_array()
    columns, rows, depth = series.spatial_shape
    mask = np.zeros((depth, rows, columns), dtype=sink.label_dtype)
    step = sink.layout.chunk_shape[2]
    for k0 in range(0, depth, step):
        slab = np.asarray(labels[:, :, k0 : min(k0 + step, depth)])
        slab = np.where(slab == sink.label_nodata, 0, slab)
        for offset in range(slab.shape[2]):
            mask[frame_of[k0 + offset]] = slab[:, :, offset].T  # (i, j) -> (rows, columns)
    return mask


def source_ordered_probabilities(
    sink: ZarrSink, series: DicomSeriesSource, frame_of: Sequence[int]
) -> npt.NDArray[np.float32]:
    """Probabilities of the classes after the background as ``(frames, rows, columns,
    segments)`` float32 in [0, 1], in the source images' order; nodata -> 0."""
    columns, rows, depth = series.spatial_shape
    segments = len(sink.classes) - 1
    out = np.zeros((depth, rows, columns, segments), dtype=np.float32)
    step = sink.layout.chunk_shape[2]
    for k0 in range(0, depth, step):
        region = (slice(None), slice(None), slice(k0, min(k0 + step, depth)))
        slab = np.nan_to_num(sink.read_probabilities(region)[1:], nan=0.0)
        np.clip(slab, 0.0, 1.0, out=slab)  # float16 sums may round a hair above 1
        for offset in range(slab.shape[3]):
            # (segments, i, j) -> (rows, columns, segments)
            out[frame_of[k0 + offset]] = slab[..., offset].T
    return out


def fractional_scale(sink: ZarrSink) -> int:
    """The SEG's maximum fractional value: a uint8 store's own 254 steps (each stored
    value becomes exactly one SEG value), else the full 8 bits."""
    return 254 if str(sink.layout.probabilities) == "uint8" else 255


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
    concepts = recorded_concepts(attrs)
    return [
        hd.seg.SegmentDescription(
            segment_number=value,
            segment_label=info.name[:64] or f"class {value}",
            segmented_property_category=_coded(concepts.get(info.name, DEFAULT_CONCEPT).category),
            segmented_property_type=_coded(concepts.get(info.name, DEFAULT_CONCEPT).type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*colors[value]),
        )
        for value, info in enumerate(classes)
        if value > 0
    ]


def recorded_concepts(attrs: dict[str, Any]) -> dict[str, SegmentConcept]:
    """The coded concepts per class name the model declared, as the store recorded them."""
    model = attrs.get("model")
    recorded = model.get("concepts") if isinstance(model, dict) else None
    if not recorded:
        return {}
    try:
        return {str(name): SegmentConcept.model_validate(c) for name, c in recorded.items()}
    except (ValidationError, AttributeError) as exc:
        raise ConfigError(
            f"the store's recorded coded concepts are malformed ({' '.join(str(exc).split())[:160]}); "
            "re-run with a model whose concepts are valid"
        ) from None


def _coded(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=code.code, scheme_designator=code.scheme, meaning=code.meaning)


def _model_name(attrs: dict[str, Any]) -> str:
    model = attrs.get("model") if isinstance(attrs.get("model"), dict) else {}
    path = model.get("path") if model else None
    if path:
        return Path(str(path)).name[:64]
    arch = model.get("arch") if model else None
    return str(arch or "segflow model")[:64]
