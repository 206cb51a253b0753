"""The main job at a reduced size: every output is written, opens, and is accurate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from PIL import Image
from rich.console import Console

from segflow.models import read_meta
from segflow.samples import landcover_classes
from segflow.samples.demo import (
    LANDCOVER_MODEL,
    PHANTOM_MODEL,
    bundled_model,
    print_summary,
    run_demo,
)


def test_bundled_models_are_small_and_described() -> None:
    total = 0
    for name in (LANDCOVER_MODEL, PHANTOM_MODEL):
        path = bundled_model(name)
        total += path.stat().st_size
        meta = read_meta(path)
        assert meta.normalization is not None
        assert meta.provenance["validation"]["miou"] > 0.9
        assert {"seed", "epochs", "data", "steps"} <= set(meta.provenance)
    assert total < 10e6
    assert [c.name for c in read_meta(bundled_model(LANDCOVER_MODEL)).classes] == [
        c.name for c in landcover_classes()
    ]


@pytest.mark.slow
def test_small_demo_writes_every_output(tmp_path: Path) -> None:
    logs: list[str] = []
    result = run_demo(tmp_path / "demo", size="small", use_flow=False, log=logs.append)
    assert [o.name for o in result.outputs] == ["landcover", "phantom"]
    assert result.summary is not None and json.loads(result.summary.read_text())["outputs"]
    # the small phantom's organs are smaller (in voxels) than most training phantoms'
    floor = {"landcover": 0.9, "phantom": 0.7}
    for out in result.outputs:
        assert out.zarr.is_dir() and out.preview is not None and out.statistics is not None
        assert out.accuracy["miou"] > floor[out.name], out.accuracy
        assert out.unpredicted_pixels == 0
        stats = json.loads(out.statistics.read_text())
        assert stats
        png = Image.open(out.preview)
        assert png.format == "PNG" and min(png.size) > 100

    land = result.outputs[0]
    ds = xr.open_zarr(land.zarr)
    assert ds["labels"].shape == (512, 512)
    assert ds["labels"].rio.crs.to_epsg() == 32633
    # the preview shows the class colours over the image
    colors = np.asarray(Image.open(land.preview).convert("RGB")).reshape(-1, 3)
    assert len(np.unique(colors, axis=0)) > 50

    console = Console(record=True, width=120)
    print_summary(result, console)
    text = console.export_text()
    assert "mIoU" in text and str(land.zarr) in text and "preview" in text
