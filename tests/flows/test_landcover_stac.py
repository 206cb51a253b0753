"""The land-cover flow over a STAC ItemCollection: stores keyed on item id and model hash."""

from __future__ import annotations

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
