"""Synthetic phantom volume: determinism, geometry in any orientation, labels, intensities."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segflow.errors import ConfigError
from segflow.samples import default_affine, make_phantom_volume, phantom_classes, render_phantom
from segflow.samples.phantom import BACKGROUND, BODY, BONE, KIDNEY, LIVER, SPLEEN

SHAPE = (64, 64, 40)  # small but every organ still resolved


def _load(path: Path) -> nib.Nifti1Image:
    nii = nib.load(path)
    assert isinstance(nii, nib.Nifti1Image)
    return nii


@pytest.fixture(scope="module")
def ct() -> tuple[np.ndarray, np.ndarray]:
    return render_phantom(SHAPE, seed=0)


def _lps() -> np.ndarray:
    affine = np.diag([-1.2, -1.2, 2.0, 1.0])
    affine[:3, 3] = [100.0, 120.0, -50.0]
    return affine


def _oblique() -> np.ndarray:
    t = np.radians(25.0)
    rot_z = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    s = np.radians(10.0)
    rot_x = np.array([[1, 0, 0], [0, np.cos(s), -np.sin(s)], [0, np.sin(s), np.cos(s)]])
    affine = np.eye(4)
    affine[:3, :3] = rot_z @ rot_x @ np.diag([1.0, 1.5, 2.5])
    affine[:3, 3] = [-10.3, 5.7, 30.1]
    return affine


def test_classes() -> None:
    names = [c.name for c in phantom_classes()]
    assert names == ["background", "body", "liver", "kidney", "spleen", "bone"]
    assert (BACKGROUND, BODY, LIVER, KIDNEY, SPLEEN, BONE) == (0, 1, 2, 3, 4, 5)
    assert len({c.color for c in phantom_classes()}) == 6


def test_same_seed_same_volume_other_seed_other_volume(ct: tuple[np.ndarray, np.ndarray]) -> None:
    img, lab = ct
    again_img, again_lab = render_phantom(SHAPE, seed=0)
    other_img, other_lab = render_phantom(SHAPE, seed=1)
    assert img.dtype == np.int16 and lab.dtype == np.uint8
    assert img.shape == lab.shape == SHAPE
    np.testing.assert_array_equal(img, again_img)
    np.testing.assert_array_equal(lab, again_lab)
    assert not np.array_equal(lab, other_lab)
    assert not np.array_equal(img, other_img)


def test_every_label_present_with_plausible_sizes(ct: tuple[np.ndarray, np.ndarray]) -> None:
    _, lab = ct
    frac = np.bincount(lab.ravel(), minlength=6) / lab.size
    assert frac.size == 6
    assert 0.3 < frac[BACKGROUND] < 0.8
    assert 0.15 < frac[BODY] < 0.6
    assert frac[BODY] > frac[LIVER] > max(frac[KIDNEY], frac[SPLEEN])
    assert (frac[[LIVER, KIDNEY, SPLEEN, BONE]] > 0.002).all(), frac
    # two kidneys: voxels on both sides of the mid-sagittal plane
    i_kidney = np.nonzero(lab == KIDNEY)[0]
    assert (i_kidney < SHAPE[0] / 2).any() and (i_kidney >= SHAPE[0] / 2).any()


def test_anatomy_in_voxel_space(ct: tuple[np.ndarray, np.ndarray]) -> None:
    """With the default RAS affine: liver on the right (+i), spleen left, spine posterior."""
    _, lab = ct
    centre = {k: np.argwhere(lab == k).mean(axis=0) for k in range(1, 6)}
    assert centre[LIVER][0] > SHAPE[0] / 2 > centre[SPLEEN][0]
    assert centre[BONE][1] < centre[BODY][1]  # posterior = smaller j
    # organs lie inside the body: background never touches them
    inside = lab > 0
    assert inside[lab == LIVER].all()
    assert (lab[0] == BACKGROUND).all() and (lab[:, -1] == BACKGROUND).all()


def test_ct_intensities_are_hu_like(ct: tuple[np.ndarray, np.ndarray]) -> None:
    img, lab = ct
    med = {k: float(np.median(img[lab == k])) for k in range(6)}
    assert med[BACKGROUND] < -900  # air
    assert -50 < med[BODY] < 80  # soft tissue, fat and gas mixed in
    assert 40 < med[LIVER] < 90
    assert 25 < med[SPLEEN] < med[LIVER]
    assert med[KIDNEY] > med[LIVER]  # enhancing cortex
    assert med[BONE] > 200
    body = img[lab == BODY]
    assert (body < -60).mean() > 0.02  # subcutaneous / visceral fat
    assert img.min() >= -1024 and img.max() <= 3071


def test_mr_modality(ct: tuple[np.ndarray, np.ndarray]) -> None:
    mr, lab = render_phantom(SHAPE, seed=0, modality="MR")
    np.testing.assert_array_equal(lab, ct[1])  # same anatomy, other contrast
    assert mr.dtype == np.int16 and mr.min() >= 0
    med = {k: float(np.median(mr[lab == k])) for k in range(6)}
    assert med[BACKGROUND] < 100 < med[KIDNEY] < med[LIVER]
    assert np.percentile(mr[lab == BODY], 95) > 2 * med[LIVER]  # fat is bright on T1


def test_written_default_geometry(tmp_path: Path, ct: tuple[np.ndarray, np.ndarray]) -> None:
    info = make_phantom_volume(tmp_path / "ct.nii.gz", tmp_path / "lab.nii.gz", shape=SHAPE)
    img = _load(info.image_path)
    lab = _load(info.label_path)
    expected = default_affine(SHAPE)
    assert np.allclose(np.diag(expected)[:3], 1.5) and not np.allclose(expected[:3, 3], 0)
    for nii in (img, lab):
        np.testing.assert_allclose(nii.affine, expected)
        np.testing.assert_allclose(nii.get_sform(), expected)
        np.testing.assert_allclose(nii.get_qform(), expected)
        assert int(nii.header["sform_code"]) == 1 and int(nii.header["qform_code"]) == 1
        assert nii.header.get_zooms() == (1.5, 1.5, 1.5)
        assert nii.shape == SHAPE
    assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), ct[0])  # no scaling on disk
    np.testing.assert_array_equal(np.asanyarray(lab.dataobj), ct[1])
    assert info.orientation == ("R", "A", "S")
    assert info.zooms == (1.5, 1.5, 1.5)
    assert info.label_counts == tuple(np.bincount(ct[1].ravel(), minlength=6))
    assert info.modality == "ct" and info.shape_ijk == SHAPE


@pytest.mark.parametrize(
    ("make_affine", "axcodes"), [(_lps, ("L", "P", "S")), (_oblique, None)], ids=["lps", "oblique"]
)
def test_any_affine_only_sets_geometry(
    tmp_path: Path,
    ct: tuple[np.ndarray, np.ndarray],
    make_affine: Callable[[], np.ndarray],
    axcodes: tuple[str, str, str] | None,
) -> None:
    affine = make_affine()
    info = make_phantom_volume(
        tmp_path / "i.nii.gz", tmp_path / "l.nii.gz", shape=SHAPE, affine=affine
    )
    img = _load(info.image_path)
    lab = _load(info.label_path)
    for nii in (img, lab):
        np.testing.assert_allclose(nii.affine, affine, atol=1e-6)
        np.testing.assert_allclose(nii.get_qform(), affine, atol=1e-5)
    np.testing.assert_array_equal(np.asanyarray(lab.dataobj), ct[1])
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), ct[0])
    np.testing.assert_allclose(np.array(info.affine), affine)
    assert info.orientation == nib.aff2axcodes(affine)
    if axcodes is not None:
        assert info.orientation == axcodes
    np.testing.assert_allclose(info.zooms, np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))


def test_bad_parameters(tmp_path: Path) -> None:
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    with pytest.raises(ConfigError, match="did you mean 'ct'"):
        make_phantom_volume(a, b, shape=SHAPE, modality="cta")
    with pytest.raises(ConfigError, match="4x4"):
        make_phantom_volume(a, b, shape=SHAPE, affine=np.eye(3))
    with pytest.raises(ConfigError, match="singular"):
        make_phantom_volume(a, b, shape=SHAPE, affine=np.diag([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ConfigError, match="shape"):
        make_phantom_volume(a, b, shape=(64, 64))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="same"):
        make_phantom_volume(a, a, shape=SHAPE)
    assert not a.exists() and not b.exists()
