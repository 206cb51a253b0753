"""OME-Zarr 0.5 checks for tests, by ome-zarr-models (the spec's pydantic models)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import zarr
from ome_zarr_models.v05 import Image, ImageLabel
from ome_zarr_models.v05.image import ImageAttrs
from ome_zarr_models.v05.image_label import ImageLabelAttrs

from segflow.io.zarr_write import consolidate_store


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


_OLD_NAMES = {
    "z": "i",
    "y": "j",
    "x": "k",
    "chunk_z": "chunk_i",
    "chunk_y": "chunk_j",
    "chunk_x": "chunk_k",
}


def as_written_before_zyx(store: Path) -> None:
    """Rename a volume store's axes back to ``i, j, k``, as stores written before carry them.

    Only metadata changes (OME space axes and every array's ``dimension_names``); the
    consolidated copy is rebuilt so readers that use it see the same.
    """
    for meta_file in store.rglob("zarr.json"):
        doc = json.loads(meta_file.read_text())
        names = doc.get("dimension_names")
        if names:
            doc["dimension_names"] = [_OLD_NAMES.get(n, n) for n in names]
        ome = doc.get("attributes", {}).get("ome", {})
        for multiscale in ome.get("multiscales", []):
            for axis in multiscale["axes"]:
                if axis["type"] == "space":
                    axis["name"] = _OLD_NAMES[axis["name"]]
        doc.pop("consolidated_metadata", None)
        meta_file.write_text(json.dumps(doc, indent=2))
    consolidate_store(store)
