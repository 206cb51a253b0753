"""STAC API search: fields checked in one line, results written as an ItemCollection."""

from __future__ import annotations

import json

import pytest

from segflow.errors import ConfigError, ReaderError
from segflow.io.stac_search import StacSearch, search_to_file
from tests.flows.stac_api import stac_api


def _feature(item_id: str, west: float, when: str) -> dict:
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "collection": "s2",
        "geometry": {"type": "Point", "coordinates": [west, 50.0]},
        "bbox": [west, 50.0, west + 0.5, 50.5],
        "properties": {"datetime": when},
        "assets": {},
        "links": [],
    }


def test_fields_are_checked():
    with pytest.raises(ConfigError, match="unknown STAC search field 'colections'"):
        StacSearch.from_mapping({"url": "http://x", "colections": ["a"]})
    with pytest.raises(ConfigError, match="needs the API's url"):
        StacSearch.from_mapping({"collections": ["a"]})
    with pytest.raises(ConfigError, match="bbox must be"):
        StacSearch.from_mapping({"url": "http://x", "bbox": [1, 2, 3]})


def test_a_search_finds_items_by_bbox_and_datetime(tmp_path):
    features = [
        _feature("a", 10.0, "2026-06-01T10:00:00Z"),
        _feature("b", 10.1, "2026-07-01T10:00:00Z"),
        _feature("c", 20.0, "2026-06-01T10:00:00Z"),
    ]
    with stac_api(features) as url:
        search = StacSearch.from_mapping(
            {
                "url": url,
                "collections": "s2",
                "bbox": [10, 50, 11, 51],
                "datetime": "2026-05-01/2026-06-15",
            }
        )
        path, count = search_to_file(search, tmp_path / "found.json")
    assert count == 1
    assert [f["id"] for f in json.loads(path.read_text())["features"]] == ["a"]


def test_an_unreachable_api_is_one_line(tmp_path):
    search = StacSearch.from_mapping({"url": "http://127.0.0.1:9/"})
    with pytest.raises(
        ReaderError, match=r"STAC search at http://127\.0\.0\.1:9/ failed"
    ) as caught:
        search_to_file(search, tmp_path / "x.json")
    assert "\n" not in str(caught.value)
