"""One writer per store: a second run is refused in one line; a killed holder blocks nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from segflow.errors import OutputError
from segflow.io.locks import lock_path, store_lock

HOLD = (
    "import sys, time; from pathlib import Path; from segflow.io.locks import store_lock\n"
    "with store_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)\n"
)


def _holder(store: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(store)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


def test_a_second_writer_is_refused_while_the_first_holds_the_store(tmp_path):
    store = tmp_path / "o.zarr"
    holder = _holder(store)
    try:
        expected = rf"being written by another run \(pid {holder.pid} "
        with pytest.raises(OutputError, match=expected), store_lock(store):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_blocks_nothing(tmp_path):
    store = tmp_path / "o.zarr"
    holder = _holder(store)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert lock_path(store).exists()  # left behind by the kill, but not held
    with store_lock(store):
        pass
    assert not lock_path(store).exists()  # removed by the run that ended normally


def test_segment_refuses_a_store_another_run_is_writing(tmp_path):
    from segflow import segment
    from tests.conftest import textured, threshold_model, write_tif

    path = write_tif(tmp_path / "in.tif", textured((32, 32), 1), tile=None)
    store = tmp_path / "o.zarr"
    holder = _holder(store)
    try:
        with pytest.raises(OutputError, match="being written by another run"):
            segment(path, threshold_model(1.0, spatial_dims=2), store, device="cpu")
        assert not store.exists()  # refused before anything was created
    finally:
        holder.kill()
        holder.wait()
    segment(path, threshold_model(1.0, spatial_dims=2), store, device="cpu")
    assert store.is_dir()


CONTEND = (
    "import os, sys, time; from pathlib import Path\n"
    "from segflow.errors import OutputError; from segflow.io.locks import store_lock\n"
    "store, inside = Path(sys.argv[1]), Path(sys.argv[2])\n"
    "held = overlaps = 0; end = time.monotonic() + float(sys.argv[3])\n"
    "while time.monotonic() < end:\n"
    "    try:\n"
    "        with store_lock(store):\n"
    "            held += 1\n"
    "            try:\n"
    "                os.close(os.open(inside, os.O_CREAT | os.O_EXCL))\n"
    "            except FileExistsError:\n"
    "                overlaps += 1; continue\n"
    "            time.sleep(0.0005); os.unlink(inside)\n"
    "    except OutputError:\n"
    "        pass\n"
    "print(held, overlaps)\n"
)


def test_runs_that_start_and_stop_in_a_storm_never_hold_the_store_together(tmp_path):
    """A run that opened the lock file just before its holder removed it must not lock
    the removed file while a third run locks the new one: at most one holder, ever."""
    store, inside = tmp_path / "o.zarr", tmp_path / "inside"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", CONTEND, str(store), str(inside), "3"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    counts = [tuple(map(int, r.communicate(timeout=60)[0].split())) for r in racers]
    assert sum(held for held, _ in counts) > 100  # the lock really changed hands often
    assert sum(overlaps for _, overlaps in counts) == 0
