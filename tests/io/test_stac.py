"""STAC as batch input: assets chosen by eo:bands common names, in the model's order, on one grid."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import numpy as np
import pystac
import pytest
import zarr

from segflow import segment
from segflow.errors import ConfigError, ReaderError
from segflow.inputs import collect_inputs, is_one_input
from segflow.io.open import open_source
from segflow.models import LoadedModel
from tests.conftest import pixel_model
from tests.io.stac_fixtures import ORIGIN, write_item, write_item_collection

BANDS = ("red", "green", "blue")
OPTIONS = {"patch_size": 64, "chunk_size": 64, "device": "cpu", "probabilities": "uint8"}


def _model(band_names=BANDS) -> LoadedModel:
    loaded = pixel_model([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]], [0.0, 0.2, 0.1])
    return dataclasses.replace(
        loaded, meta=loaded.meta.model_copy(update={"band_names": band_names})
    )


def _labels(store: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(store, mode="r")
    return {name: np.asarray(group[name][...]) for name in ("labels", "probabilities")}


def test_an_item_collection_equals_runs_on_the_stacked_files(tmp_path):
    collection, stacked = write_item_collection(tmp_path)
    model = _model()
    results = segment(collection, model, tmp_path / "out", **OPTIONS)
    assert isinstance(results, list) and [r.status for r in results] == ["complete"] * 2
    for index, reference in enumerate(stacked):
        local = segment(reference, model, tmp_path / f"ref{index}.zarr", **OPTIONS)
        assert local.status == "complete"
        a, b = (
            _labels(tmp_path / f"ref{index}.zarr"),
            _labels(tmp_path / "out" / f"scene-{index}.zarr"),
        )
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])


def test_bands_at_another_resolution_come_onto_the_finest_grid(tmp_path):
    collection, stacked = write_item_collection(tmp_path, coarse_blue=True)
    source = open_source(f"{collection}#scene-1", band_names=BANDS)
    assert source.spatial_shape == (96, 128) and source.band_names == BANDS
    assert source.geometry.transform[0] == 10.0
    whole = source.read((slice(0, 96), slice(0, 128))).data
    with open_source(stacked[1]) as reference:
        np.testing.assert_array_equal(whole, reference.read((slice(0, 96), slice(0, 128))).data)
    part = source.read((slice(33, 71), slice(5, 99))).data  # odd windows across 20 m pixels
    np.testing.assert_array_equal(part, whole[:, 33:71, 5:99])


def test_the_output_item_validates_and_links_its_source(tmp_path):
    collection, _ = write_item_collection(tmp_path)
    result = segment(f"{collection}#scene-0", _model(), tmp_path / "scene-0.zarr", **OPTIONS)
    assert result.status == "complete"
    written = Path(result.stats["stac_item"])
    assert written == tmp_path / "scene-0.item.json"
    item = pystac.Item.from_file(written)
    # the core schemas ship with pystac; extension schemas would need the network
    from pystac.validation.stac_validator import JsonSchemaSTACValidator

    JsonSchemaSTACValidator().validate_core(
        item.to_dict(), pystac.STACObjectType.ITEM, pystac.get_stac_version(), str(written)
    )
    from pystac.extensions.projection import ProjectionExtension
    from pystac.extensions.raster import RasterExtension

    proj = ProjectionExtension.ext(item)
    assert proj.epsg == 32618 and proj.shape == [96, 128]
    assert proj.transform[:3] == [10.0, 0.0, ORIGIN[0]]
    bands = RasterExtension.ext(item.assets["labels"]).bands
    assert bands is not None and bands[0].nodata == 255 and bands[0].data_type == "uint8"
    source = [link for link in item.links if link.rel == "derived_from"]
    assert source and source[0].get_absolute_href().endswith("items.json")
    assert item.datetime == dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    west, south, east, north = item.bbox
    assert -78 < west < east < -77 and 40 < south < north < 41  # UTM 18N: 200 km west of -75°


def test_a_static_catalog_is_a_batch_of_its_items(tmp_path):
    catalog = pystac.Catalog("scenes", "two scenes")
    for index in range(2):
        folder = tmp_path / "src" / str(index)
        folder.mkdir(parents=True)
        item, _ = write_item(folder, f"scene-{index}", seed=index)
        for asset in item.assets.values():
            asset.href = str(folder / asset.href)
        catalog.add_item(item)
    catalog.normalize_hrefs(str(tmp_path / "catalog"))
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    found = collect_inputs(str(tmp_path / "catalog" / "catalog.json"))
    assert sorted(name or "" for name, _ in found) == ["scene-0", "scene-1"]
    assert not is_one_input(str(tmp_path / "catalog" / "catalog.json"))
    one = next(str(p) for name, p in found if name == "scene-0")
    assert is_one_input(one)
    assert open_source(one, band_names=BANDS).band_names == BANDS


def test_bands_must_be_named_and_offered(tmp_path):
    collection, _ = write_item_collection(tmp_path)
    with pytest.raises(ConfigError, match="model names no bands"):
        open_source(f"{collection}#scene-0", band_names=None)
    with pytest.raises(ReaderError, match="no band 'nir'"):
        open_source(f"{collection}#scene-0", band_names=("red", "nir", "blue"))
    with pytest.raises(ReaderError, match="no item 'scene-9'"):
        open_source(f"{collection}#scene-9", band_names=BANDS)
    (tmp_path / "other.json").write_text('{"type": "Topology"}')
    with pytest.raises(ReaderError, match="not a STAC Item"):
        collect_inputs(str(tmp_path / "other.json"))


def test_the_command_takes_an_item_collection_and_one_item_of_it(tmp_path):
    import subprocess
    import sys

    from segflow.models.files import save_model

    collection, _ = write_item_collection(tmp_path)
    loaded = _model()
    save_model(loaded.module, loaded.meta, tmp_path / "m.safetensors")
    segflow = str(Path(sys.executable).parent / "segflow")
    common = ["-m", str(tmp_path / "m.safetensors"), "--device", "cpu", "--no-flow"]
    batch = subprocess.run(
        [segflow, "run", str(collection), "-o", str(tmp_path / "maps"), *common],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert batch.returncode == 0, batch.stderr
    assert sorted(p.name for p in (tmp_path / "maps").glob("*.zarr")) == [
        "scene-0.zarr",
        "scene-1.zarr",
    ]
    one = subprocess.run(
        [segflow, "run", f"{collection}#scene-1", "-o", str(tmp_path / "one.zarr"), *common],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr
    assert (tmp_path / "one.item.json").is_file()
