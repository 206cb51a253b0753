"""A STAC API search as batch input: pystac-client finds the items, segflow maps them.

The search (collections, bbox or intersects, datetime, query) runs once, and its result
is written as an ItemCollection file: the run then reads that file like any other
ItemCollection, and the file records exactly which items the night was given.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segflow.errors import ConfigError, ReaderError
from segflow.io.uris import redact

__all__ = ["StacSearch", "search_to_file"]


@dataclass(frozen=True)
class StacSearch:
    """What to ask a STAC API for; ``url`` is the API's landing page."""

    url: str
    collections: tuple[str, ...] = ()
    bbox: tuple[float, float, float, float] | None = None
    intersects: Mapping[str, Any] | None = None
    datetime: str | None = None
    query: Mapping[str, Any] = field(default_factory=dict)
    max_items: int = 1000

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> StacSearch:
        known = {"url", "collections", "bbox", "intersects", "datetime", "query", "max_items"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown STAC search field {unknown[0]!r}; use {', '.join(sorted(known))}"
            )
        if not values.get("url"):
            raise ConfigError("a STAC search needs the API's url")
        bbox = values.get("bbox")
        if bbox is not None and len(bbox) != 4:
            raise ConfigError(f"bbox must be west,south,east,north; got {bbox!r}")
        collections = values.get("collections") or ()
        return cls(
            url=str(values["url"]),
            collections=(collections,) if isinstance(collections, str) else tuple(collections),
            bbox=None
            if bbox is None
            else (float(bbox[0]), float(bbox[1]), float(bbox[2]), float(bbox[3])),
            intersects=values.get("intersects"),
            datetime=values.get("datetime"),
            query=dict(values.get("query") or {}),
            max_items=int(values.get("max_items", 1000)),
        )


def _parameters(search: StacSearch) -> dict[str, Any]:
    parameters: dict[str, Any] = {"max_items": search.max_items}
    optional: Sequence[tuple[str, Any]] = (
        ("collections", list(search.collections) or None),
        ("bbox", list(search.bbox) if search.bbox else None),
        ("intersects", search.intersects),
        ("datetime", search.datetime),
        ("query", search.query or None),
    )
    parameters.update({key: value for key, value in optional if value is not None})
    return parameters


def search_to_file(search: StacSearch, target: Path) -> tuple[Path, int]:
    """Run the search; write its items as an ItemCollection to ``target``; return it and the count."""
    from pystac_client import Client
    from pystac_client.exceptions import APIError

    try:
        client = Client.open(search.url)
        found = client.search(**_parameters(search)).item_collection()
    except (APIError, OSError, ValueError) as exc:
        message = redact(" ".join(str(exc).split()))
        raise ReaderError(
            f"STAC search at {search.url} failed ({message}); check the url and fields"
        ) from None
    for item in found:  # asset hrefs stay as the API gave them (absolute URLs or URIs)
        item.set_self_href(None)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(found.to_dict(transform_hrefs=False), indent=1), encoding="utf-8")
    return target, len(found)
