"""Compressed DICOM series read as their uncompressed twins (issue 16).

Each series is written uncompressed with pydicom, then re-encoded file by file: RLE,
JPEG-LS and JPEG 2000 with pydicom's encoders (pyjpegls, pylibjpeg-openjpeg), JPEG
Baseline with Pillow. Lossless syntaxes must read back exactly, lossy ones within the
error their encoder allows; geometry never changes. Decoding goes through pydicom's
pixel-data plugins (pylibjpeg-libjpeg, -openjpeg, pyjpegls), slice by slice.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import (
    JPEG2000,
    UID,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from segflow.errors import ReaderError
from segflow.io.dicom import DicomSeriesSource
from segflow.io.open import open_source
from tests.io.dicom_fixtures import (
    SeriesSpec,
    coded_volume,
    compress_series,
    jpeg_baseline_series,
    oriented,
    write_series,
)
from tests.io.test_dicom import assert_matches_sitk, sitk_series

ALL = (slice(None),) * 3
SHAPE = (40, 33, 5)  # OpenJPEG wants planes of some size for its default resolution levels


def needs_encoder(syntax: UID) -> None:
    encoder = get_encoder(syntax)
    if not encoder.is_available:
        pytest.skip(f"no {syntax.name} encoder: {encoder.missing_dependencies}")


@pytest.fixture
def twin(tmp_path: Path) -> tuple[list[Path], DicomSeriesSource]:
    """An oblique CT series with intercept -1024, uncompressed, and its source."""
    spec = SeriesSpec(coded_volume(SHAPE), oriented("oblique", (0.7, 0.8, 2.5)), intercept=-1024)
    files = write_series(tmp_path / "raw", spec)
    return files, DicomSeriesSource(tmp_path / "raw")


def abs_error(source: DicomSeriesSource, raw: DicomSeriesSource) -> npt.NDArray[np.int64]:
    """Per-voxel absolute difference of two series' modality values."""
    got, want = (s.read(ALL).data.astype(np.int64) for s in (source, raw))
    error: npt.NDArray[np.int64] = np.abs(got - want)
    return error


def transfer_syntax(folder: Path) -> UID:
    return UID(pydicom.dcmread(next(folder.iterdir())).file_meta.TransferSyntaxUID)


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_a_lossless_series_reads_exactly_as_its_uncompressed_twin(tmp_path, twin, syntax):
    needs_encoder(syntax)
    files, raw = twin
    compress_series(files, tmp_path / "packed", syntax)
    assert transfer_syntax(tmp_path / "packed") == syntax
    source = open_source(tmp_path / "packed")
    assert isinstance(source, DicomSeriesSource)
    assert source.dtype == raw.dtype and source.spatial_shape == raw.spatial_shape
    np.testing.assert_array_equal(source.read(ALL).data, raw.read(ALL).data)
    assert source.geometry == raw.geometry
    # GDCM (in SimpleITK) decodes them too, and agrees on values and placement
    assert_matches_sitk(source, sitk_series(tmp_path / "packed"))


@pytest.mark.parametrize(
    ("syntax", "encoding", "max_error", "mean_error"),
    [
        (JPEGLSNearLossless, {"jls_error": 3}, 3, 2.0),  # NEAR bounds every sample's error
        (JPEG2000, {"j2k_cr": [8]}, 30, 3.0),  # 8:1 rate: no bound per sample, small on average
    ],
)
def test_a_lossy_series_reads_within_its_tolerance(
    tmp_path, twin, syntax, encoding, max_error, mean_error
):
    needs_encoder(syntax)
    files, raw = twin
    compress_series(files, tmp_path / "lossy", syntax, **encoding)
    assert transfer_syntax(tmp_path / "lossy") == syntax
    source = DicomSeriesSource(tmp_path / "lossy")
    error = abs_error(source, raw)
    print(f"{syntax.name}: max error {error.max()}, mean {error.mean():.2f}")
    assert error.any()  # really lossy: the tolerance is what is tested
    assert error.max() <= max_error and error.mean() <= mean_error
    assert source.dtype == raw.dtype and source.geometry == raw.geometry


def test_a_jpeg_baseline_series_reads_within_its_tolerance(tmp_path):
    """8-bit MR (JPEG Baseline holds 8-bit samples only), smooth as images are."""
    i, j, k = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    volume = (60 + 2.0 * i + 2.0 * j + 10.0 * k).astype(np.float64)  # 60..242, stored 10..192
    spec = SeriesSpec(
        volume, oriented("sagittal", (0.9, 0.9, 3.0)), modality="MR", intercept=50, bits=8
    )
    files = write_series(tmp_path / "raw", spec)
    jpeg_baseline_series(files, tmp_path / "jpeg", quality=95)
    assert transfer_syntax(tmp_path / "jpeg") == JPEGBaseline8Bit
    raw, source = DicomSeriesSource(tmp_path / "raw"), DicomSeriesSource(tmp_path / "jpeg")
    np.testing.assert_array_equal(raw.read(ALL).data[0], volume)
    error = abs_error(source, raw)
    print(f"JPEG Baseline: max error {error.max()}, mean {error.mean():.2f}")
    assert error.any() and error.max() <= 4 and error.mean() <= 0.5
    assert source.dtype == raw.dtype and source.geometry == raw.geometry


def test_a_compressed_multi_frame_object_reads_as_its_single_frame_series(tmp_path, twin):
    """An enhanced CT whose frames are JPEG-LS compressed: frame by frame, exactly."""
    needs_encoder(JPEGLSLossless)
    files, raw = twin
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        [pydicom.dcmread(f) for f in files],
        series_instance_uid=hd.UID(),
        series_number=7,
        sop_instance_uid=hd.UID(),
        instance_number=1,
    )
    enhanced.compress(JPEGLSLossless)
    (tmp_path / "multi").mkdir()
    enhanced.save_as(tmp_path / "multi" / "enhanced.dcm", enforce_file_format=True)
    assert transfer_syntax(tmp_path / "multi") == JPEGLSLossless
    source = open_source(tmp_path / "multi" / "enhanced.dcm")
    assert isinstance(source, DicomSeriesSource)
    np.testing.assert_array_equal(source.read(ALL).data, raw.read(ALL).data)
    part = (slice(3, 20), slice(2, 9), slice(1, 4))  # a region decodes only its frames
    np.testing.assert_array_equal(source.read(part).data, raw.read(part).data)
    np.testing.assert_allclose(source.geometry.affine, raw.geometry.affine, atol=1e-6)


def test_undecodable_pixel_data_is_refused_in_one_line(tmp_path, twin):
    files, _ = twin
    packed = compress_series(files, tmp_path / "packed", RLELossless)
    ds = pydicom.dcmread(packed[0])
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3] + b"\x00" * 8  # a cut-off transfer
    ds.save_as(packed[0])
    source = DicomSeriesSource(tmp_path / "packed")  # headers are fine: it opens
    with pytest.raises(ReaderError) as error:
        source.read(ALL)
    text = str(error.value)
    assert "\n" not in text and "cannot decode its pixel data" in text
    assert packed[0].name in text
