"""NiftiSource: conformance for each layout, then 4-D modes, geometry, bad files."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pytest

from segflow.errors import ConfigError, ReaderError
from segflow.io.nifti import NiftiSource
from segflow.io.source import Source, VolumeGeometry
from tests.io.conformance import (
    SourceConformance,
    coord_image,
    lia,
    load_image,
    lps,
    oblique,
    ras,
    write_nifti,
)

SHAPE = (23, 17, 11)  # i, j, k: odd, all different


def volumes(channels: int, dtype: str) -> npt.NDArray[Any]:
    """(i, j, k, t) coordinate image; t omitted when channels == 1."""
    data = np.moveaxis(coord_image(channels, SHAPE, dtype), 0, -1)
    return data[..., 0] if channels == 1 else data


class NiftiConformance(SourceConformance):
    name = "vol.nii"
    dtype = "int16"
    channels = 1
    affine: Callable[[], npt.NDArray[np.float64]] = staticmethod(ras)
    kwargs: dict[str, Any] = {}  # noqa: RUF012 - read only
    write_kwargs: dict[str, Any] = {}  # noqa: RUF012

    def data(self) -> npt.NDArray[Any]:
        return volumes(self.channels, self.dtype)

    def make_source(self, tmp_path: Path) -> Source:
        path = write_nifti(tmp_path / self.name, self.data(), self.affine(), **self.write_kwargs)
        return NiftiSource(path, **self.kwargs)

    def reference(self, source: Source) -> npt.NDArray[Any]:
        full = np.asanyarray(load_image(source.path).dataobj)  # nibabel's own full read
        if full.ndim == 3:
            return full[None]
        if self.kwargs.get("volumes_as_channels"):
            return np.moveaxis(full, -1, 0)
        return full[None, ..., self.kwargs["volume"]]


class TestInt16Nii(NiftiConformance):
    pass


class TestFloat32GzNaN(NiftiConformance):
    name, dtype, affine = "vol.nii.gz", "float32", staticmethod(lps)

    def data(self) -> npt.NDArray[Any]:
        data = super().data()
        data[:5, :, 3:] = np.nan
        return data


class TestFourDChosenVolume(NiftiConformance):
    channels, kwargs, affine = 3, {"volume": 1}, staticmethod(lia)


class TestFourDVolumesAsChannels(NiftiConformance):
    name, dtype, channels = "series.nii.gz", "float32", 3
    kwargs = {"volumes_as_channels": True, "nodata": 0.25}  # noqa: RUF012

    def data(self) -> npt.NDArray[Any]:
        data = super().data()
        data[:, :4, :2, :] = 0.25  # nodata in every volume
        data[10, 10, 5, 0] = 0.25  # in one volume only: still valid
        return data


class TestBigEndian(NiftiConformance):
    affine = staticmethod(oblique)
    write_kwargs = {"big_endian": True}  # noqa: RUF012


class TestScaledInt16(NiftiConformance):
    name, dtype = "scaled.nii.gz", "float32"
    write_kwargs = {"on_disk": "int16"}  # noqa: RUF012

    def data(self) -> npt.NDArray[Any]:
        return (super().data() * 10.0 - 5000.0).astype(np.float32)  # beyond int16: scaled


class TestUint8UserNodata(NiftiConformance):
    name, dtype, kwargs = "labels.nii.gz", "uint8", {"nodata": 0}


# -- values, dtypes, modes ---------------------------------------------------------


def _full(src: NiftiSource) -> npt.NDArray[Any]:
    return src.read(tuple(slice(0, n) for n in src.spatial_shape)).data


def test_axes_are_file_voxel_axes(tmp_path: Path) -> None:
    data = volumes(1, "int16")
    for name, affine in [("ras", ras()), ("lia", lia()), ("obl", oblique())]:
        src = NiftiSource(write_nifti(tmp_path / f"{name}.nii", data, affine))
        assert src.spatial_shape == SHAPE
        np.testing.assert_array_equal(_full(src)[0], data)  # nothing reoriented


def test_scaling_applied_and_dtype_is_scaled_dtype(tmp_path: Path) -> None:
    values = (volumes(1, "float32") * 10.0 - 5000.0).astype(np.float32)  # beyond int16
    path = write_nifti(tmp_path / "s.nii", values, ras(), on_disk="int16")
    img = load_image(path)
    slope = float(img.dataobj.slope)  # the loaded header has its scl_* reset; the proxy keeps them
    assert slope != 1.0 and img.dataobj.inter != 0.0  # the file really is scaled
    assert img.get_data_dtype() == np.int16
    src = NiftiSource(path)
    assert src.dtype.kind == "f" and src.dtype == np.asanyarray(img.dataobj).dtype  # nibabel's pick
    np.testing.assert_allclose(_full(src)[0], values, rtol=0, atol=slope)


def test_big_endian_comes_back_native(tmp_path: Path) -> None:
    data = volumes(1, "float32")
    path = write_nifti(tmp_path / "be.nii", data, ras(), big_endian=True)
    assert load_image(path).header.endianness == ">"
    src = NiftiSource(path)
    assert src.dtype == np.float32 and src.dtype.isnative
    out = _full(src)
    assert out.dtype.isnative
    np.testing.assert_array_equal(out[0], data)


def test_four_d_needs_a_choice(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "4d.nii.gz", volumes(3, "int16"), ras())
    with pytest.raises(ReaderError) as e:
        NiftiSource(path)
    message = str(e.value)
    assert "\n" not in message and str(path) in message
    assert "volume=" in message and "volumes_as_channels" in message
    with pytest.raises(ConfigError, match="not both"):
        NiftiSource(path, volume=0, volumes_as_channels=True)
    with pytest.raises(ReaderError, match="volume 3 does not exist"):
        NiftiSource(path, volume=3)


def test_four_d_modes_agree(tmp_path: Path) -> None:
    data = volumes(3, "int16")
    path = write_nifti(tmp_path / "4d.nii", data, ras())
    stacked = NiftiSource(path, volumes_as_channels=True)
    assert stacked.channels == 3 and stacked.volume is None
    assert stacked.band_names == ("volume_0", "volume_1", "volume_2")
    all_channels = _full(stacked)
    for t in range(3):
        one = NiftiSource(path, volume=t)
        assert one.channels == 1 and one.band_names == (f"volume_{t}",)
        np.testing.assert_array_equal(_full(one)[0], data[..., t])
        np.testing.assert_array_equal(all_channels[t], data[..., t])


def test_single_volume_four_d_reads_as_three_d(tmp_path: Path) -> None:
    data = volumes(1, "int16")[..., None]
    src = NiftiSource(write_nifti(tmp_path / "t1.nii", data, ras()))
    assert src.channels == 1 and src.spatial_shape == SHAPE
    np.testing.assert_array_equal(_full(src)[0], data[..., 0])


def test_volume_option_on_three_d(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "3d.nii", volumes(1, "int16"), ras())
    assert NiftiSource(path, volume=0).channels == 1
    assert NiftiSource(path, volumes_as_channels=True).channels == 1
    with pytest.raises(ReaderError, match="volume 1 does not exist"):
        NiftiSource(path, volume=1)


def test_two_d_file_is_one_voxel_thick(tmp_path: Path) -> None:
    data = coord_image(1, (23, 17), "int16")[0]
    src = NiftiSource(write_nifti(tmp_path / "slice.nii", data, ras()))
    assert src.spatial_shape == (23, 17, 1)
    np.testing.assert_array_equal(_full(src)[0, :, :, 0], data)
    np.testing.assert_array_equal(
        src.read((slice(3, 9), slice(2, 5), slice(0, 1))).data[0, :, :, 0], data[3:9, 2:5]
    )


def test_vector_image_refused(tmp_path: Path) -> None:
    data = np.zeros((*SHAPE, 1, 3), np.float32)
    path = write_nifti(tmp_path / "warp.nii.gz", data, ras())
    with pytest.raises(ReaderError, match="dimensions"):
        NiftiSource(path)


def test_user_nodata_impossible_for_dtype(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "u8.nii", volumes(1, "uint8"), ras())
    with pytest.raises(ConfigError, match="uint8"):
        NiftiSource(path, nodata=-5)


def test_nan_is_nodata_for_floats(tmp_path: Path) -> None:
    data = volumes(1, "float32")
    data[:, :, 0] = np.nan
    src = NiftiSource(write_nifti(tmp_path / "f.nii.gz", data, ras()))
    valid = src.read((slice(0, 23), slice(0, 17), slice(0, 11))).valid
    assert src.nodata is None
    assert not valid[:, :, 0].any() and valid[:, :, 1:].all()


# -- geometry ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make_affine", "codes"),
    [(ras, ("R", "A", "S")), (lps, ("L", "P", "S")), (lia, ("L", "I", "A")), (oblique, None)],
)
def test_affine_orientation_zooms(
    tmp_path: Path,
    make_affine: Callable[[], npt.NDArray[np.float64]],
    codes: tuple[str, str, str] | None,
) -> None:
    affine = make_affine()
    g = NiftiSource(write_nifti(tmp_path / "g.nii", volumes(1, "int16"), affine)).geometry
    assert isinstance(g, VolumeGeometry)
    np.testing.assert_array_equal(np.array(g.affine), affine.astype(np.float32))  # sform: float32
    assert g.sform_code == 2 and g.qform_code == 0
    assert g.orientation == (codes or tuple(nib.aff2axcodes(affine)))
    np.testing.assert_allclose(g.zooms, np.linalg.norm(affine[:3, :3], axis=0), rtol=1e-6)


def test_sform_wins_over_qform(tmp_path: Path) -> None:
    path = write_nifti(
        tmp_path / "both.nii", volumes(1, "int16"), lps(), sform_code=2, qform=ras(), qform_code=1
    )
    g = NiftiSource(path).geometry
    assert (g.sform_code, g.qform_code, g.orientation) == (2, 1, ("L", "P", "S"))
    np.testing.assert_allclose(np.array(g.affine), lps())


def test_qform_only(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "q.nii", volumes(1, "int16"), lia(), sform_code=0, qform_code=1)
    g = NiftiSource(path).geometry
    assert (g.sform_code, g.qform_code, g.orientation) == (0, 1, ("L", "I", "A"))
    np.testing.assert_allclose(np.array(g.affine), lia(), atol=1e-5)


def test_no_sform_no_qform_falls_back_to_pixdim(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "n.nii", volumes(1, "int16"), lps(), sform_code=0, qform_code=0)
    g = NiftiSource(path).geometry
    expected = load_image(path).header.get_base_affine()
    assert (g.sform_code, g.qform_code) == (0, 0)
    np.testing.assert_allclose(np.array(g.affine), expected)
    assert g.zooms == (2.0, 3.0, 4.0)


# -- bad inputs ---------------------------------------------------------------------------


def _raises(path: Path, match: str) -> None:
    with pytest.raises(ReaderError) as e:
        NiftiSource(path)
    message = str(e.value)
    assert "\n" not in message and str(path) in message
    assert match in message, message


def _volume_file(tmp_path: Path, name: str) -> bytes:
    rng = np.random.default_rng(0)
    data = rng.integers(-2000, 2000, (40, 30, 20)).astype(np.int16)
    return write_nifti(tmp_path / name, data, ras()).read_bytes()


def test_missing(tmp_path: Path) -> None:
    _raises(tmp_path / "absent.nii.gz", "not found")


def test_empty(tmp_path: Path) -> None:
    (tmp_path / "empty.nii").touch()
    _raises(tmp_path / "empty.nii", "empty")


def test_truncated_gz(tmp_path: Path) -> None:
    whole = _volume_file(tmp_path, "full.nii.gz")
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    _raises(cut, "truncated")


def test_truncated_nii(tmp_path: Path) -> None:
    whole = _volume_file(tmp_path, "full.nii")
    cut = tmp_path / "cut.nii"
    cut.write_bytes(whole[: len(whole) // 2])
    _raises(cut, "truncated")


def test_header_cut_off(tmp_path: Path) -> None:
    whole = _volume_file(tmp_path, "full.nii")
    cut = tmp_path / "head.nii"
    cut.write_bytes(whole[:100])
    _raises(cut, "not a NIfTI")


def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.nii"
    path.write_text("this is not a volume\n" * 40)
    _raises(path, "not a NIfTI")


def test_gz_name_but_not_gzip(tmp_path: Path) -> None:
    path = tmp_path / "plain.nii.gz"
    path.write_bytes(_volume_file(tmp_path, "plain_src.nii"))
    _raises(path, "not gzip")


def test_gzip_of_something_else(tmp_path: Path) -> None:
    path = tmp_path / "other.nii.gz"
    path.write_bytes(gzip.compress(b"GIF89a" + bytes(1000)))
    _raises(path, "not a NIfTI")


def test_multi_member_gzip_opens(tmp_path: Path) -> None:
    """Two gzip members (bgzip-style): the trailer size check fails, the full check passes."""
    raw = _volume_file(tmp_path, "raw.nii")
    path = tmp_path / "two.nii.gz"
    half = len(raw) // 2
    path.write_bytes(gzip.compress(raw[:half]) + gzip.compress(raw[half:]))
    np.testing.assert_array_equal(
        _full(NiftiSource(path))[0], np.asanyarray(load_image(tmp_path / "raw.nii").dataobj)
    )


# -- real files (skipped without ../shared/data) ---------------------------------------


def _open_real(shared_file: Callable[[str], Path], name: str) -> NiftiSource:
    src = NiftiSource(shared_file(f"med/{name}"))
    # a small read from the far corner proves the data are all there
    src.read(tuple(slice(n - 2, n) for n in src.spatial_shape))
    return src


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("name", "shape", "dtype", "zoom", "codes"),
    [
        ("example_ct_sm.nii.gz", (122, 101, 30), np.int16, 3.0, ("R", "A", "S")),
        ("example_seg.nii.gz", (122, 101, 30), np.uint8, 3.0, ("R", "A", "S")),
        ("example_mr_sm.nii.gz", (117, 91, 20), np.int16, 3.0, ("L", "P", "S")),
        ("example_seg_mr.nii.gz", (117, 91, 20), np.uint8, 3.0, ("L", "P", "S")),
        ("t1_crop.nii.gz", (256, 256, 256), np.uint8, 1.0, ("L", "I", "A")),
    ],
)
def test_real_totalsegmentator_and_brainchop(
    shared_file: Callable[[str], Path],
    name: str,
    shape: tuple[int, int, int],
    dtype: type,
    zoom: float,
    codes: tuple[str, str, str],
) -> None:
    src = _open_real(shared_file, name)
    g = src.geometry
    assert (src.spatial_shape, src.dtype, src.channels, src.nodata) == (shape, dtype, 1, None)
    assert g.orientation == codes and g.sform_code > 0
    np.testing.assert_allclose(g.zooms, (zoom,) * 3, rtol=1e-5)


@pytest.mark.shared_data
def test_real_ct_and_labels_share_a_grid(shared_file: Callable[[str], Path]) -> None:
    ct = _open_real(shared_file, "example_ct_sm.nii.gz")
    seg = _open_real(shared_file, "example_seg.nii.gz")
    assert ct.spatial_shape == seg.spatial_shape
    np.testing.assert_allclose(np.array(ct.geometry.affine), np.array(seg.geometry.affine))
    labels = np.unique(_full(seg))
    assert 20 < len(labels) <= 42  # 41 labels + background


@pytest.mark.shared_data
def test_real_anatomical_big_endian(shared_file: Callable[[str], Path]) -> None:
    src = _open_real(shared_file, "anatomical.nii")
    assert load_image(src.path).header.endianness == ">"
    assert (src.spatial_shape, src.dtype) == ((33, 41, 25), np.int16) and src.dtype.isnative
    g = src.geometry
    assert g.orientation == ("L", "A", "S") and g.zooms == (2.0, 2.0, 2.0)
    # PROVENANCE.md says "qform only"; the image header has sform_code 2 as well (its label
    # file is the qform-only one): test what the file holds
    assert (g.sform_code, g.qform_code) == (2, 2)
    np.testing.assert_array_equal(_full(src)[0], np.asanyarray(load_image(src.path).dataobj))


@pytest.mark.shared_data
def test_real_anatomical_label_qform_only(shared_file: Callable[[str], Path]) -> None:
    label = _open_real(shared_file, "anatomical_label.nii.gz")
    image = _open_real(shared_file, "anatomical.nii")
    g = label.geometry
    assert (g.sform_code, g.qform_code) == (0, 1)
    assert g.orientation == ("L", "A", "S") and label.spatial_shape == (33, 41, 25)
    np.testing.assert_allclose(np.array(g.affine), np.array(image.geometry.affine), atol=1e-5)
    assert set(np.unique(_full(label)).tolist()) <= {0, 1}


@pytest.mark.shared_data
def test_real_reoriented_anat_moved(shared_file: Callable[[str], Path]) -> None:
    src = _open_real(shared_file, "reoriented_anat_moved.nii")
    assert load_image(src.path).header.endianness == ">"
    assert (src.spatial_shape, src.dtype) == ((21, 26, 22), np.float32) and src.dtype.isnative
    g = src.geometry
    assert g.orientation == ("R", "A", "S") and g.zooms == (4.0, 4.0, 4.0)
    origin = np.array(g.affine)[:3, 3]
    assert not np.allclose(origin, np.round(origin))  # non-integer origin
    label = _open_real(shared_file, "reoriented_anat_moved_label.nii.gz")
    assert label.spatial_shape == src.spatial_shape
    assert (label.geometry.sform_code, label.geometry.qform_code) == (0, 1)
    np.testing.assert_allclose(np.array(label.geometry.affine), np.array(g.affine), atol=1e-4)


def test_each_thread_gets_its_own_image_handle(tmp_path: Path) -> None:
    src = NiftiSource(write_nifti(tmp_path / "t.nii.gz", volumes(1, "int16"), ras()))
    barrier = threading.Barrier(4)
    handles = []

    def work() -> None:
        src.read((slice(0, 4), slice(0, 4), slice(0, 4)))
        handles.append(src._handles.get())
        barrier.wait()  # all four alive at once: no handle can be handed on

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(h) for h in handles}) == 4


def test_nifti2_file(tmp_path: Path) -> None:
    data = volumes(1, "int16")
    path = tmp_path / "v2.nii.gz"
    img = nib.Nifti2Image(data, lia())
    img.set_data_dtype(np.int16)
    nib.save(img, path)
    src = NiftiSource(path)
    assert src.geometry.orientation == ("L", "I", "A")
    np.testing.assert_array_equal(_full(src)[0], data)
