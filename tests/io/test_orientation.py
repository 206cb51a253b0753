"""Orientation helpers: exact round trips, agreement with nibabel, world coordinates kept."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pytest
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from segflow.errors import ConfigError
from segflow.io.orientation import (
    AxisTransform,
    apply_transform,
    invert_transform,
    orientation_transform,
    parse_axcodes,
    transform_affine,
    transform_shape,
)
from tests.io.conformance import lia, lps, oblique, ras

SHAPE = (7, 5, 6)
AFFINES: dict[str, Callable[[], npt.NDArray[np.float64]]] = {
    "RAS": ras,
    "LPS": lps,
    "LIA": lia,
    "oblique": oblique,
}
TARGETS = ["RAS", "LPS", "LIA"]
ALL_CODES = [
    "".join(letters)
    for perm in itertools.permutations(["LR", "AP", "SI"])
    for letters in itertools.product(*perm)
]


def batch() -> npt.NDArray[np.int64]:
    """(N=2, C=3, i, j, k): each value encodes (n, c, i, j, k)."""
    return np.arange(2 * 3 * np.prod(SHAPE)).reshape(2, 3, *SHAPE)


@pytest.mark.parametrize("source", list(AFFINES))
@pytest.mark.parametrize("target", TARGETS)
def test_round_trip_is_exact(source: str, target: str) -> None:
    t = orientation_transform(AFFINES[source](), target)
    x = batch()
    y = apply_transform(x, t, leading=2)
    assert y.shape == transform_shape(x.shape, t)
    assert y.flags.c_contiguous
    back = invert_transform(y, t, leading=2)
    assert back.dtype == x.dtype
    np.testing.assert_array_equal(back, x)


@pytest.mark.parametrize("source", list(AFFINES))
@pytest.mark.parametrize("target", TARGETS)
def test_matches_nibabel(source: str, target: str) -> None:
    affine = AFFINES[source]()
    t = orientation_transform(affine, target)
    x = batch()[0, 0]
    ornt = ornt_transform(io_orientation(affine), axcodes2ornt(target))
    np.testing.assert_array_equal(apply_transform(x, t), apply_orientation(x, ornt))
    img = nib.Nifti1Image(x.astype(np.int32), affine)
    turned = img.as_reoriented(ornt)
    np.testing.assert_array_equal(apply_transform(x, t), np.asanyarray(turned.dataobj))
    new_affine = transform_affine(affine, x.shape, t)
    np.testing.assert_allclose(new_affine, turned.affine, atol=1e-9)
    assert "".join(nib.aff2axcodes(new_affine)) == target  # really the target orientation


@pytest.mark.parametrize("source", list(AFFINES))
def test_every_voxel_keeps_its_world_position(source: str) -> None:
    """Independent of nibabel: decode each output value back to its input voxel."""
    affine = AFFINES[source]()
    t = orientation_transform(affine, "RAS")
    x = np.arange(np.prod(SHAPE)).reshape(SHAPE)
    y = np.asarray(apply_transform(x, t), dtype=np.int64)
    new_affine = transform_affine(affine, SHAPE, t)
    out_index = np.indices(y.shape).reshape(3, -1)
    in_index = np.array(np.unravel_index(y.ravel(), SHAPE))
    world_out = new_affine[:3, :3] @ out_index + new_affine[:3, 3:]
    world_in = affine[:3, :3] @ in_index + affine[:3, 3:]
    np.testing.assert_allclose(world_out, world_in, atol=1e-9)


@pytest.mark.parametrize("target", ALL_CODES)
def test_all_48_targets_from_oblique(target: str) -> None:
    t = orientation_transform(oblique(), target)
    x = batch()
    np.testing.assert_array_equal(invert_transform(apply_transform(x, t, 2), t, 2), x)
    assert "".join(nib.aff2axcodes(transform_affine(oblique(), SHAPE, t))) == target


def test_identity_and_inverse() -> None:
    t = orientation_transform(ras(), "ras")
    assert t.is_identity and t == AxisTransform((0, 1, 2), (False, False, False))
    x = batch()
    assert apply_transform(x, t, 2) is x  # nothing to do, nothing copied
    u = orientation_transform(lia(), "RAS")
    assert not u.is_identity
    assert u.inverse().inverse() == u
    np.testing.assert_array_equal(apply_transform(apply_transform(x, u, 2), u.inverse(), 2), x)


def test_lia_to_ras_by_hand() -> None:
    """LIA -> RAS: i (L) flips to R, k (A) becomes axis 1, j (I) flips to S as axis 2."""
    t = orientation_transform(lia(), "RAS")
    assert t == AxisTransform(perm=(0, 2, 1), flip=(True, False, True))
    assert transform_shape((4, 7, 5, 6), t) == (4, 7, 6, 5)


@pytest.mark.parametrize("bad", ["RAX", "RRS", "RA", "RASL", "", "xyz"])
def test_bad_target(bad: str) -> None:
    with pytest.raises(ConfigError, match="L/R, A/P, S/I"):
        orientation_transform(ras(), bad)


def test_parse_axcodes_accepts_sequences() -> None:
    assert parse_axcodes(("l", "p", "s")) == ("L", "P", "S")


def test_wrong_leading_axes() -> None:
    t = orientation_transform(lia(), "RAS")
    with pytest.raises(ValueError, match="leading"):
        apply_transform(batch(), t, leading=1)
    with pytest.raises(ValueError):
        AxisTransform(perm=(0, 0, 1), flip=(False, False, False))


def test_degenerate_affine() -> None:
    affine = ras()
    affine[:3, 2] = 0.0
    with pytest.raises(ConfigError, match="degenerate"):
        orientation_transform(affine, "RAS")
