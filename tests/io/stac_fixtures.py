"""STAC test data: items with one GeoTIFF per band, listed in another order than the model's."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pystac
from rasterio.transform import from_origin

from tests.conftest import textured, write_tif

ORIGIN = (300000.0, 4500000.0)


def _band_asset(href: str, common: str, name: str) -> pystac.Asset:
    return pystac.Asset(
        href=href,
        media_type=pystac.MediaType.COG,
        roles=["data"],
        extra_fields={"eo:bands": [{"name": name, "common_name": common}]},
    )


def write_item(
    folder: Path, item_id: str, seed: int, *, coarse_blue: bool = False
) -> tuple[pystac.Item, Path]:
    """An item with one file per band (listed blue, red, green) and the stacked equivalent."""
    data = textured((96, 128), 3, seed=seed)  # red, green, blue
    fine = from_origin(*ORIGIN, 10.0, 10.0)
    if coarse_blue:  # blue at 20 m: what the stack must bring onto the 10 m grid
        blue20 = data[2, ::2, ::2]
        data[2] = np.repeat(np.repeat(blue20, 2, axis=0), 2, axis=1)
    names = {"red": "B04", "green": "B03", "blue": "B02"}
    assets = {}
    for index, common in ((2, "blue"), (0, "red"), (1, "green")):
        path = folder / f"{item_id}_{names[common]}.tif"
        if common == "blue" and coarse_blue:
            write_tif(
                path, data[2:3, ::2, ::2], transform=from_origin(*ORIGIN, 20.0, 20.0), tile=None
            )
        else:
            write_tif(path, data[index : index + 1], transform=fine, tile=None)
        assets[names[common]] = _band_asset(path.name, common, names[common])
    stacked = write_tif(folder / f"{item_id}_stacked.tif", data, transform=fine, tile=None)
    item = pystac.Item(
        id=item_id,
        geometry={"type": "Point", "coordinates": [0.0, 0.0]},
        bbox=[0.0, 0.0, 0.0, 0.0],
        datetime=dt.datetime(2026, 6, 1, tzinfo=dt.UTC),
        properties={},
    )
    for key, asset in assets.items():
        item.add_asset(key, asset)
    return item, stacked


def write_item_collection(folder: Path, **kwargs) -> tuple[Path, list[Path]]:
    pairs = [write_item(folder, f"scene-{i}", seed=i, **kwargs) for i in range(2)]
    collection = pystac.ItemCollection([item for item, _ in pairs])
    path = folder / "items.json"
    path.write_text(json.dumps(collection.to_dict(transform_hrefs=False)))
    return path, [stacked for _, stacked in pairs]
