"""(k) Soak: killed runs resume bit-identically; a long batch in one process does not grow.

a. Kill/resume: one uninterrupted ``segflow run --no-flow`` of a 1536^2 x3 uint8
   GeoTIFF cut into 16 x 16 chunks, one region task each (256 tasks), near-free
   model, labels and uint8 probabilities: the reference. Then ``--kills`` runs of
   the same command, each SIGKILLed at a random moment (seeded) between its first
   completion record and the end the reference run took, each followed by
   ``segflow run --resume``; every resumed store's labels, probabilities and
   summary counts must equal the reference's bit for bit. A kill that lands after
   the run finished tests nothing: it is re-drawn (and counted). A second
   uninterrupted run is compared with the reference too: a difference there is
   the run's own nondeterminism, not the resume's (``--torch-threads 1`` pins
   SEGFLOW_TORCH_THREADS for every command run, to tell the two apart).
b. Memory: ``--scans`` small NIfTI scans (48^3 int16) segmented one after another
   through ``segflow.segment`` in one fresh process (``as_the_command()``
   first, as the command does), the model given as a file each time; RSS after
   scan 10 and after the last.

Targets (issue 18): 10/10 resumed stores identical; RSS after scan 200 within 10 %
of scan 10.

    uv run python -m benchmarks.bench_soak [--kills 10] [--scans 200] [--seed 0] [--torch-threads N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    Check,
    as_the_command,
    growth_check,
    near_free_model,
    report,
    run_subprocess_json,
    write_geotiff,
)

SEGFLOW = str(Path(sys.executable).with_name("segflow"))
SCENE = 1536
CHUNKS_PER_SIDE = 16  # 256 chunks, one region task each
SCAN = 48
RSS_FIRST_SCAN = 10
TARGET_RSS_GROWTH = 0.10
REDRAWS = 3  # attempts per kill before it counts as untested
POLL_S = 0.01
ENV = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
ARRAYS = ("labels", "probabilities")


def _model_file(path: Path, *, in_channels: int, classes: int, spatial_dims: int) -> Path:
    from segflow.models import save_model

    model = near_free_model(in_channels, classes, spatial_dims=2 if spatial_dims == 2 else 3)
    save_model(model.module, model.meta, path)
    return path


# --- a. kill / resume --------------------------------------------------------------


def _records(store: Path) -> int:
    """Completion records written so far (chunk files of ``_segflow/done``)."""
    done = store / "_segflow" / "done"
    if not done.is_dir():
        return 0
    return sum(1 for _, _, files in os.walk(done) for name in files if name != "zarr.json")


@dataclass
class Timed:
    first_record_s: float  # from launch to the first completion record
    end_s: float  # from launch to exit
    returncode: int


def _launch(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [SEGFLOW, *args], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _wait_first_record(proc: subprocess.Popen[bytes], store: Path, start: float) -> float:
    """Seconds from ``start`` until the store holds a completion record (or the run ended)."""
    deadline = start + 300
    while time.monotonic() < deadline:
        if _records(store) or proc.poll() is not None:
            break
        time.sleep(POLL_S)
    return time.monotonic() - start


def _reference_run(args: list[str], store: Path) -> Timed:
    start = time.monotonic()
    proc = _launch([*args, "-o", str(store)])
    first = _wait_first_record(proc, store, start)
    _, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"reference run failed: {err.decode().strip()}")
    return Timed(first, time.monotonic() - start, proc.returncode)


@dataclass
class Killed:
    complete: bool  # the run had finished before the kill
    records: int  # completion records at the kill
    after_first_s: float  # seconds after the first record it was killed


def _killed_run(args: list[str], store: Path, delay: float) -> Killed:
    start = time.monotonic()
    proc = _launch([*args, "-o", str(store)])
    first = _wait_first_record(proc, store, start)
    time.sleep(delay)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    killed_at = time.monotonic() - start
    import zarr

    info = zarr.open_group(store, mode="r").attrs.get("segflow", {})
    complete = bool(isinstance(info, dict) and info.get("complete"))
    return Killed(complete, _records(store), killed_at - first)


def _contents(store: Path) -> dict[str, Any]:
    """The store's arrays (labels, probabilities) and its completion flag and summary counts."""
    import zarr

    group = zarr.open_group(store, mode="r")
    out: dict[str, Any] = {}
    for name in ARRAYS:
        if name in group:
            array = group[name]
            assert isinstance(array, zarr.Array)
            out[name] = np.asarray(array[...])
    info = group.attrs["segflow"]
    assert isinstance(info, dict)
    summary = info["summary"]
    out["complete"] = info["complete"]
    out["class_pixel_counts"] = summary["class_pixel_counts"]
    out["valid_pixels"] = summary["valid_pixels"]
    return out


def _differences(expected: dict[str, Any], got: dict[str, Any]) -> dict[str, str]:
    """What differs, bit for bit: per array the count of differing values and the largest gap."""
    found: dict[str, str] = {}
    for key, want in expected.items():
        have = got.get(key)
        if not isinstance(want, np.ndarray):
            if have != want:
                found[key] = f"{have!r} != {want!r}"
            continue
        if not isinstance(have, np.ndarray) or have.dtype != want.dtype or have.shape != want.shape:
            found[key] = "missing, or another dtype or shape"
            continue
        differ = np.frombuffer(have.tobytes(), np.uint8) != np.frombuffer(want.tobytes(), np.uint8)
        if differ.any():
            values = have != want
            gap = np.abs(have[values].astype(np.float64) - want[values].astype(np.float64))
            found[key] = (
                f"{int(values.sum())} of {want.size} values differ "
                f"(largest gap {float(gap.max()) if gap.size else 0:g})"
            )
    return found


def kill_resume_soak(kills: int, seed: int, tmp: Path) -> tuple[dict[str, Any], list[Check]]:
    scene = write_geotiff(tmp / "scene.tif", SCENE, tile=256)
    model = _model_file(tmp / "model.safetensors", in_channels=3, classes=6, spatial_dims=2)
    chunk = SCENE // CHUNKS_PER_SIDE
    args = [
        "run",
        str(scene),
        "-m",
        str(model),
        "--chunk-size",
        str(chunk),
        "--region-size",
        "1",
        "--patch-size",
        str(chunk),
        "--probabilities",
        "uint8",
        "--device",
        "cpu",
        "--no-flow",
        "--no-progress",
    ]
    reference = tmp / "reference.zarr"
    ref = _reference_run(args, reference)
    expected = _contents(reference)
    tasks = _records(reference)
    window = ref.end_s - ref.first_record_s
    # control: does a second uninterrupted run of the same command match the first?
    _reference_run(args, tmp / "control.zarr")
    control = _differences(expected, _contents(tmp / "control.zarr"))
    shutil.rmtree(tmp / "control.zarr")

    rng = np.random.default_rng(seed)
    tested = late = 0
    identical = dict.fromkeys(ARRAYS, 0)
    identical_all = 0
    records: list[int] = []
    resume_s: list[float] = []
    for k in range(kills):
        store = tmp / f"killed{k}.zarr"
        for _ in range(REDRAWS):
            shutil.rmtree(store, ignore_errors=True)
            killed = _killed_run(args, store, float(rng.uniform(0.0, window)))
            if not killed.complete:
                break
            late += 1
        if killed.complete:
            print(f"   ! kill {k}: {REDRAWS} draws all landed after the end: untested")
            continue
        tested += 1
        records.append(killed.records)
        start = time.monotonic()
        resumed = subprocess.run(
            [SEGFLOW, *args, "-o", str(store), "--resume"], env=ENV, capture_output=True, text=True
        )
        resume_s.append(time.monotonic() - start)
        if resumed.returncode:
            last = (resumed.stderr.strip().splitlines() or [""])[-1]
            print(f"   ! kill {k}: the resume exited {resumed.returncode}: {last}")
            continue
        found = _differences(expected, _contents(store))
        identical_all += not found
        for name in ARRAYS:
            identical[name] += name in expected and name not in found
        for key, what in found.items():
            print(f"   ! kill {k} ({killed.records}/{tasks} records): {key}: {what}")
        shutil.rmtree(store)

    figures = {
        "scene / chunks / region tasks": f"{SCENE}^2 x3 / {chunk}^2 / {tasks}",
        "reference run": f"{ref.end_s:.1f} s (first record at {ref.first_record_s:.1f} s)",
        "2nd uninterrupted run vs reference": "; ".join(f"{k}: {v}" for k, v in control.items())
        or "identical",
        "kills mid-run / drawn": f"{tested} / {tested + late} ({late} landed after the end)",
        "records at the kill (min/median/max)": (
            f"{min(records)} / {int(np.median(records))} / {max(records)} of {tasks}"
            if records
            else "none"
        ),
        "resume time (median)": f"{np.median(resume_s):.1f} s" if resume_s else "none",
        "identical labels / probabilities": " / ".join(
            f"{identical[name]}/{kills}" for name in ARRAYS
        ),
    }
    checks = [
        Check(
            "resumed stores bit-identical",
            identical_all,
            f"of {kills}",
            f"= {kills}",
            identical_all == kills,
        )
    ]
    return figures, checks


# --- b. memory over a long batch ---------------------------------------------------


def _write_scans(folder: Path, count: int) -> list[Path]:
    from segflow.io.nib import save_volume

    folder.mkdir()
    rng = np.random.default_rng(0)
    grid = np.indices((SCAN,) * 3).astype(np.float32) - SCAN / 2
    radius = np.sqrt((grid**2).sum(axis=0))
    paths = []
    for i in range(count):
        inside = radius < SCAN * rng.uniform(0.2, 0.45)
        data = np.where(inside, 40, -1000) + rng.integers(-20, 20, radius.shape)
        path = folder / f"scan{i:03d}.nii.gz"
        save_volume(path, data.astype(np.int16), np.eye(4), descrip="soak", disk_dtype=np.int16)
        paths.append(path)
    return paths


def memory_soak_run(scans: list[str], model: str, out: str) -> dict[str, Any]:
    """In a fresh process: segment ``scans`` one after another; RSS after each."""
    import segflow

    as_the_command()  # as the segflow command does
    import psutil

    process = psutil.Process()
    rss: list[float] = []
    failed = 0
    start = time.perf_counter()
    for i, scan in enumerate(scans):
        store = Path(out) / f"scan{i:03d}.zarr"
        result = segflow.segment(scan, model, store, patch_size=32, device="cpu")
        assert not isinstance(result, list)
        failed += result.status != "complete"
        shutil.rmtree(store)  # a batch's stores are the user's; only the process's heap counts
        rss.append(process.memory_info().rss / 2**20)
    return {"rss_mb": rss, "seconds": time.perf_counter() - start, "failed": failed}


def memory_soak(count: int, tmp: Path) -> tuple[dict[str, Any], list[Check]]:
    scans = _write_scans(tmp / "scans", count)
    model = _model_file(tmp / "model3d.safetensors", in_channels=1, classes=2, spatial_dims=3)
    out = tmp / "stores"
    out.mkdir()
    run = run_subprocess_json(memory_soak_run, [str(p) for p in scans], str(model), str(out))
    rss = run["rss_mb"]
    first, last = rss[RSS_FIRST_SCAN - 1], rss[-1]
    marks = sorted({RSS_FIRST_SCAN, *range(50, count, 50), count})
    figures = {
        "scans / time": f"{count} x {SCAN}^3 int16 / {run['seconds']:.1f} s "
        f"({1000 * run['seconds'] / count:.0f} ms a scan, {run['failed']} failed)",
        "RSS after scan " + ", ".join(map(str, marks)): " / ".join(
            f"{rss[m - 1]:.0f}" for m in marks
        )
        + " MB",
        f"RSS growth scan {RSS_FIRST_SCAN} -> {count}": f"{last - first:+.1f} MB "
        f"({(last - first) / max(1, count - RSS_FIRST_SCAN) * 1024:+.0f} KB a scan)",
    }
    checks = [
        growth_check(f"RSS scan {RSS_FIRST_SCAN} -> {count}", first, last, TARGET_RSS_GROWTH),
        Check("scans failed", run["failed"], "", "= 0", run["failed"] == 0),
    ]
    return figures, checks


def main() -> bool:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--scans", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="set SEGFLOW_TORCH_THREADS for the command runs of part a (default: unset)",
    )
    args = parser.parse_args()
    if args.scans < RSS_FIRST_SCAN:
        parser.error(f"--scans must be at least {RSS_FIRST_SCAN}")
    if args.torch_threads is not None:
        ENV["SEGFLOW_TORCH_THREADS"] = str(args.torch_threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for part in ("a", "b"):
            (Path(tmp) / part).mkdir()
        a_figures, a_checks = kill_resume_soak(args.kills, args.seed, Path(tmp) / "a")
        b_figures, b_checks = memory_soak(args.scans, Path(tmp) / "b")
    figures = {
        **a_figures,
        **b_figures,
        "benchmark wall time": f"{time.perf_counter() - start:.0f} s",
    }
    return report("(k) soak", figures, a_checks + b_checks)


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
