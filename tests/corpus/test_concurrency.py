"""Two real ``segflow run`` processes on one output at once: one writes, the other is
refused in one line, and the store is the one an undisturbed run makes, bit for bit.
The same for two ``--resume``s of a store a killed run left half written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tests.conftest import save, threshold_model, write_tif
from tests.corpus.test_corpus import looks_complete

SEGFLOW = str(Path(sys.executable).parent / "segflow")
# many small region tasks: a run lasts long enough to be caught half way
OPTIONS = ["--no-flow", "--no-progress", "--chunk-size", "64", "--region-size", "64"]
OPTIONS += ["--scheduler", "sync", "--probabilities", "uint8"]
REFUSED = ("being written by another run", "exists; pass --resume")


def _inputs(root: Path, size: int) -> tuple[Path, Path]:
    noise = np.random.default_rng(1).integers(0, 200, (1, size, size)).astype(np.uint8)
    image = write_tif(root / "noise.tif", noise, tile=256)
    return image, save(threshold_model(100.0, spatial_dims=2), root / "m.safetensors")


def _launch(*args: str | Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    return subprocess.Popen(
        [SEGFLOW, "run", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _both(*runs: subprocess.Popen[str]) -> list[tuple[int, str]]:
    return [(r.wait(timeout=300), r.communicate()[1]) for r in runs]


def _records(store: Path) -> int:
    done = store / "_segflow" / "done"
    return sum(1 for _, _, names in os.walk(done) for n in names if n != "zarr.json")


def _files(store: Path) -> dict[str, bytes]:
    """Every chunk and completion record (metadata carries times and is left out)."""
    return {
        str(p.relative_to(store)): p.read_bytes()
        for p in sorted(store.rglob("*"))
        if p.is_file() and p.name != "zarr.json"
    }


def _one_writer(outcomes: list[tuple[int, str]], *, both_may_finish: bool = False) -> None:
    """One run finished; the other was refused with one line and no traceback (or, for
    resumes, found the store already finished by the first and had nothing to do)."""
    codes = sorted(code for code, _ in outcomes)
    assert codes == [0, 1] or (both_may_finish and codes == [0, 0]), outcomes
    for code, err in outcomes:
        if code == 1:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in err, err
            assert any(why in lines[0] for why in REFUSED), lines[0]


def test_two_runs_on_one_output_at_once(tmp_path: Path) -> None:
    image, model = _inputs(tmp_path, 512)
    reference, store = tmp_path / "reference.zarr", tmp_path / "out.zarr"
    assert _both(_launch(image, "-m", model, "-o", reference, *OPTIONS))[0][0] == 0
    _one_writer(_both(*(_launch(image, "-m", model, "-o", store, *OPTIONS) for _ in range(2))))
    assert looks_complete(store) and _files(store) == _files(reference)


def test_two_resumes_of_a_killed_run_at_once(tmp_path: Path) -> None:
    image, model = _inputs(tmp_path, 1024)
    reference, store = tmp_path / "reference.zarr", tmp_path / "out.zarr"
    assert _both(_launch(image, "-m", model, "-o", reference, *OPTIONS))[0][0] == 0
    total = _records(reference)

    killed = _launch(image, "-m", model, "-o", store, *OPTIONS)
    deadline = time.monotonic() + 120
    while _records(store) < 4 and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert 0 < _records(store) < total and not looks_complete(store)  # half written

    resumes = [_launch(image, "-m", model, "-o", store, *OPTIONS, "--resume") for _ in range(2)]
    _one_writer(_both(*resumes), both_may_finish=True)
    assert looks_complete(store) and _files(store) == _files(reference)
