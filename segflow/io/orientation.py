"""Axis permutations and flips between a file's voxel order and a target orientation.

Volumes are read in the file's own voxel order and never reoriented on disk.
A model trained on, say, RAS arrays gets each patch turned with
``apply_transform`` and its output turned back with ``invert_transform``,
which undoes it exactly (only transposes and flips, no resampling). Oblique
affines map to their closest axis codes (``nibabel.io_orientation``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from segflow.errors import ConfigError
from segflow.io.nib import axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

__all__ = [
    "AxisTransform",
    "apply_transform",
    "invert_transform",
    "orientation_transform",
    "parse_axcodes",
    "transform_affine",
    "transform_shape",
]

_PAIRS = {"L": "LR", "R": "LR", "A": "AP", "P": "AP", "S": "SI", "I": "SI"}


@dataclass(frozen=True)
class AxisTransform:
    """Turn an array in file voxel order into the target orientation.

    Output spatial axis ``d`` is input axis ``perm[d]``, reversed when
    ``flip[d]``: transpose first, then flip (in output axes).
    """

    perm: tuple[int, ...]
    flip: tuple[bool, ...]

    def __post_init__(self) -> None:
        if sorted(self.perm) != list(range(len(self.perm))) or len(self.flip) != len(self.perm):
            raise ValueError(f"perm {self.perm} / flip {self.flip} is not an axis transform")

    @property
    def ndim(self) -> int:
        return len(self.perm)

    @property
    def is_identity(self) -> bool:
        return self.perm == tuple(range(self.ndim)) and not any(self.flip)

    def inverse(self) -> AxisTransform:
        """The transform that undoes this one."""
        inv = tuple(int(i) for i in np.argsort(self.perm))
        return AxisTransform(perm=inv, flip=tuple(self.flip[q] for q in inv))

    def to_ornt(self) -> npt.NDArray[np.float64]:
        """As a nibabel orientation transform: row i = [output axis of input axis i, +-1]."""
        ornt = np.zeros((self.ndim, 2))
        for d, (p, f) in enumerate(zip(self.perm, self.flip, strict=True)):
            ornt[p] = (d, -1.0 if f else 1.0)
        return ornt


def parse_axcodes(target: str | Sequence[str]) -> tuple[str, str, str]:
    """``"ras"`` / ``("L", "P", "S")`` -> upper-case codes, one per world axis pair."""
    codes = tuple(str(c).upper() for c in target)
    pairs = sorted(_PAIRS.get(c, "?") for c in codes)
    if len(codes) != 3 or pairs != ["AP", "LR", "SI"]:
        raise ConfigError(
            f"orientation {''.join(map(str, target))!r} is not valid; use three letters, one "
            "from each of L/R, A/P, S/I, e.g. RAS or LPS"
        )
    return codes[0], codes[1], codes[2]


def orientation_transform(affine: npt.ArrayLike, target: str | Sequence[str]) -> AxisTransform:
    """The transform taking arrays laid out as ``affine`` says to ``target`` axis codes."""
    start = io_orientation(np.asarray(affine, dtype=np.float64))
    if np.isnan(start).any():
        raise ConfigError("the affine is degenerate: some voxel axis has no direction")
    ornt = ornt_transform(start, axcodes2ornt(parse_axcodes(target)))
    perm = tuple(int(i) for i in np.argsort(ornt[:, 0]))
    return AxisTransform(perm=perm, flip=tuple(bool(ornt[p, 1] < 0) for p in perm))


def _check(arr: npt.NDArray[np.generic], t: AxisTransform, leading: int) -> None:
    if arr.ndim != leading + t.ndim:
        raise ValueError(
            f"array has {arr.ndim} axes; expected {leading} leading + {t.ndim} spatial"
        )


def apply_transform(
    arr: npt.NDArray[np.generic], t: AxisTransform, leading: int = 0
) -> npt.NDArray[np.generic]:
    """Turn ``arr`` (``leading`` non-spatial axes first) into the target orientation.

    Returns a C-contiguous array (torch refuses negative strides); it is
    ``arr`` itself when nothing moves and ``arr`` is already contiguous.
    """
    _check(arr, t, leading)
    if t.is_identity:
        return np.ascontiguousarray(arr)
    out = arr.transpose((*range(leading), *(leading + p for p in t.perm)))
    flipped = tuple(leading + d for d, f in enumerate(t.flip) if f)
    if flipped:
        out = np.flip(out, flipped)
    return np.ascontiguousarray(out)


def invert_transform(
    arr: npt.NDArray[np.generic], t: AxisTransform, leading: int = 0
) -> npt.NDArray[np.generic]:
    """Undo ``apply_transform``: from the target orientation back to file voxel order."""
    return apply_transform(arr, t.inverse(), leading)


def transform_shape(shape: Sequence[int], t: AxisTransform) -> tuple[int, ...]:
    """Shape after ``apply_transform``; leading non-spatial axes, if any, stay put."""
    leading = len(shape) - t.ndim
    if leading < 0:
        raise ValueError(f"shape {tuple(shape)} has fewer than {t.ndim} axes")
    head = tuple(int(n) for n in shape[:leading])
    return head + tuple(int(shape[leading + p]) for p in t.perm)


def transform_affine(
    affine: npt.ArrayLike, spatial_shape: Sequence[int], t: AxisTransform
) -> npt.NDArray[np.float64]:
    """Voxel-to-world affine of the transformed array (``spatial_shape``: before)."""
    aff = np.asarray(affine, dtype=np.float64)
    return aff @ inv_ornt_aff(t.to_ornt(), tuple(int(n) for n in spatial_shape))
