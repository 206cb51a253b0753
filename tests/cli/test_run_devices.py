"""segflow run --devices: one worker per device, checked in one line before any work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.conftest import textured, write_tif
from tests.engine.test_cluster import unet_file

SEGFLOW = str(Path(sys.executable).parent / "segflow")


def run(*args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **env}
    return subprocess.run(
        [SEGFLOW, "run", *map(str, args)], capture_output=True, text=True, timeout=300, env=environ
    )


@pytest.fixture
def scene(tmp_path: Path) -> tuple[Path, Path]:
    image = write_tif(tmp_path / "in.tif", textured((300, 260), 3, seed=7), tile=None)
    return image, unet_file(tmp_path)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--devices", "cuda:0,cuda:1"], "device cuda:0 does not exist: 0 CUDA GPU(s) visible"),
        (["--devices", "all"], "devices 'all' found no CUDA GPU here"),
        (["--devices", "mps"], "devices takes CUDA devices (cuda:0,cuda:1, 0,1 or all)"),
        (["--devices", "0,1", "--scheduler", "threads"], "--scheduler threads contradicts it"),
        (["--devices", "0,1", "--scheduler", "tcp://127.0.0.1:1"], "contradicts it"),
        (["--devices", "0,1", "--workers", "3"], "workers 3 contradicts devices cuda:0,cuda:1"),
        (["--devices", "0", "--device", "cpu"], "device 'cpu' contradicts devices cuda:0"),
    ],
)
def test_devices_that_cannot_run_fail_in_one_line_before_any_work(scene, tmp_path, flags, message):
    image, model = scene
    # no GPU visible, whatever the machine has
    result = run(image, "-m", model, "-o", tmp_path / "o.zarr", *flags, CUDA_VISIBLE_DEVICES="")
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.slow
def test_two_cpu_workers_write_the_threaded_bytes(scene, tmp_path, prefect_server):
    image, model = scene
    args = ["--patch-size", "64", "--chunk-size", "64", "--region-size", "1"]
    args += ["--probabilities", "uint8", "--no-progress"]
    threads = run(image, "-m", model, "-o", tmp_path / "t.zarr", *args, "--no-flow")
    assert threads.returncode == 0, threads.stderr
    # recorded as a flow run: the flow starts the workers of the devices
    devices = run(
        image, "-m", model, "-o", tmp_path / "d.zarr", *args, "--devices", "cpu,cpu",
        PREFECT_API_URL=prefect_server,
    )  # fmt: skip
    assert devices.returncode == 0, devices.stderr
    one = zarr.open_group(tmp_path / "t.zarr", mode="r")
    two = zarr.open_group(tmp_path / "d.zarr", mode="r")
    np.testing.assert_array_equal(two["labels"][...], one["labels"][...])
    np.testing.assert_array_equal(two["probabilities"][...], one["probabilities"][...])
    assert two.attrs["segflow"]["complete"] is True
