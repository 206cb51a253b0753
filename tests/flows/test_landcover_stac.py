"""The land-cover flow over a STAC ItemCollection: stores keyed on item id and model hash."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import zarr

from flows.landcover import landcover_mapping
from flows.report import outcome
from segflow.io.files import sha256_file
from segflow.models.files import save_model
from tests.conftest import pixel_model
from tests.io.stac_fixtures import write_item_collection


def _model(path: Path, bias: float) -> Path:
    loaded = pixel_model([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]], [0.0, bias, 0.0])
    meta = loaded.meta.model_copy(update={"band_names": ("red", "green", "blue")})
    save_model(loaded.module, meta, path)
    return path


def test_a_stac_night_maps_each_item_once_per_model(prefect_server, tmp_path):
    (tmp_path / "stac").mkdir()
    collection, stacked = write_item_collection(tmp_path / "stac")
    model = _model(tmp_path / "m1.safetensors", 0.0)
    out = tmp_path / "maps"
    options = {"device": "cpu", "chunk_size": 64}
    state = landcover_mapping(
        str(collection), str(out), model=str(model), options=options, return_state=True
    )
    summary = outcome(state)
    assert summary.counts == {"complete": 2, "skipped": 0, "failed": 0}
    tag = sha256_file(model)[:12]
    stores = sorted(p.name for p in out.glob("*.zarr"))
    assert stores == [f"scene-0-{tag}.zarr", f"scene-1-{tag}.zarr"]
    labels = zarr.open_group(out / f"scene-1-{tag}.zarr", mode="r")["labels"][...]
    import rasterio

    with rasterio.open(stacked[1]) as ds:
        np.testing.assert_array_equal(labels, ds.read().argmax(0))  # red, green, blue order
    assert (out / f"scene-1-{tag}.item.json").is_file()

    again = outcome(
        landcover_mapping(
            str(collection), str(out), model=str(model), options=options, return_state=True
        )
    )
    assert again.counts == {"complete": 0, "skipped": 2, "failed": 0}
    other = _model(tmp_path / "m2.safetensors", 0.5)  # another model maps every item again
    third = outcome(
        landcover_mapping(
            str(collection), str(out), model=str(other), options=options, return_state=True
        )
    )
    assert third.counts == {"complete": 2, "skipped": 0, "failed": 0}
    assert len(list(out.glob("*.zarr"))) == 4


def test_a_stac_api_search_on_loopback_gives_the_night_its_items(prefect_server, tmp_path):
    from tests.flows.stac_api import stac_api

    (tmp_path / "stac").mkdir()
    collection, _ = write_item_collection(tmp_path / "stac")
    document = json.loads(collection.read_text())
    for index, feature in enumerate(document["features"]):  # as an API serves them
        feature["collection"] = "sentinel-2"
        feature["bbox"] = [10.0 + index, 50.0, 10.5 + index, 50.5]
        for asset in feature["assets"].values():
            asset["href"] = str(tmp_path / "stac" / asset["href"])
    model = _model(tmp_path / "m.safetensors", 0.0)
    out = tmp_path / "maps"
    with stac_api(document["features"]) as url:
        search = {"url": url, "collections": ["sentinel-2"], "bbox": [10.2, 50.2, 10.4, 50.4]}
        state = landcover_mapping(
            "",
            str(out),
            model=str(model),
            options={"device": "cpu", "chunk_size": 64},
            stac_search=search,
            return_state=True,
        )
    summary = outcome(state)
    assert summary.counts == {"complete": 1, "skipped": 0, "failed": 0}
    tag = sha256_file(model)[:12]
    assert [p.name for p in out.glob("*.zarr")] == [f"scene-0-{tag}.zarr"]
    kept = list((out / "reports").glob("stac-search-*.json"))
    assert len(kept) == 1 and [f["id"] for f in json.loads(kept[0].read_text())["features"]] == [
        "scene-0"
    ]
