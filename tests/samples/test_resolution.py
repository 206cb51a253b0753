"""The resolution demo: the coarse views are block means of the fine scene on the same
ground, and the command trains, runs and scores the three cases (at a tiny size)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from typer.testing import CliRunner

from segflow.errors import ConfigError
from segflow.models import read_meta
from segflow.samples.resolution import (
    coarsen_image,
    coarsen_truth,
    run_resolution_demo,
    write_scene_pair,
)


def test_coarsening_is_block_mean_and_block_majority() -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 5000, size=(2, 8, 12)).astype(np.uint16)
    means = coarsen_image(data, 4)
    assert means.shape == (2, 2, 3)
    assert means[1, 1, 2] == round(float(data[1, 4:8, 8:12].mean()))
    truth = np.zeros((4, 4), dtype=np.uint8)
    truth[:2, :2] = [[1, 1], [1, 2]]  # majority 1
    truth[:2, 2:] = [[2, 3], [3, 2]]  # a tie: the lower class
    truth[2:, :2] = 3
    np.testing.assert_array_equal(coarsen_truth(truth, 2, 4), [[1, 2], [3, 0]])


def test_the_coarse_view_covers_the_same_ground(tmp_path: Path) -> None:
    coarse = (tmp_path / "c.tif", tmp_path / "c_truth.tif")
    fine = (tmp_path / "f.tif", tmp_path / "f_truth.tif")
    write_scene_pair(coarse, 64, seed=3, fine=fine, factor=2)
    with rasterio.open(fine[0]) as f, rasterio.open(coarse[0]) as c:
        assert (f.width, c.width) == (64, 32)
        assert c.transform.a == 2 * f.transform.a and c.bounds == f.bounds and c.crs == f.crs
        np.testing.assert_array_equal(c.read(), coarsen_image(f.read(), 2))
    with rasterio.open(fine[1]) as f, rasterio.open(coarse[1]) as c:
        np.testing.assert_array_equal(c.read(1), coarsen_truth(f.read(1), 2, 4))
    with pytest.raises(ConfigError, match="multiple of 32"):
        write_scene_pair(coarse, 70, seed=3, factor=2)


def test_the_command_trains_runs_and_scores_the_three_cases(tmp_path: Path) -> None:
    from segflow.cli.main import app

    out = tmp_path / "demo"
    args = ["demo", "--resolution", "--size", "small", "--factor", "4", "-o", str(out)]
    result = CliRunner().invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("40 m input (the model's own resolution)") for line in lines)
    assert any(line.startswith("10 m input, not resampled") for line in lines)
    assert read_meta(out / "landcover-40m.safetensors").resolution == 40.0
    provenance = [
        zarr.open_group(out / f"run{i}.zarr", mode="r").attrs["segflow"]["provenance"]
        for i in range(3)
    ]
    assert "resampling" not in provenance[0]  # the model's own resolution
    assert provenance[1]["resampling"]["model_spacing"] == [40.0, 40.0]
    assert "resampling" not in provenance[2]
    assert any("--no-resample" in w for w in provenance[2]["warnings"])
    with pytest.raises(ConfigError, match="factor must be"):
        run_resolution_demo(tmp_path / "x", size="small", factor=3)
