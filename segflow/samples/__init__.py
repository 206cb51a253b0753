"""Built-in sample data generated in code, with known truth.

- :func:`make_landcover_scene`: a georeferenced 4-band GeoTIFF (water, forest,
  field, urban) and its truth GeoTIFF, generated window by window;
- :func:`make_phantom_volume`: an abdominal CT/MR-like NIfTI volume and its
  labels (body, liver, kidneys, spleen, bone);
- :func:`write_samples`: both into one folder, for the main job and tests.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path

from segflow.options import parse_choice
from segflow.samples.landcover import (
    BAND_NAMES,
    TRUTH_NODATA,
    SceneInfo,
    landcover_classes,
    make_landcover_scene,
    render_landcover,
)
from segflow.samples.phantom import (
    VolumeInfo,
    default_affine,
    make_phantom_volume,
    phantom_classes,
    render_phantom,
)

__all__ = [
    "BAND_NAMES",
    "SAMPLE_FILES",
    "TRUTH_NODATA",
    "SampleSize",
    "SceneInfo",
    "VolumeInfo",
    "default_affine",
    "landcover_classes",
    "make_landcover_scene",
    "make_phantom_volume",
    "phantom_classes",
    "render_landcover",
    "render_phantom",
    "write_samples",
]


class SampleSize(StrEnum):
    SMALL = "small"  # seconds: tests and quick looks
    DEFAULT = "default"  # the main job: several tiles and chunks per input


# scene (height, width) and phantom (i, j, k) per size
_SIZES: dict[SampleSize, tuple[tuple[int, int], tuple[int, int, int]]] = {
    SampleSize.SMALL: ((512, 512), (96, 96, 64)),
    SampleSize.DEFAULT: ((2048, 2048), (160, 160, 96)),
}

SAMPLE_FILES: dict[str, str] = {
    "landcover_image": "landcover.tif",
    "landcover_truth": "landcover_truth.tif",
    "phantom_image": "phantom_ct.nii.gz",
    "phantom_label": "phantom_label.nii.gz",
}


def _parse_size(size: str | SampleSize) -> SampleSize:
    return parse_choice(SampleSize, size, "sample size")


def write_samples(
    out_dir: str | os.PathLike[str],
    *,
    size: str | SampleSize = SampleSize.DEFAULT,
    seed: int = 0,
    nodata_collar: bool = False,
) -> dict[str, Path]:
    """Write the land-cover scene and the CT phantom (with their truths) into ``out_dir``.

    Returns the written paths under the keys of :data:`SAMPLE_FILES`
    (``landcover_image``, ``landcover_truth``, ``phantom_image``,
    ``phantom_label``). Existing files are overwritten.
    """
    scene_size, volume_shape = _SIZES[_parse_size(size)]
    out = Path(out_dir)
    paths = {key: out / name for key, name in SAMPLE_FILES.items()}
    make_landcover_scene(
        paths["landcover_image"],
        paths["landcover_truth"],
        size=scene_size,
        seed=seed,
        nodata_collar=nodata_collar,
    )
    make_phantom_volume(
        paths["phantom_image"], paths["phantom_label"], shape=volume_shape, seed=seed
    )
    return paths
