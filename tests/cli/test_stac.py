"""``segflow stac search`` against a STAC API on loopback: the ItemCollection it writes."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from segflow.cli.stac import register
from tests.flows.stac_api import stac_api

runner = CliRunner()


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def _feature(item_id: str, west: float, when: str, collection: str = "s2") -> dict:
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "collection": collection,
        "geometry": {"type": "Point", "coordinates": [west, 50.0]},
        "bbox": [west, 50.0, west + 0.5, 50.5],
        "properties": {"datetime": when},
        "assets": {},
        "links": [],
    }


FEATURES = [
    _feature("a", 10.0, "2026-06-01T10:00:00Z"),
    _feature("b", 10.1, "2026-07-01T10:00:00Z"),
    _feature("c", 20.0, "2026-06-01T10:00:00Z"),
    _feature("d", 10.2, "2026-06-01T11:00:00Z", collection="l8"),
]


def test_search_writes_the_items_found(app, tmp_path):
    target = tmp_path / "night" / "items.json"
    with stac_api(FEATURES) as url:
        args = ["stac", "search", url, "-c", "s2", "--bbox", "10,50,11,51"]
        result = runner.invoke(
            app, [*args, "--datetime", "2026-05-01/2026-06-15", "-o", str(target)]
        )
        assert result.exit_code == 0, result.output
        assert "1 item(s)" in result.output
        found = json.loads(target.read_text())
        assert found["type"] == "FeatureCollection"
        assert [f["id"] for f in found["features"]] == ["a"]
        again = runner.invoke(app, [*args, "-o", str(target)])
        assert again.exit_code == 1 and "--overwrite" in again.output
        both = runner.invoke(app, [*args, "-c", "l8", "-o", str(target), "--overwrite"])
        assert both.exit_code == 0, both.output
    assert [f["id"] for f in json.loads(target.read_text())["features"]] == ["a", "b", "d"]


def test_a_search_that_finds_nothing_writes_nothing(app, tmp_path):
    target = tmp_path / "items.json"
    with stac_api(FEATURES) as url:
        result = runner.invoke(
            app, ["stac", "search", url, "--bbox", "-60,-10,-59,-9", "-o", str(target)]
        )
    assert result.exit_code == 1 and "found no items" in result.output
    assert not target.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bbox", "10,50,11"], "--bbox must be west,south,east,north"),
        (["--query", "{cloud"], "--query is not valid JSON"),
        (["--max-items", "0"], "--max-items must be at least 1"),
        (["--bbox", "1,2,3,4", "--intersects", "aoi.json"], "not both"),
        (["--intersects", "missing.geojson"], "cannot be read as GeoJSON"),
    ],
)
def test_bad_fields_are_one_line(app, tmp_path, args, message):
    result = runner.invoke(
        app, ["stac", "search", "http://127.0.0.1:9/", *args, "-o", str(tmp_path / "i.json")]
    )
    assert result.exit_code == 1, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "i.json").exists()


def test_an_unreachable_api_is_one_line(app, tmp_path):
    result = runner.invoke(
        app, ["stac", "search", "http://127.0.0.1:9/", "-o", str(tmp_path / "i.json")]
    )
    assert result.exit_code == 1 and "STAC search at http://127.0.0.1:9/ failed" in result.output
    assert not list(tmp_path.iterdir())


def test_intersects_and_query_reach_the_api(app, tmp_path):
    aoi = tmp_path / "aoi.geojson"
    polygon = {"type": "Polygon", "coordinates": [[[10, 50], [11, 50], [11, 51], [10, 50]]]}
    aoi.write_text(json.dumps({"type": "Feature", "geometry": polygon, "properties": {}}))
    target = tmp_path / "items.json"
    with stac_api(FEATURES) as url:
        result = runner.invoke(
            app,
            [
                *("stac", "search", url, "-c", "l8", "--intersects", str(aoi)),
                *("--query", '{"eo:cloud_cover": {"lt": 20}}', "-o", str(target)),
            ],
        )
    assert result.exit_code == 0, result.output
    assert [f["id"] for f in json.loads(target.read_text())["features"]] == ["d"]
