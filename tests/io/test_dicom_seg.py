"""DICOM series through segflow.segment: the NIfTI mask and the DICOM SEG agree with SimpleITK.

A threshold model's mask, exported to NIfTI, must equal the threshold of the series as
SimpleITK reads it, with SimpleITK's origin, spacing and direction; the SEG must reference
the source series and put each frame on its source slice. The real sample volumes of
../shared/data/med are turned into series when present; synthetic ones always run.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import highdicom as hd
import nibabel as nib
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
import SimpleITK as sitk
import zarr

from segflow import segment
from segflow.errors import ConfigError
from segflow.io.dicom import DicomSeriesSource
from segflow.io.dicom_seg import export_dicom_seg
from segflow.io.nifti_export import export_nifti
from segflow.io.zarr_sink import ZarrSink
from segflow.models.files import LoadedModel
from segflow.models.meta import ModelMeta
from tests.conftest import pixel_model, threshold_model
from tests.io.dicom_fixtures import (
    SeriesSpec,
    coded_volume,
    geometry_from_ras,
    oriented,
    rotation,
    write_series,
    write_zip,
)
from tests.io.test_dicom import sitk_ijk, sitk_series

ALL = (slice(None),) * 3


def assert_same_geometry(mask: Path, series: sitk.Image) -> None:
    """The exported mask, read by SimpleITK, sits exactly where the series does."""
    image = sitk.ReadImage(str(mask))
    np.testing.assert_allclose(image.GetOrigin(), series.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.GetSpacing(), series.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(image.GetDirection(), series.GetDirection(), atol=1e-5)


def segment_and_export(series_input: Path, tmp_path: Path, threshold: float) -> npt.NDArray[Any]:
    """segflow.segment + NIfTI export; returns the mask in voxel order (i, j, k)."""
    result = segment(series_input, threshold_model(threshold), tmp_path / "out.zarr", device="cpu")
    assert result.status == "complete", result.error
    written = export_nifti(tmp_path / "out.zarr", tmp_path / "mask.nii.gz")
    return np.asarray(nib.load(written.path).dataobj)


@pytest.mark.parametrize("name", ["axial", "sagittal", "coronal", "oblique"])
def test_threshold_mask_equals_the_simpleitk_threshold(tmp_path, name):
    spec = SeriesSpec(coded_volume((21, 17, 7)), oriented(name, (0.7, 0.8, 2.5)), intercept=-1024)
    files = write_series(tmp_path / "s", spec)
    image = sitk_series(tmp_path / "s")
    mask = segment_and_export(write_zip(tmp_path / "s.zip", files), tmp_path, 250.0)
    np.testing.assert_array_equal(mask, (sitk_ijk(image) > 250).astype(np.uint8))
    assert_same_geometry(tmp_path / "mask.nii.gz", image)


# -- the real sample volumes as DICOM series -----------------------------------------


def _permuted(volume: npt.NDArray[Any], affine: npt.NDArray[Any], order: tuple[int, int, int]):
    """The same image with its voxel axes reordered (slices along another world axis)."""
    out = np.eye(4)
    out[:, :3] = affine[:, list(order)]
    out[:, 3] = affine[:, 3]
    return volume.transpose(order), out


def _real_series(path: Path, layout: str) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    image: Any = nib.load(path)
    volume = np.asarray(image.dataobj, dtype=np.float64)
    affine = np.asarray(image.affine, dtype=np.float64)
    if layout == "sagittal":
        return _permuted(volume, affine, (1, 2, 0))
    if layout == "coronal":
        return _permuted(volume, affine, (0, 2, 1))
    if layout == "oblique":
        turn = np.eye(4)
        turn[:3, :3] = rotation((1, 1, 0), 20.0)
        return volume, turn @ affine
    return volume, affine


REAL_CASES = [
    ("example_ct_sm.nii.gz", "CT", "axial", -1024.0, 0.0),
    ("example_ct_sm.nii.gz", "CT", "sagittal", -1024.0, 100.0),
    ("example_ct_sm.nii.gz", "CT", "oblique", -1024.0, 0.0),
    ("example_mr_sm.nii.gz", "MR", "axial", 0.0, 200.0),  # the MR is LPS already
    ("example_mr_sm.nii.gz", "MR", "coronal", 0.0, 200.0),
]


@pytest.mark.parametrize(("file", "modality", "layout", "intercept", "threshold"), REAL_CASES)
def test_real_volumes_as_series_segment_like_simpleitk(
    tmp_path, shared_file, file, modality, layout, intercept, threshold
):
    volume, affine = _real_series(shared_file(f"med/{file}"), layout)
    spec = SeriesSpec(volume, geometry_from_ras(affine), modality=modality, intercept=intercept)
    files = write_series(tmp_path / "series", spec)
    (tmp_path / "series" / "DICOMDIR.txt").write_text("not DICOM")
    image = sitk_series(tmp_path / "series")
    source = DicomSeriesSource(tmp_path / "series")
    np.testing.assert_array_equal(source.read(ALL).data[0], sitk_ijk(image))
    mask = segment_and_export(files[0], tmp_path, threshold)  # one file stands for its series
    np.testing.assert_array_equal(mask, (sitk_ijk(image) > threshold).astype(np.uint8))
    assert_same_geometry(tmp_path / "mask.nii.gz", image)


# -- DICOM SEG -------------------------------------------------------------------------


@pytest.fixture
def three_class_store(tmp_path: Path) -> tuple[Path, Path, npt.NDArray[Any]]:
    """A sagittal series, its 3-class store and the expected labels (i, j, k)."""
    volume = coded_volume((21, 17, 7))
    spec = SeriesSpec(volume, oriented("sagittal", (0.7, 0.8, 2.5)), intercept=-1024)
    write_series(tmp_path / "series", spec)
    # class 0 up to 200, class 1 up to 1000, class 2 above
    model = pixel_model([[0.0], [1.0], [2.0]], [0.0, -200.0, -1200.0], spatial_dims=3)
    store = tmp_path / "series.zarr"
    files = sorted((tmp_path / "series").iterdir())
    result = segment(files[0], model, store, device="cpu")
    assert result.status == "complete", result.error
    expected = np.digitize(volume, [200.5, 1000.5]).astype(np.uint8)
    return store, tmp_path / "series", expected


def test_seg_references_the_series_and_frames_equal_the_mask(three_class_store, tmp_path):
    store, folder, expected = three_class_store
    written = export_dicom_seg(store, tmp_path / "seg.dcm", source=folder)
    seg = hd.seg.segread(written)
    source = DicomSeriesSource(folder)
    first = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.series.uid
    for key in ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber"):
        assert seg[key].value == first[key].value
    labels = [seg.get_segment_description(n).SegmentLabel for n in seg.get_segment_numbers()]
    assert labels == ["class1", "class2"]
    uids = [s.sop_uid for s in source.slices]
    frames = seg.get_pixels_by_source_instance(
        uids, combine_segments=True, assert_missing_frames_are_empty=True
    )
    np.testing.assert_array_equal(frames, expected.transpose(2, 1, 0))  # (k, rows, columns)


def test_seg_frame_positions_are_the_source_slice_positions(three_class_store, tmp_path):
    store, folder, _ = three_class_store
    seg = hd.seg.segread(export_dicom_seg(store, tmp_path / "seg.dcm", source=folder))
    source = DicomSeriesSource(folder)
    position_of = {s.sop_uid: s.position for s in source.slices}
    assert seg.NumberOfFrames > 0
    for frame in seg.PerFrameFunctionalGroupsSequence:
        ref = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose([float(v) for v in position], position_of[ref], atol=1e-4)


def test_seg_of_a_multi_frame_source_puts_frames_on_their_planes(tmp_path):
    volume = coded_volume((21, 17, 7))
    files = write_series(
        tmp_path / "single", SeriesSpec(volume, oriented("coronal", (0.7, 0.8, 2.5)))
    )
    multi = hd.legacy.LegacyConvertedEnhancedCTImage(
        [pydicom.dcmread(f) for f in files],  # shuffled: frame order is not slice order
        series_instance_uid=hd.UID(),
        series_number=4,
        sop_instance_uid=hd.UID(),
        instance_number=1,
    )
    (tmp_path / "multi").mkdir()
    multi.save_as(tmp_path / "multi" / "ct.dcm")
    result = segment(
        tmp_path / "multi" / "ct.dcm", threshold_model(250.0), tmp_path / "o.zarr", device="cpu"
    )
    assert result.status == "complete", result.error
    seg = hd.seg.segread(
        export_dicom_seg(tmp_path / "o.zarr", tmp_path / "seg.dcm", source=tmp_path / "multi")
    )
    source = DicomSeriesSource(tmp_path / "multi")
    expected = (volume > 250).astype(np.uint8)
    frames = seg.get_pixels_by_source_frame(
        multi.SOPInstanceUID,
        [s.frame + 1 for s in source.slices],
        combine_segments=True,
        assert_missing_frames_are_empty=True,  # highdicom omits empty frames
    )
    np.testing.assert_array_equal(frames, expected.transpose(2, 1, 0))


def test_seg_refuses_a_series_the_store_was_not_made_from(three_class_store, tmp_path):
    store, _, _ = three_class_store
    other = SeriesSpec(coded_volume((21, 17, 5)), oriented("axial", (0.7, 0.8, 2.5)))
    write_series(tmp_path / "other", replace(other, series_uid=hd.UID()))
    with pytest.raises(ConfigError, match="pass the series the store was made from"):
        export_dicom_seg(store, tmp_path / "seg.dcm", source=tmp_path / "other")
    assert not (tmp_path / "seg.dcm").exists()


# -- fractional SEG and coded concepts ---------------------------------------------------


def _soft_three_class_model(concepts: dict[str, Any] | None = None) -> LoadedModel:
    """Three classes with the boundaries at 200 and 1000, soft over ~100 HU, so the
    probabilities take many values between 0 and 1."""
    model = pixel_model([[0.0], [0.01], [0.02]], [0.0, -2.0, -12.0], spatial_dims=3)
    if concepts is None:
        return model
    meta = ModelMeta.model_validate({**model.meta.model_dump(), "concepts": concepts})
    return replace(model, meta=meta)


def _series_store(
    tmp_path: Path, model: LoadedModel, probabilities: str = "none"
) -> tuple[Path, Path]:
    volume = coded_volume((21, 17, 7))
    spec = SeriesSpec(volume, oriented("oblique", (0.7, 0.8, 2.5)), intercept=-1024)
    files = write_series(tmp_path / "series", spec)
    store = tmp_path / "series.zarr"
    result = segment(files[0], model, store, device="cpu", probabilities=probabilities)
    assert result.status == "complete", result.error
    return store, tmp_path / "series"


@pytest.mark.parametrize(("mode", "scale"), [("uint8", 254), ("float16", 255)])
def test_fractional_seg_holds_the_stored_probabilities(tmp_path, mode, scale):
    store, folder = _series_store(tmp_path, _soft_three_class_model(), probabilities=mode)
    seg = hd.seg.segread(
        export_dicom_seg(store, tmp_path / "seg.dcm", source=folder, fractional=True)
    )
    assert seg.SegmentationType == "FRACTIONAL"
    assert seg.SegmentationFractionalType == "PROBABILITY"
    assert seg.MaximumFractionalValue == scale
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == DicomSeriesSource(folder).series.uid
    stored = ZarrSink.open(store).read_probabilities()[1:]  # (segments, i, j, k), classes 1 and 2
    inside = stored[(stored > 0.05) & (stored < 0.95)]
    assert inside.size > 50  # the test means something only with real fractions
    uids = [s.sop_uid for s in DicomSeriesSource(folder).slices]
    frames = seg.get_pixels_by_source_instance(
        uids, combine_segments=False, rescale_fractional=True, assert_missing_frames_are_empty=True
    )
    expected = stored.transpose(3, 2, 1, 0)  # (k, rows, columns, segments)
    # a uint8 store's 254 steps are the SEG's own: exact; float16 is quantized to 8 bits
    atol = 1e-6 if mode == "uint8" else 0.5 / 255 + 1e-6
    np.testing.assert_allclose(frames, expected, rtol=0, atol=atol)


def test_fractional_seg_of_a_store_without_probabilities_fails_in_one_line(tmp_path):
    store, folder = _series_store(tmp_path, _soft_three_class_model())
    with pytest.raises(ConfigError, match=r"holds no probabilities.*--probabilities uint8"):
        export_dicom_seg(store, tmp_path / "seg.dcm", source=folder, fractional=True)
    assert not (tmp_path / "seg.dcm").exists()


def _concept(seg: Any, number: int) -> tuple[tuple[str, str, str], tuple[str, str, str]]:
    description = seg.get_segment_description(number)
    category = description.SegmentedPropertyCategoryCodeSequence[0]
    kind = description.SegmentedPropertyTypeCodeSequence[0]
    return (
        (category.CodingSchemeDesignator, category.CodeValue, category.CodeMeaning),
        (kind.CodingSchemeDesignator, kind.CodeValue, kind.CodeMeaning),
    )


def test_seg_segments_carry_the_models_coded_concepts(tmp_path):
    concepts = {
        "class1": {"category": "AnatomicalStructure", "type": "Liver"},
        "class2": {
            "category": {
                "scheme": "SCT",
                "code": "49755003",
                "meaning": "Morphologically Altered Structure",
            },
            "type": {"scheme": "SCT", "code": "108369006", "meaning": "Neoplasm"},
        },
    }
    store, folder = _series_store(tmp_path, _soft_three_class_model(concepts))
    seg = hd.seg.segread(export_dicom_seg(store, tmp_path / "seg.dcm", source=folder))
    anatomy = ("SCT", "91723000", "Anatomical Structure")
    assert _concept(seg, 1) == (anatomy, ("SCT", "10200004", "Liver"))
    assert _concept(seg, 2) == (
        ("SCT", "49755003", "Morphologically Altered Structure"),
        ("SCT", "108369006", "Neoplasm"),
    )


def test_seg_segments_without_concepts_are_generic_tissue(three_class_store, tmp_path):
    store, folder, _ = three_class_store
    seg = hd.seg.segread(export_dicom_seg(store, tmp_path / "seg.dcm", source=folder))
    tissue = ("SCT", "85756007", "Tissue")
    assert _concept(seg, 1) == (tissue, tissue)
    assert _concept(seg, 2) == (tissue, tissue)


def test_a_store_with_mangled_concepts_fails_in_one_line(tmp_path):
    concepts = {"class1": {"category": "AnatomicalStructure", "type": "Liver"}}
    store, folder = _series_store(tmp_path, _soft_three_class_model(concepts))
    group = zarr.open_group(store, mode="r+")
    info = dict(group.attrs["segflow"])
    info["provenance"]["model"]["concepts"]["class1"]["type"]["code"] = (
        "10200005"  # bad check digit
    )
    group.attrs["segflow"] = info
    with pytest.raises(ConfigError, match="recorded coded concepts are malformed"):
        export_dicom_seg(store, tmp_path / "seg.dcm", source=folder)
    assert not (tmp_path / "seg.dcm").exists()
