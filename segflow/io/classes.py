"""The classes of a label image: a name and a display colour per value.

A neutral value type: model files declare their classes with it, and every
writer (Zarr, COG, NIfTI) records them, so neither depends on the other.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ClassInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    color: tuple[int, int, int] = (0, 0, 0)  # RGB 0..255


def default_colors(n: int) -> list[tuple[int, int, int]]:
    """A fixed, distinguishable palette (tab20-like), cycled."""
    base = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
        (174, 199, 232),
        (255, 187, 120),
        (152, 223, 138),
        (255, 152, 150),
        (197, 176, 213),
        (196, 156, 148),
        (247, 182, 210),
        (199, 199, 199),
        (219, 219, 141),
        (158, 218, 229),
    ]
    return [base[i % len(base)] for i in range(n)]
