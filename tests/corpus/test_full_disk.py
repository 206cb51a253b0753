"""A run whose output fills a real (small) file system: one line, an incomplete store that
says so, and ``--resume`` completes it bit for bit once space is freed.

The small file system is a tmpfs, or a loop-mounted ext4 image where tmpfs is refused;
both need root (or CAP_SYS_ADMIN): elsewhere the tests skip with the reason. In a CI
container without it, ``unshare --user --map-root-user --mount pytest ...`` runs them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import save, threshold_model, write_tif
from tests.corpus.test_corpus import looks_complete

SEGFLOW = str(Path(sys.executable).parent / "segflow")
OUTPUT_ROOM = 300 * 1024  # left free for the run; its store needs about 800 KB


def _mount(args: list[str]) -> str | None:
    """None once mounted, else why not."""
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    return None if done.returncode == 0 else (done.stderr.strip() or f"exit {done.returncode}")


def _mount_small_disk(where: Path, image: Path) -> str | None:
    """Mount a 16 MB file system at ``where``: a tmpfs, else an ext4 image on a loop device.

    Room for the store and the run's scratch folder of handed-on patches once the
    ballast is gone; the ballast takes the rest before that.
    """
    if shutil.which("mount") is None:
        return "no mount command"
    tmpfs = _mount(["-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)])
    if tmpfs is None:
        return None
    if shutil.which("mkfs.ext4") is None:
        return f"tmpfs: {tmpfs}; no mkfs.ext4 for a loop image"
    with image.open("wb") as fh:
        fh.truncate(16 * 2**20)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-b", "4096", "-m", "0", str(image)],
        check=True,
        capture_output=True,
    )
    loop = _mount(["-o", "loop", str(image), str(where)])
    return None if loop is None else f"tmpfs: {tmpfs}; loop image: {loop}"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "disk"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root (or run under unshare -rm)")
    why = _mount_small_disk(where, tmp_path / "disk.img")
    if why is not None:
        pytest.skip(f"cannot mount a small file system here ({why})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """A ballast file that leaves ``leave`` bytes free on ``disk``."""
    stats = os.statvfs(disk)
    free = stats.f_bavail * stats.f_frsize
    ballast = disk / "ballast"
    with ballast.open("wb") as fh:
        fh.write(b"\1" * max(0, free - leave))
    return ballast


def _segflow(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    return subprocess.run(
        [SEGFLOW, "run", *map(str, args)], capture_output=True, text=True, timeout=180, env=env
    )


def _inputs(root: Path) -> tuple[Path, Path]:
    """Noise (it does not compress away) and a threshold model."""
    noise = np.random.default_rng(0).integers(0, 200, (1, 512, 512)).astype(np.uint8)
    image = write_tif(root / "noise.tif", noise, tile=256)
    return image, save(threshold_model(100.0, spatial_dims=2), root / "m.safetensors")


OPTIONS = (
    "--no-flow",
    "--no-progress",
    "--chunk-size",
    "64",
    "--region-size",
    "128",
    "--probabilities",
    "float16",
)


def _chunk_bytes(store: Path) -> dict[str, bytes]:
    """Every chunk file of the store's arrays and completion records, by its key."""
    return {
        str(path.relative_to(store)): path.read_bytes()
        for path in sorted(store.rglob("*"))
        if path.is_file() and path.name != "zarr.json"
    }


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_a_full_disk_fails_in_one_line_and_resume_finishes_it_bit_for_bit(
    small_disk: Path, tmp_path: Path
) -> None:
    image, model = _inputs(tmp_path)
    reference = tmp_path / "reference.zarr"
    assert _segflow(image, "-m", model, "-o", reference, *OPTIONS).returncode == 0

    ballast = _fill(small_disk, OUTPUT_ROOM)
    store = small_disk / "out.zarr"
    line = _one_line(_segflow(image, "-m", model, "-o", store, *OPTIONS))
    assert str(image) in line and "region rows " in line, line
    assert "No space left on device [ENOSPC]" in line and "free some space" in line, line
    assert f"{store} is incomplete (" in line and "--resume" in line, line
    assert store.is_dir() and not looks_complete(store)
    assert not (small_disk / ".out.zarr.lock").exists()
    inspect = subprocess.run(
        [SEGFLOW, "inspect", str(store)], capture_output=True, text=True, timeout=120
    )
    assert "incomplete" in inspect.stdout, inspect.stdout + inspect.stderr

    ballast.unlink()  # space freed
    resumed = _segflow(image, "-m", model, "-o", store, *OPTIONS, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert looks_complete(store)
    assert _chunk_bytes(store) == _chunk_bytes(reference)


def test_a_disk_already_full_fails_in_one_line_before_any_work(
    small_disk: Path, tmp_path: Path
) -> None:
    image, model = _inputs(tmp_path)
    _fill(small_disk, 0)
    store = small_disk / "out.zarr"
    line = _one_line(_segflow(image, "-m", model, "-o", store, *OPTIONS))
    assert "No space left on device" in line and str(store) in line, line
    assert not looks_complete(store)
    assert not (small_disk / ".out.zarr.lock").exists()
