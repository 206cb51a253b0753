"""ItemCollections as stac-geoparquet: the same batch, bit for bit, as the JSON ItemCollection."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pystac
import pytest
import s3fs
import zarr
from pystac.validation.stac_validator import JsonSchemaSTACValidator
from stac_geoparquet.arrow import parse_stac_items_to_arrow, to_parquet

from segflow import segment
from segflow.errors import ReaderError
from segflow.inputs import collect_inputs, is_one_input
from segflow.io.stac import read_item
from segflow.models import LoadedModel
from tests.conftest import pixel_model
from tests.io.stac_fixtures import write_item_collection

BANDS = ("red", "green", "blue")
OPTIONS = {"patch_size": 64, "chunk_size": 64, "device": "cpu", "probabilities": "uint8"}


def _model() -> LoadedModel:
    loaded = pixel_model([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]], [0.0, 0.2, 0.1])
    return dataclasses.replace(loaded, meta=loaded.meta.model_copy(update={"band_names": BANDS}))


def _as_geoparquet(collection: Path) -> Path:
    """The ItemCollection JSON written as stac-geoparquet beside it (hrefs unchanged)."""
    features = json.loads(collection.read_text())["features"]
    target = collection.with_suffix(".parquet")
    to_parquet(parse_stac_items_to_arrow(features), target)
    return target


def _arrays(store: str | Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(store), mode="r")
    return {name: np.asarray(group[name][...]) for name in ("labels", "probabilities")}


def test_a_geoparquet_collection_equals_the_json_one(tmp_path):
    collection, _ = write_item_collection(tmp_path)
    parquet = _as_geoparquet(collection)
    found = collect_inputs(str(parquet))
    assert [name for name, _ in found] == ["scene-0", "scene-1"]
    assert [str(p) for _, p in found] == [f"{parquet}#scene-0", f"{parquet}#scene-1"]
    assert not is_one_input(str(parquet)) and is_one_input(f"{parquet}#scene-1")
    item = read_item(f"{parquet}#scene-1")
    assert isinstance(item, pystac.Item) and item.id == "scene-1"
    assert item.assets["B04"].href == str(tmp_path / "scene-1_B04.tif")
    model = _model()
    from_json = segment(collection, model, tmp_path / "json", **OPTIONS)
    from_parquet = segment(parquet, model, tmp_path / "parquet", **OPTIONS)
    assert [r.status for r in from_json] == [r.status for r in from_parquet] == ["complete"] * 2
    for name in ("scene-0", "scene-1"):
        a = _arrays(tmp_path / "json" / f"{name}.zarr")
        b = _arrays(tmp_path / "parquet" / f"{name}.zarr")
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
        written = tmp_path / "parquet" / f"{name}.item.json"
        made = pystac.Item.from_file(str(written))
        # the core schemas ship with pystac; extension schemas would need the network
        JsonSchemaSTACValidator().validate_core(
            made.to_dict(), pystac.STACObjectType.ITEM, pystac.get_stac_version(), str(written)
        )
        source = made.get_links("derived_from")
        assert source[0].href == str(parquet) and "parquet" in (source[0].media_type or "")


def test_a_geoparquet_collection_in_s3(tmp_path, s3):
    collection, _ = write_item_collection(tmp_path)
    parquet = _as_geoparquet(collection)
    bucket = s3.new_bucket()
    fs = s3fs.S3FileSystem(
        key=s3.key_id, secret=s3.secret, endpoint_url=s3.url, skip_instance_cache=True
    )
    for path in [parquet, *tmp_path.glob("scene-1_B0*.tif")]:
        fs.put_file(str(path), f"{bucket}/stac/{path.name}")
    uri = f"s3://{bucket}/stac/items.parquet"
    assert [n for n, _ in collect_inputs(uri)] == ["scene-0", "scene-1"]
    model = _model()
    remote = segment(f"{uri}#scene-1", model, tmp_path / "remote.zarr", **OPTIONS)
    local = segment(f"{collection}#scene-1", model, tmp_path / "local.zarr", **OPTIONS)
    assert remote.status == local.status == "complete", remote.error
    a, b = _arrays(tmp_path / "local.zarr"), _arrays(tmp_path / "remote.zarr")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_a_parquet_file_that_is_not_stac_is_one_line(tmp_path):
    plain = tmp_path / "table.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), plain)
    with pytest.raises(ReaderError, match="stac-geoparquet"):
        collect_inputs(str(plain))
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ReaderError, match="Parquet"):
        collect_inputs(str(tmp_path / "broken.parquet"))
    with pytest.raises(ReaderError, match="not found"):
        collect_inputs(str(tmp_path / "missing.parquet"))


def test_the_command_takes_a_geoparquet_collection(tmp_path):
    import subprocess
    import sys

    from segflow.models.files import save_model

    collection, _ = write_item_collection(tmp_path)
    parquet = _as_geoparquet(collection)
    loaded = _model()
    save_model(loaded.module, loaded.meta, tmp_path / "m.safetensors")
    segflow = str(Path(sys.executable).parent / "segflow")
    common = ["-m", str(tmp_path / "m.safetensors"), "--device", "cpu", "--no-flow"]
    batch = subprocess.run(
        [segflow, "run", str(parquet), "-o", str(tmp_path / "maps"), *common],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert batch.returncode == 0, batch.stderr
    assert sorted(p.name for p in (tmp_path / "maps").glob("*.zarr")) == [
        "scene-0.zarr",
        "scene-1.zarr",
    ]
    missing = subprocess.run(
        [segflow, "run", f"{parquet}#scene-7", "-o", str(tmp_path / "x.zarr"), *common],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert "scene-7" in missing.stderr and not (tmp_path / "x.zarr").exists()
