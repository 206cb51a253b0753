"""STAC as batch input: Items, ItemCollections and static catalogs, local or in object storage.

A STAC file on the command line (or in a spec, or given to the land-cover flow) is a
batch of its items: an Item is one input, an ItemCollection one input per item
(``items.json#ITEM_ID``), a catalog or collection one input per item it links to. Each
item's assets are chosen by band: the model's ``band_names`` are matched, in the
model's order, against each asset's ``eo:bands`` common names (then band names, then
asset keys), and the chosen bands are stacked on the finest grid among them
(:class:`~segflow.io.band_stack.BandStack`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pystac

from segflow.errors import ConfigError, ReaderError
from segflow.io.band_stack import BandFile, BandStack
from segflow.io.stac_names import is_stac_input, split_fragment
from segflow.io.stac_parquet import is_parquet, read_parquet_collection
from segflow.io.uris import ObjectPath, as_location, is_uri

__all__ = [
    "FsspecStacIO",
    "choose_bands",
    "is_single_item",
    "is_stac_input",
    "open_stac_item",
    "read_item",
    "split_fragment",
    "stac_inputs",
]

STAC_TYPES = ("Feature", "FeatureCollection", "Catalog", "Collection")
MAX_STAC_BYTES = 64 << 20
_RASTER_TYPES = ("image/tiff", "image/vnd.stac.geotiff", "image/jp2", "application/x-hdf")


class FsspecStacIO(pystac.StacIO):
    """pystac reads and writes local files, object storage (fsspec) and http alike."""

    def read_text(self, source: Any, *args: Any, **kwargs: Any) -> str:
        href = str(pystac.utils.make_posix_style(source) if not isinstance(source, str) else source)
        return _read_text(href)

    def write_text(self, dest: Any, txt: str, *args: Any, **kwargs: Any) -> None:
        href = str(dest)
        location = as_location(href)
        if isinstance(location, ObjectPath):
            from segflow.io import remote

            with (
                remote.storage_errors(location),
                remote.filesystem(location).open(location.key, "w") as handle,
            ):
                handle.write(txt)
            return
        location.parent.mkdir(parents=True, exist_ok=True)
        location.write_text(txt, encoding="utf-8")


def _read_text(href: str) -> str:
    location = as_location(href)
    if isinstance(location, ObjectPath):
        from segflow.io import remote

        remote.check_object(location)
        with remote.open_object(location) as handle:
            data: bytes = handle.read(MAX_STAC_BYTES + 1)
    else:
        try:
            with location.open("rb") as handle:
                data = handle.read(MAX_STAC_BYTES + 1)
        except OSError as exc:
            raise ReaderError(
                f"{href}: cannot be read ({exc.strerror or exc}); check the path"
            ) from None
    if len(data) > MAX_STAC_BYTES:
        raise ReaderError(f"{href}: larger than {MAX_STAC_BYTES >> 20} MB; not a STAC document")
    return data.decode("utf-8")


def _document(href: str) -> dict[str, Any]:
    if is_parquet(href):
        return read_parquet_collection(href)
    try:
        found = json.loads(_read_text(href))
    except ValueError as exc:
        raise ReaderError(
            f"{href}: not valid JSON ({exc}); a STAC input is a JSON document"
        ) from None
    if not isinstance(found, dict) or found.get("type") not in STAC_TYPES:
        raise ReaderError(
            f"{href}: not a STAC Item, ItemCollection or catalog (its type is "
            f"{found.get('type') if isinstance(found, dict) else type(found).__name__!r})"
        )
    return found


def _absolute(href: str) -> str:
    if is_uri(href):
        return href
    return str(Path(href).expanduser().absolute())


def stac_inputs(href: str) -> list[tuple[str | None, str]]:
    """The inputs a STAC document stands for: (item id, input text) per item."""
    href, item_id = split_fragment(href)
    href = _absolute(href)
    if item_id is not None:  # one item of a collection, named on the command line
        return [(item_id, f"{href}#{item_id}")]
    document = _document(href)
    kind = document["type"]
    if kind == "Feature":
        return [(str(document.get("id")), href)]
    if kind == "FeatureCollection":
        ids = [str(f.get("id")) for f in document.get("features", []) if isinstance(f, dict)]
        if not ids:
            raise ConfigError(f"{href}: the ItemCollection holds no items")
        if len(set(ids)) != len(ids):
            raise ConfigError(f"{href}: item ids repeat; each item needs its own id")
        return [(item_id, f"{href}#{item_id}") for item_id in ids]
    catalog = pystac.read_dict(document, href=href, stac_io=FsspecStacIO())
    assert isinstance(catalog, pystac.Catalog)
    items: list[tuple[str | None, str]] = [
        (item.id, item.get_self_href() or "") for item in catalog.get_items(recursive=True)
    ]
    if not items:
        raise ConfigError(f"{href}: the catalog links to no items")
    return items


def is_single_item(text: str) -> bool:
    """An Item document, or one item named in a collection (``items.json#ID``)."""
    href, item_id = split_fragment(text)
    return item_id is not None or _document(_absolute(href))["type"] == "Feature"


def read_item(text: str) -> pystac.Item:
    """The item an input text names (a file, or ``collection.json#id``)."""
    href, item_id = split_fragment(text)
    href = _absolute(href)
    document = _document(href)
    if item_id is None:
        if document["type"] != "Feature":
            raise ConfigError(f"{href}: is a {document['type']}; name one item as {href}#ITEM_ID")
        return pystac.Item.from_dict(document, href=href, preserve_dict=False)
    for feature in document.get("features", []):
        if isinstance(feature, dict) and str(feature.get("id")) == item_id:
            item = pystac.Item.from_dict(feature, preserve_dict=False)
            if item.get_self_href() is None:
                item.set_self_href(None)
            _resolve_assets(item, href)
            return item
    raise ReaderError(f"{href}: holds no item {item_id!r}")


def _resolve_assets(item: pystac.Item, collection_href: str) -> None:
    """Relative asset hrefs of an item inside an ItemCollection are relative to that file."""
    base = collection_href.rpartition("/")[0]
    for asset in item.assets.values():
        if not is_uri(asset.href) and not Path(asset.href).is_absolute():
            asset.href = f"{base}/{asset.href}"


def _asset_bands(key: str, asset: pystac.Asset) -> Iterator[tuple[int, tuple[str, ...]]]:
    """(1-based band, names it answers to) for each band of a raster asset."""
    raw = asset.extra_fields.get("eo:bands") or asset.extra_fields.get("bands") or []
    if not raw:  # an asset without band metadata answers to its key
        yield 1, (key,)
        return
    for index, band in enumerate(raw, start=1):
        if isinstance(band, dict):
            names = (
                band.get("common_name"),
                band.get("eo:common_name"),
                band.get("name"),
                key if len(raw) == 1 else None,
            )
            yield index, tuple(str(n) for n in names if n)


def _is_raster(asset: pystac.Asset) -> bool:
    media = (asset.media_type or "").lower()
    if media:
        return any(media.startswith(t) for t in _RASTER_TYPES)
    return asset.href.lower().endswith((".tif", ".tiff", ".jp2", ".vrt"))


def choose_bands(item: pystac.Item, wanted: Sequence[str]) -> list[BandFile]:
    """One band per wanted name, in that order, matched case-insensitively."""
    offered: dict[str, BandFile] = {}
    for key, asset in item.assets.items():
        if not _is_raster(asset):
            continue
        href = asset.get_absolute_href() or asset.href
        for band, names in _asset_bands(key, asset):
            for name in names:
                offered.setdefault(name.lower(), BandFile(href, band, name))
    chosen = []
    for name in wanted:
        found = offered.get(name.lower())
        if found is None:
            raise ReaderError(
                f"STAC item {item.id} has no band {name!r} (it offers "
                f"{', '.join(sorted(offered)) or 'no raster assets'}); the model needs "
                f"{', '.join(wanted)}"
            )
        chosen.append(BandFile(found.href, found.band, name))
    return chosen


def open_stac_item(
    text: str, band_names: Sequence[str] | None, nodata: float | None = None
) -> BandStack:
    """The item's bands the model asks for, stacked in the model's order on one grid."""
    if not band_names:
        raise ConfigError(
            f"{text}: STAC assets are chosen by band name, and the model names no bands; "
            "give the model band_names (segflow model create --band-names ...)"
        )
    item = read_item(text)
    href, _ = split_fragment(text)
    return BandStack(_absolute(href), choose_bands(item, band_names), nodata=nodata)
