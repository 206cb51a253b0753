"""OME-Zarr 0.5 checks for tests, by ome-zarr-models (the spec's pydantic models)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zarr
from ome_zarr_models.v05 import Image, ImageLabel
from ome_zarr_models.v05.image import ImageAttrs
from ome_zarr_models.v05.image_label import ImageLabelAttrs


def valid_label_attrs(ome: dict[str, Any]) -> ImageLabelAttrs:
    """An ``ome`` block of a label image, validated (pydantic ValidationError if not)."""
    return ImageLabelAttrs.model_validate(ome)


def valid_image_attrs(ome: dict[str, Any]) -> ImageAttrs:
    return ImageAttrs.model_validate(ome)


def valid_label_group(store: Path, group: str = "") -> ImageLabel:
    """A stored label image group, validated with its arrays."""
    return ImageLabel.from_zarr(zarr.open_group(store / group if group else store, mode="r"))


def valid_image_group(store: Path, group: str = "") -> Image:
    return Image.from_zarr(zarr.open_group(store / group if group else store, mode="r"))
