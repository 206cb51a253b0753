"""NIfTI export: the mask overlays its input exactly (RAS, LPS, LIA, oblique; sform/qform
codes kept), dtypes, label sidecars, streaming across chunks, reference headers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segflow import segment
from segflow.errors import ConfigError, OutputError
from segflow.io.nifti import NiftiSource
from segflow.io.nifti_export import export_nifti, itksnap_label_description
from segflow.io.source import RasterGeometry, VolumeGeometry
from segflow.io.zarr_sink import OutputLayout, ZarrSink
from segflow.models.meta import ClassInfo
from tests.conftest import threshold_model
from tests.io.ome import as_written_before_zyx

SHAPE = (23, 19, 14)
THRESHOLD = 100.0


def rotation(ax: float, az: float) -> np.ndarray:
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ rx


def affine_of(m: np.ndarray, origin) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = m
    out[:3, 3] = origin
    return out


AFFINES = {
    "RAS": affine_of(np.diag([0.9, 1.1, 2.5]), [-10.0, 20.5, -30.25]),
    "LPS": affine_of(np.diag([-0.9, -1.1, 2.5]), [10.0, 20.0, -31.0]),
    "LIA": affine_of(np.array([[-1.0, 0, 0], [0, 0, 1.2], [0, -2.0, 0]]), [127.5, -109.3, 145.1]),
    "oblique": affine_of(rotation(0.3, -0.5) @ np.diag([1.0, 1.2, -2.0]), [5.5, -7.25, 12.0]),
}


def volume_data(seed: int = 0) -> np.ndarray:
    """Values encode position, so any flip or transpose in the mask shows."""
    i, j, k = np.indices(SHAPE)
    rng = np.random.default_rng(seed)
    return (i * 7 + j * 3 + k * 11 + rng.normal(0, 5, SHAPE)).astype(np.float32)


def write_input(path: Path, data: np.ndarray, affine: np.ndarray, sform: int, qform: int) -> Path:
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.set_sform(affine, code=sform)
    img.set_qform(affine, code=qform)
    nib.save(img, path)
    return path


def assert_overlays(mask_path: Path, input_path: Path) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    mask, image = nib.load(mask_path), nib.load(input_path)
    assert mask.shape == image.shape
    np.testing.assert_array_equal(mask.affine, image.affine)  # bit for bit
    mh, ih = mask.header, image.header
    for getter in ("get_sform", "get_qform"):
        m_matrix, m_code = getattr(mh, getter)(coded=True)
        i_matrix, i_code = getattr(ih, getter)(coded=True)
        assert int(m_code) == int(i_code)
        if int(i_code):
            np.testing.assert_allclose(m_matrix, i_matrix, atol=1e-5)
    if int(ih["sform_code"]):
        np.testing.assert_array_equal(mh.get_sform(), ih.get_sform())  # float32 srows, bit for bit
    np.testing.assert_allclose(mh.get_zooms(), ih.get_zooms(), rtol=1e-6)
    assert nib.aff2axcodes(mask.affine) == nib.aff2axcodes(image.affine)
    return mask, image


@pytest.mark.parametrize("name", list(AFFINES))
@pytest.mark.parametrize(
    ("sform", "qform"), [(1, 1), (2, 1), (0, 1)], ids=["s1q1", "s2q1", "qform-only"]
)
def test_mask_overlays_the_input_exactly(tmp_path, name, sform, qform):
    data = volume_data()
    path = write_input(tmp_path / "in.nii.gz", data, AFFINES[name], sform, qform)
    out = tmp_path / "o.zarr"
    segment(path, threshold_model(THRESHOLD), out, device="cpu", patch_size=16, chunk_size=8)
    result = export_nifti(out, tmp_path / "mask.nii.gz")
    mask, image = assert_overlays(result.path, path)
    assert mask.get_data_dtype() == np.uint8
    expected = (np.asarray(image.dataobj) > THRESHOLD).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(mask.dataobj), expected)


@pytest.mark.parametrize("name", ["LPS", "oblique"])
def test_stores_with_axes_i_j_k_export_exactly(tmp_path, name):
    data = volume_data()
    path = write_input(tmp_path / "in.nii.gz", data, AFFINES[name], 2, 1)
    out = tmp_path / "o.zarr"
    segment(path, threshold_model(THRESHOLD), out, device="cpu", patch_size=16, chunk_size=8)
    as_written_before_zyx(out)  # as written before the axes were named z, y, x
    mask, image = assert_overlays(export_nifti(out, tmp_path / "mask.nii.gz").path, path)
    expected = (np.asarray(image.dataobj) > THRESHOLD).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(mask.dataobj), expected)


def test_reference_header_copies_the_spatial_fields_verbatim(tmp_path):
    path = write_input(tmp_path / "in.nii", volume_data(), AFFINES["oblique"], 2, 1)
    out = tmp_path / "o.zarr"
    segment(path, threshold_model(THRESHOLD), out, device="cpu", patch_size=16)
    mask = export_nifti(out, tmp_path / "m.nii", reference=path).path
    mh, ih = nib.load(mask).header, nib.load(path).header
    for field in (
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
    ):
        assert mh[field].tobytes() == ih[field].tobytes(), field
    assert mh["pixdim"][:4].tobytes() == ih["pixdim"][:4].tobytes()
    other = write_input(tmp_path / "other.nii", volume_data(), AFFINES["RAS"], 1, 1)
    with pytest.raises(ConfigError, match="different affine"):
        export_nifti(out, tmp_path / "m2.nii", reference=other)


def volume_store(
    tmp_path: Path, labels: np.ndarray, classes, chunk=(8, 8, 4), geometry=None
) -> ZarrSink:
    if geometry is None:
        path = write_input(
            tmp_path / "ref.nii", np.zeros(labels.shape, np.float32), AFFINES["LIA"], 1, 1
        )
        geometry = NiftiSource(path).geometry
    sink = ZarrSink.create(
        tmp_path / "v.zarr",
        OutputLayout(labels.shape, chunk, len(classes)),
        geometry,
        classes,
        {},
        "fp",
    )
    for index in np.ndindex(*sink.chunk_grid_shape):
        region = sink.chunk_region(index)
        sink.write_chunk(index, labels[region], None)
    sink.finalize({})
    return sink


def test_uint16_above_255_labels_streamed_over_many_k_slabs(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 300, SHAPE).astype(np.uint16)
    labels[0, 0, :] = 65535
    classes = [ClassInfo(name=f"structure {i}") for i in range(300)]
    sink = volume_store(tmp_path, labels, classes, chunk=(10, 7, 3))
    for name in ("m.nii", "m.nii.gz"):
        mask = nib.load(export_nifti(sink, tmp_path / name).path)
        assert mask.get_data_dtype() == np.uint16
        np.testing.assert_array_equal(np.asarray(mask.dataobj), labels)
        np.testing.assert_array_equal(mask.affine, np.asarray(sink.geometry.affine))


def test_label_sidecars_name_every_class_and_nodata(tmp_path):
    labels = np.zeros(SHAPE, np.uint8)
    labels[3:9, 4:8, 2:6] = 2
    labels[0, 0, 0] = 255
    classes = [
        ClassInfo(name="background"),
        ClassInfo(name="liver", color=(200, 80, 60)),
        ClassInfo(name='left "kidney"', color=(10, 200, 30)),
    ]
    result = export_nifti(volume_store(tmp_path, labels, classes), tmp_path / "seg.nii.gz")
    assert set(result.sidecars) == {"json", "itksnap", "slicer"}
    table = json.loads(result.sidecars["json"].read_text())
    assert [e["name"] for e in table["labels"]] == [
        "background",
        "liver",
        'left "kidney"',
        "nodata",
    ]
    assert table["labels"][-1] == {
        "value": 255,
        "name": "nodata",
        "color": [0, 0, 0],
        "nodata": True,
    }
    rows = [
        line.split()
        for line in result.sidecars["itksnap"].read_text().splitlines()
        if not line.startswith("#")
    ]
    assert [int(r[0]) for r in rows] == [0, 1, 2, 255]
    assert rows[1][:4] == ["1", "200", "80", "60"] and rows[1][7] == '"liver"'
    assert rows[3][4:6] == ["0.00", "0"]  # nodata: transparent, hidden
    slicer = result.sidecars["slicer"].read_text().splitlines()
    assert '2 left_"kidney" 10 200 30 255' in slicer
    assert result.sidecars["json"].name == "seg.labels.json"


def test_nodata_value_option_and_itksnap_quoting(tmp_path):
    labels = np.ones(SHAPE, np.uint8)
    labels[:2] = 255
    classes = [ClassInfo(name="bg"), ClassInfo(name="lesion")]
    result = export_nifti(
        volume_store(tmp_path, labels, classes), tmp_path / "m.nii.gz", nodata_value=0
    )
    mask = np.asarray(nib.load(result.path).dataobj)
    assert mask[:2].max() == 0 and mask[2:].min() == 1
    assert "nodata" not in result.sidecars["itksnap"].read_text()
    assert "\"a 'b'\"" in itksnap_label_description([(1, 'a "b"', (1, 2, 3), 255)])


def test_huge_axis_uses_nifti2(tmp_path):
    labels = np.zeros((40000, 2, 1), np.uint8)
    labels[123, 1, 0] = 1
    classes = [ClassInfo(name="a"), ClassInfo(name="b")]
    geometry = VolumeGeometry(
        affine=tuple(tuple(row) for row in AFFINES["RAS"].tolist()),
        sform_code=1,
        qform_code=1,
        orientation=("R", "A", "S"),
        zooms=(0.9, 1.1, 2.5),
    )
    sink = volume_store(tmp_path, labels, classes, chunk=(40000, 2, 1), geometry=geometry)
    img = nib.load(export_nifti(sink, tmp_path / "long.nii").path)
    assert isinstance(img, nib.Nifti2Image)
    assert np.asarray(img.dataobj)[123, 1, 0] == 1


def test_refusals(tmp_path):
    raster = ZarrSink.create(
        tmp_path / "r.zarr",
        OutputLayout((4, 4), (4, 4), 2),
        RasterGeometry(crs_wkt=None, transform=(1, 0, 0, 0, -1, 0), georeferenced=False),  # type: ignore[arg-type]
        [ClassInfo(name="a"), ClassInfo(name="b")],
        {},
        "fp",
    )
    with pytest.raises(ConfigError, match="--to cog"):
        export_nifti(raster, tmp_path / "r.nii.gz")
    sink = volume_store(
        tmp_path, np.zeros(SHAPE, np.uint8), [ClassInfo(name="a"), ClassInfo(name="b")]
    )
    with pytest.raises(ConfigError, match=r"\.nii"):
        export_nifti(sink, tmp_path / "m.tif")
    export_nifti(sink, tmp_path / "m.nii.gz")
    with pytest.raises(OutputError, match="--overwrite"):
        export_nifti(sink, tmp_path / "m.nii.gz")
    export_nifti(sink, tmp_path / "m.nii.gz", overwrite=True)
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("name", "threshold"),
    [("med/example_mr_sm.nii.gz", 300.0), ("med/anatomical.nii", 600.0)],
    ids=["LPS-mr", "LAS-big-endian"],
)
def test_real_volumes_overlay_exactly(tmp_path, shared_file, name, threshold):
    path = shared_file(name)
    out = tmp_path / "o.zarr"
    segment(path, threshold_model(threshold), out, device="cpu", patch_size=32)
    mask, image = assert_overlays(export_nifti(out, tmp_path / "mask.nii.gz").path, path)
    expected = (np.asarray(image.dataobj) > threshold).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(mask.dataobj), expected)
