"""The DICOM series reader against SimpleITK, on synthetic and real series.

Every series is written with pydicom (tests/io/dicom_fixtures.py) with random file names
and InstanceNumber counting backwards, so only ImagePositionPatient gives the right order.
"""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import ComprehensiveSRStorage, RTStructureSetStorage

from segflow.errors import ConfigError, ReaderError
from segflow.io import dicom as dicom_module
from segflow.io.dicom import DicomSeriesSource, list_series, series_inputs
from segflow.io.dicom_paths import is_dicom_folder
from segflow.io.open import open_source
from tests.io.dicom_fixtures import (
    SeriesSpec,
    coded_volume,
    non_image_dataset,
    oriented,
    rotation,
    write_scout,
    write_series,
    write_zip,
)

ORIENTATIONS = ("axial", "sagittal", "coronal", "oblique")
ALL = (slice(None),) * 3


def sitk_series(folder: Path, uid: str = "") -> sitk.Image:
    """The series as SimpleITK (GDCM) reads it: its own slice sorting."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), uid))
    return reader.Execute()


def sitk_ijk(image: sitk.Image) -> npt.NDArray[Any]:
    """SimpleITK's array (k, j, i) in segflow's voxel order (i, j, k)."""
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)


def sitk_affine_ras(image: sitk.Image) -> npt.NDArray[np.float64]:
    """origin, spacing and direction (LPS) as the RAS affine NIfTI converters write."""
    lps = np.eye(4)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    lps[:3, :3] = direction @ np.diag(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def assert_matches_sitk(source: DicomSeriesSource, image: sitk.Image) -> None:
    np.testing.assert_array_equal(source.read(ALL).data[0], sitk_ijk(image))
    np.testing.assert_allclose(source.geometry.affine, sitk_affine_ras(image), atol=1e-6)


def one_line_error(error: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


@pytest.fixture
def spec() -> SeriesSpec:
    return SeriesSpec(coded_volume((9, 7, 6)), oriented("axial", (0.7, 0.8, 2.5)), intercept=-1024)


# -- synthetic series: geometry and values as SimpleITK reads them -----------------


@pytest.mark.parametrize("name", ORIENTATIONS)
def test_series_in_any_orientation_reads_as_simpleitk_does(tmp_path, name):
    volume = coded_volume((9, 7, 6))
    spec = SeriesSpec(volume, oriented(name, (0.7, 0.8, 2.5)), intercept=-1024)
    write_series(tmp_path / "s", spec)
    source = open_source(tmp_path / "s")
    assert isinstance(source, DicomSeriesSource)
    assert source.spatial_shape == (9, 7, 6)
    assert_matches_sitk(source, sitk_series(tmp_path / "s"))
    # slice k is where the geometry puts plane k: the order came from the positions
    np.testing.assert_array_equal(source.read(ALL).data[0], volume)
    np.testing.assert_allclose(source.positions, [spec.geometry.position(k) for k in range(6)])


def test_rescale_slope_and_intercept_give_float_modality_values(tmp_path, spec):
    scaled = replace(spec, volume=spec.volume / 2, slope=0.5, intercept=-512.25)
    write_series(tmp_path / "s", scaled)
    source = DicomSeriesSource(tmp_path / "s")
    assert source.dtype == np.float32
    np.testing.assert_allclose(source.read(ALL).data[0], sitk_ijk(sitk_series(tmp_path / "s")))
    np.testing.assert_allclose(source.read(ALL).data[0], scaled.volume, atol=0.5)


def test_integer_intercept_keeps_integer_values(tmp_path, spec):
    write_series(tmp_path / "s", spec)
    source = DicomSeriesSource(tmp_path / "s")
    assert source.dtype.kind == "i"
    np.testing.assert_array_equal(source.read(ALL).data[0], spec.volume)


def test_zip_list_of_files_and_one_file_read_the_same_series(tmp_path, spec):
    files = write_series(tmp_path / "s", spec)
    expected = DicomSeriesSource(tmp_path / "s").read(ALL).data
    zipped = open_source(write_zip(tmp_path / "s.zip", files))
    listed = DicomSeriesSource(files)
    single = open_source(files[3])  # a file without suffix, recognised by its preamble
    for source in (zipped, listed, single):
        assert isinstance(source, DicomSeriesSource)
        np.testing.assert_array_equal(source.read(ALL).data, expected)
    assert zipped.checksum() == listed.checksum() == single.checksum()


def test_non_dicom_files_non_image_objects_and_scouts_are_skipped_with_a_note(tmp_path, spec):
    folder = tmp_path / "s"
    write_series(folder, spec)
    (folder / "README.txt").write_text("exported from PACS")
    non_image_dataset(spec, "SR", ComprehensiveSRStorage).save_as(
        folder / "report", enforce_file_format=True
    )
    non_image_dataset(spec, "RTSTRUCT", RTStructureSetStorage).save_as(
        folder / "contours", enforce_file_format=True
    )
    write_scout(folder, spec)  # same series, at a right angle: must not mix orientations
    source = DicomSeriesSource(folder)
    assert source.spatial_shape == (9, 7, 6)
    notes = " | ".join(source.skipped)
    assert "README.txt: not a DICOM file" in notes
    assert "report: non-image object (SR)" in notes
    assert "contours: non-image object (RTSTRUCT)" in notes
    assert "SCOUT: localizer" in notes


def test_a_second_series_is_listed_and_can_be_chosen(tmp_path, spec):
    folder = tmp_path / "study"
    write_series(folder, spec)
    other = replace(spec, series_uid="1.2.3.4.5", description="other", series_number=2)
    other_files = write_series(folder, replace(other, volume=spec.volume[:, :, :4]), seed=1)
    with pytest.raises(ReaderError) as error:
        open_source(folder)
    text = one_line_error(error)
    assert "holds 2 image series" in text and "1.2.3.4.5" in text and spec.series_uid in text
    assert DicomSeriesSource(folder, series="1.2.3.4.5").spatial_shape == (9, 7, 4)
    assert open_source(folder, series=spec.series_uid).spatial_shape == (9, 7, 6)
    assert open_source(other_files[0]).spatial_shape == (9, 7, 4)  # one file picks its series
    assert_matches_sitk(
        DicomSeriesSource(folder, series="1.2.3.4.5"), sitk_series(folder, "1.2.3.4.5")
    )
    found = list_series(folder)
    assert sorted(len(s.slices) for s in found.series.values()) == [4, 6]
    inputs, _ = series_inputs(folder)  # one input per series, for a batch
    shapes = {name: open_source(path).spatial_shape for name, path in inputs}
    assert shapes[f"SEGFLOW-TEST-1_CT2_{'1.2.3.4.5'[-8:]}"] == (9, 7, 4)
    assert sorted(shapes.values()) == [(9, 7, 4), (9, 7, 6)]


def test_compressed_series_reads_like_the_uncompressed_one(tmp_path, spec):
    write_series(tmp_path / "raw", spec)
    write_series(tmp_path / "rle", replace(spec, compressed=True))
    assert pydicom.dcmread(
        next((tmp_path / "rle").iterdir())
    ).file_meta.TransferSyntaxUID.is_compressed
    np.testing.assert_array_equal(
        DicomSeriesSource(tmp_path / "rle").read(ALL).data,
        DicomSeriesSource(tmp_path / "raw").read(ALL).data,
    )


def test_multi_frame_enhanced_ct_reads_like_its_single_frame_series(tmp_path, spec):
    spec = replace(spec, geometry=oriented("oblique", (0.7, 0.8, 2.5)))
    files = write_series(tmp_path / "single", spec)
    multi = hd.legacy.LegacyConvertedEnhancedCTImage(
        [pydicom.dcmread(f) for f in reversed(files)],
        series_instance_uid=hd.UID(),
        series_number=9,
        sop_instance_uid=hd.UID(),
        instance_number=1,
    )
    (tmp_path / "multi").mkdir()
    multi.save_as(tmp_path / "multi" / "enhanced.dcm")
    single = DicomSeriesSource(tmp_path / "single")
    source = open_source(tmp_path / "multi" / "enhanced.dcm")
    assert isinstance(source, DicomSeriesSource)
    np.testing.assert_array_equal(source.read(ALL).data, single.read(ALL).data)
    np.testing.assert_allclose(source.geometry.affine, single.geometry.affine, atol=1e-6)


# -- laziness and the Source contract ------------------------------------------------


def test_a_region_decodes_only_its_slices(tmp_path, spec, monkeypatch):
    write_series(tmp_path / "s", spec)
    source = DicomSeriesSource(tmp_path / "s")
    decoded: list[int | None] = []
    real = dicom_module.pixel_array

    def counting(src: Any, **kwargs: Any) -> Any:
        decoded.append(kwargs.get("index"))
        return real(src, **kwargs)

    monkeypatch.setattr(dicom_module, "pixel_array", counting)
    part = source.read((slice(2, 5), slice(1, 3), slice(3, 5)))
    assert len(decoded) == 2
    np.testing.assert_array_equal(part.data[0], spec.volume[2:5, 1:3, 3:5])
    assert part.valid.all()


def test_source_pickles_and_reads_from_a_zip_in_another_copy(tmp_path, spec):
    files = write_series(tmp_path / "s", spec)
    source = DicomSeriesSource(write_zip(tmp_path / "s.zip", files))
    copy = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(copy.read(ALL).data, source.read(ALL).data)
    assert source.geometry.orientation == ("L", "P", "S")  # LPS series: i -> L, j -> P
    assert source.block_shape == (9, 7, 1)


def test_options_of_other_readers_are_refused(tmp_path, spec):
    write_series(tmp_path / "s", spec)
    with pytest.raises(ConfigError, match="bands= applies to rasters"):
        open_source(tmp_path / "s", bands=[1])
    with pytest.raises(ConfigError, match="volume="):
        open_source(tmp_path / "s", volume=0)


# -- series that are not one regular grid: one line each ----------------------------


def _with_positions(tmp_path: Path, spec: SeriesSpec, ks: list[float]) -> Path:
    """The series with slice k written at position(ks[k]) instead of position(k)."""
    folder = tmp_path / "bad"
    files = write_series(folder, spec)
    for path in files:
        ds = pydicom.dcmread(path)
        k = spec.volume.shape[2] - int(ds.InstanceNumber)  # fixtures count backwards
        ds.ImagePositionPatient = [f"{v:.6f}" for v in spec.geometry.position(ks[k])]
        ds.save_as(path)
    return folder


@pytest.mark.parametrize(
    ("ks", "expected"),
    [
        ([0, 1, 2, 3, 4, 4], "duplicate slice position"),
        ([0, 1, 2, 4, 5, 6], "1 missing slice(s)"),
        ([0, 1, 2, 3.4, 4, 5], "irregular slice spacing"),
    ],
)
def test_irregular_grids_are_refused_in_one_line(tmp_path, spec, ks, expected):
    folder = _with_positions(tmp_path, spec, ks)
    with pytest.raises(ReaderError) as error:
        open_source(folder)
    assert expected in one_line_error(error)


def test_gantry_tilt_is_refused_in_one_line(tmp_path, spec):
    g = spec.geometry
    tilted = replace(g, step=tuple(rotation((1, 0, 0), 15.0) @ np.asarray(g.step)))
    write_series(tmp_path / "s", replace(spec, geometry=tilted))
    with pytest.raises(ReaderError) as error:
        open_source(tmp_path / "s")
    assert "gantry tilt of 15.0 degrees" in one_line_error(error)


def test_mixed_orientations_are_refused_in_one_line(tmp_path, spec):
    folder = tmp_path / "s"
    files = write_series(folder, spec)
    ds = pydicom.dcmread(files[0])
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    ds.save_as(files[0])
    with pytest.raises(ReaderError) as error:
        open_source(folder)
    assert "mixed orientations" in one_line_error(error)


def test_a_folder_without_images_says_what_it_skipped(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(ReaderError) as error:
        open_source(tmp_path)
    assert "no DICOM image series found" in one_line_error(error)
    assert "notes.txt: not a DICOM file" in str(error.value)
    assert not is_dicom_folder(tmp_path)


def test_a_folder_of_slices_is_recognised_as_dicom(tmp_path, spec):
    write_series(tmp_path / "study" / "SE1", spec)
    assert is_dicom_folder(tmp_path / "study")
