"""Region tasks that depend on each other (handed-on patches) still use every worker."""

from __future__ import annotations

from collections import Counter

import pytest

from segflow import segment
from segflow.engine.cluster import device_cluster
from segflow.engine.execute import TASK_PREFIX
from tests.conftest import textured, write_tif
from tests.engine.test_cluster import unet_file


@pytest.mark.slow
def test_a_run_whose_tasks_hand_patches_on_uses_every_worker(tmp_path):
    from distributed import get_task_stream

    path = write_tif(tmp_path / "in.tif", textured((256, 256), 3, seed=7), tile=None)
    model = unet_file(tmp_path)
    options = dict(patch_size=64, overlap=0.25, chunk_size=64, region_size=64, device="cpu")
    with device_cluster(["cpu", "cpu"]) as client, get_task_stream(client) as stream:
        segment(path, model, tmp_path / "o.zarr", client=client, **options)
        names = {a: w["name"] for a, w in client.scheduler_info()["workers"].items()}
    ran = Counter(names[t["worker"]] for t in stream.data if TASK_PREFIX in str(t["key"]))
    assert sum(ran.values()) == 16
    assert set(ran) == {"device-0", "device-1"} and min(ran.values()) >= 4, ran
