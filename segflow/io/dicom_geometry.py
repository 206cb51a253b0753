"""The voxel grid of a DICOM series: slice order, checks, and the RAS affine.

Slices are ordered by ImagePositionPatient projected on the slice normal (the cross
product of ImageOrientationPatient's row and column cosines), ascending, as ITK/SimpleITK
and dcm2niix do; file names and InstanceNumber are never used. Voxel axes are (i, j, k) =
(column, row, slice), the order NIfTI converters write, and the LPS affine is turned into
the RAS-based convention of NIfTI by negating its first two rows.

A series that is not one regular grid is refused with one line: mixed orientations or
pixel grids, duplicate positions, missing slices, irregular spacing, gantry tilt.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from segflow.errors import ReaderError
from segflow.io.dicom_files import SliceRef

__all__ = ["SeriesGrid", "series_grid"]

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
ORIENTATION_TOLERANCE = 1e-4  # direction cosines are written with ~6 decimals
POSITION_TOLERANCE_MM = 0.02  # positions are often rounded to 0.01 mm
SPACING_TOLERANCE = 0.01  # relative: steps may differ by 1 % (plus the rounding above)
TILT_TOLERANCE_DEGREES = 0.1


class SeriesGrid:
    """Slices in voxel order k and the 4x4 affine (voxel (i, j, k) -> RAS mm)."""

    def __init__(self, slices: Sequence[SliceRef], affine: npt.NDArray[np.float64]) -> None:
        self.slices = tuple(slices)
        self.affine = affine

    @property
    def shape(self) -> tuple[int, int, int]:
        rows, columns = self.slices[0].shape
        return (columns, rows, len(self.slices))


def series_grid(slices: Sequence[SliceRef], where: str) -> SeriesGrid:
    """Order ``slices`` along the normal and check they form one regular grid.

    ``where`` names the series in error messages.
    """
    if not slices:
        raise ReaderError(f"{where}: holds no image slices")
    first = slices[0]
    _check_same_plane_grid(slices, where)
    row = np.asarray(first.orientation[:3])
    col = np.asarray(first.orientation[3:])
    normal = np.cross(row, col)
    ordered = sorted(slices, key=lambda s: float(np.dot(s.position, normal)))
    positions = np.asarray([s.position for s in ordered], dtype=np.float64)
    distances = positions @ normal
    _check_spacing(distances, where)
    step = _slice_step(positions, normal, first, where)
    dr, dc = first.pixel_spacing
    lps = np.eye(4)
    lps[:3, 0] = row * dc  # i: along a row, one column to the next
    lps[:3, 1] = col * dr  # j: down a column, one row to the next
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    return SeriesGrid(ordered, RAS_FROM_LPS @ lps)


def _check_same_plane_grid(slices: Sequence[SliceRef], where: str) -> None:
    """One orientation, one pixel matrix and one pixel spacing for every slice."""
    first = slices[0]
    orientations = {tuple(np.round(s.orientation, 4)) for s in slices}
    if any(
        not np.allclose(s.orientation, first.orientation, atol=ORIENTATION_TOLERANCE)
        for s in slices
    ):
        raise ReaderError(
            f"{where}: mixed orientations ({len(orientations)} different "
            "ImageOrientationPatient values in one series); export each stack as its own series"
        )
    shapes = {s.shape for s in slices}
    if len(shapes) > 1:
        raise ReaderError(
            f"{where}: slices have different sizes {sorted(shapes)} (Rows x Columns); "
            "a series must be one pixel grid"
        )
    if any(not np.allclose(s.pixel_spacing, first.pixel_spacing, rtol=1e-4) for s in slices):
        spacings = sorted({s.pixel_spacing for s in slices})
        raise ReaderError(f"{where}: slices have different PixelSpacing values {spacings[:4]}")


def _check_spacing(distances: npt.NDArray[np.float64], where: str) -> None:
    """No two slices at one position; equal steps (a multiple step is a missing slice)."""
    if len(distances) < 2:
        return
    steps = np.diff(distances)
    duplicates = int(np.count_nonzero(steps < POSITION_TOLERANCE_MM))
    if duplicates:
        at = float(distances[1:][steps < POSITION_TOLERANCE_MM][0])
        raise ReaderError(
            f"{where}: {duplicates} duplicate slice position(s) (first at {at:.2f} mm along "
            "the normal): several acquisitions, echoes or phases in one series; split them"
        )
    typical = float(np.median(steps))
    tolerance = POSITION_TOLERANCE_MM + SPACING_TOLERANCE * typical
    if np.all(np.abs(steps - typical) <= tolerance):
        return
    multiples = np.rint(steps / typical)
    if np.all(multiples >= 1) and np.all(np.abs(steps - multiples * typical) <= tolerance):
        missing = int(multiples.sum() - len(steps))
        gap = int(np.argmax(multiples > 1))
        raise ReaderError(
            f"{where}: {missing} missing slice(s): a gap of {steps[gap]:.3g} mm after slice "
            f"{gap + 1} where the spacing is {typical:.3g} mm; export the complete series"
        )
    raise ReaderError(
        f"{where}: irregular slice spacing (steps from {steps.min():.3g} to "
        f"{steps.max():.3g} mm); resample it to a regular grid first"
    )


def _slice_step(
    positions: npt.NDArray[np.float64],
    normal: npt.NDArray[np.float64],
    first: SliceRef,
    where: str,
) -> npt.NDArray[np.float64]:
    """The vector from one slice to the next; refuses slices sheared by a gantry tilt."""
    if len(positions) < 2:
        # one slice: its thickness along the normal (ITK does the same)
        return normal * first.thickness
    span = positions[-1] - positions[0]
    along = float(np.dot(span, normal))
    across = float(np.linalg.norm(span - along * normal))
    tilt = math.degrees(math.atan2(across, along))
    if across > POSITION_TOLERANCE_MM and tilt > TILT_TOLERANCE_DEGREES:
        raise ReaderError(
            f"{where}: gantry tilt of {tilt:.1f} degrees (slices are sheared, not stacked "
            "along their normal); resample it first, e.g. with dcm2niix, and give the NIfTI"
        )
    step: npt.NDArray[np.float64] = span / (len(positions) - 1)
    return step
