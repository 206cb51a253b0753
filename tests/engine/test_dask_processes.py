"""A real ``dask scheduler`` and two ``dask worker`` processes on loopback, as users run them.

The workers start in another folder than the client, so relative paths given to
segflow must leave the client as absolute ones; the result equals a threaded run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr

from segflow import segment
from tests.conftest import save, textured, threshold_model, write_tif

DASK = str(Path(sys.executable).parent / "dask")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(url: str, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {seconds} s")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    elsewhere = tmp_path_factory.mktemp("workers-cwd")
    port, dashboard = _free_port(), _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    scheduler = [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port)]
    scheduler += ["--dashboard-address", f"127.0.0.1:{dashboard}"]
    worker = [DASK, "worker", address, "--nthreads", "1", "--preload-nanny", "segflow.heap"]
    worker += ["--no-dashboard", "--local-directory", str(elsewhere)]
    processes = [subprocess.Popen(scheduler, cwd=elsewhere, env=env, stderr=subprocess.DEVNULL)]
    try:
        _wait_for(f"http://127.0.0.1:{dashboard}/health")
        for _ in range(2):
            processes.append(
                subprocess.Popen(worker, cwd=elsewhere, env=env, stderr=subprocess.DEVNULL)
            )
        from distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
        yield address, f"http://127.0.0.1:{dashboard}/status"
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(elsewhere, ignore_errors=True)


@pytest.mark.slow
def test_relative_paths_on_a_real_cluster_give_the_threaded_answer(cluster, tmp_path, monkeypatch):
    address, _ = cluster
    monkeypatch.chdir(tmp_path)
    write_tif(Path("in.tif"), textured((96, 80), 1), tile=None)
    save(threshold_model(100.0, spatial_dims=2), Path("m.safetensors"))
    options = dict(patch_size=32, chunk_size=32, region_size=32, device="cpu")
    segment("in.tif", "m.safetensors", "threads.zarr", **options)
    segment("in.tif", "m.safetensors", "cluster.zarr", scheduler=address, **options)
    threads = zarr.open_group("threads.zarr", mode="r")["labels"][...]
    on_cluster = zarr.open_group("cluster.zarr", mode="r")["labels"][...]
    np.testing.assert_array_equal(on_cluster, threads)


@pytest.mark.slow
def test_workers_share_the_cores_and_start_tuned(cluster):
    from distributed import Client

    from segflow.heap import heap_tuned
    from segflow.models.predictor import _default_threads

    address, _ = cluster
    with Client(address, timeout="60s") as client:
        # as inside a region task: one per worker
        futures = [
            client.submit(_default_threads, pure=False, workers=[w])
            for w in client.scheduler_info()["workers"]
        ]
        threads = client.gather(futures)
        tuned = list(client.run(heap_tuned).values())
    assert threads == [max(1, (os.cpu_count() or 1) // 2)] * 2  # two workers on one machine
    assert tuned == [True, True]


@pytest.mark.slow
def test_the_dashboard_page_loads(cluster):
    _, status = cluster
    with urllib.request.urlopen(status, timeout=30) as response:
        assert response.status == 200
        assert b"Dask" in response.read()
