"""Shared helpers for the benchmarks: synthetic inputs, tiny models, timing, reporting."""

from __future__ import annotations

import itertools
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin

from segflow.heap import OPENMP_SETTINGS, tune_process
from segflow.models import LoadedModel
from segflow.models.meta import ClassInfo, ModelMeta, Normalization
from segflow.models.pixel import PixelClassifier


def write_geotiff(path: Path, size: int, bands: int = 3, tile: int = 512, seed: int = 0) -> Path:
    """A tiled uint8 GeoTIFF written block by block (never whole in memory)."""
    rng = np.random.default_rng(seed)
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=bands,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(500000, 6000000, 10, 10),
        tiled=True,
        blockxsize=tile,
        blockysize=tile,
        compress="deflate",
        predictor=2,
    )
    block = 2048
    with rasterio.open(path, "w", **profile) as dst:
        for y in range(0, size, block):
            h = min(block, size - y)
            yy = np.arange(y, y + h)[:, None]
            xx = np.arange(size)[None, :]
            base = (np.sin(yy / 97.0) + np.cos(xx / 61.0)) * 60 + 128
            for b in range(bands):
                noise = rng.integers(0, 24, size=(h, size))
                dst.write(
                    (base + noise + 10 * b).clip(0, 255).astype(np.uint8),
                    b + 1,
                    window=rasterio.windows.Window(0, y, size, h),
                )
    return path


def near_free_model(
    in_channels: int = 3, classes: int = 6, spatial_dims: Literal[2, 3] = 2
) -> LoadedModel:
    """A 1x1 convolution: the pipeline's cost with (almost) no network."""
    torch.manual_seed(0)
    module = PixelClassifier(in_channels, classes, spatial_dims=spatial_dims).eval()
    meta = ModelMeta(
        arch="pixel",
        arch_kwargs={"hidden": []},
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        classes=tuple(ClassInfo(name=f"c{i}") for i in range(classes)),
        normalization=Normalization(mean=(128.0,) * in_channels, std=(64.0,) * in_channels),
        output_stride=1,
    )
    return LoadedModel(meta=meta, module=module, sha256="near-free", path=None, runtime="torch")


@contextmanager
def timer() -> Iterator[dict[str, float]]:
    result: dict[str, float] = {}
    start = time.perf_counter()
    yield result
    result["seconds"] = time.perf_counter() - start


def best_of_interleaved(repeat: int, *runs: Callable[[int], float]) -> list[float]:
    """The fastest of ``repeat`` timings of each run, taken in turn (a, b, a, b, ...).

    On a shared machine speed drifts over a minute; alternating the runs
    spreads the drift over all of them, and the minimum is the least disturbed
    figure. Each run gets the repetition number and returns its seconds.
    """
    best = [float("inf")] * len(runs)
    for i in range(repeat):
        for k, run in enumerate(runs):
            best[k] = min(best[k], run(i))
    return best


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB.

    /proc's VmHWM starts afresh with each program, while ru_maxrss survives exec
    and so reports the parent's peak in a freshly spawned benchmark process.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class Check:
    name: str
    value: float
    unit: str
    target: str
    ok: bool


def report(title: str, figures: dict[str, Any], checks: list[Check]) -> bool:
    print(f"\n== {title}")
    for key, value in figures.items():
        print(f"   {key:<38} {value}")
    for c in checks:
        status = "PASS" if c.ok else "MISS"
        print(f"   [{status}] {c.name:<33} {c.value:10.3f} {c.unit:<8} target {c.target}")
    return all(c.ok for c in checks)


def run_subprocess(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` in a fresh process (own heap and peak RSS) and return its result."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args)


def run_subprocess_json(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """``run_subprocess`` for a function returning a JSON-able dict (checked as such)."""
    result: dict[str, Any] = json.loads(json.dumps(run_subprocess(fn, *args)))
    return result


def growth_check(label: str, small: float, large: float, target: float) -> Check:
    """Peak memory (or any figure) from a smaller run to a larger one, within ``target``."""
    growth = large / small - 1.0
    return Check(label, growth * 100, "%", f"<= {target * 100:.0f}", growth <= target)


def growth_checks(peaks: dict[int, float], target: float, unit: str = "^3") -> list[Check]:
    """One :func:`growth_check` per consecutive pair of sizes, as ``"peak RSS growth A -> B"``."""
    sizes = sorted(peaks)
    return [
        growth_check(f"peak RSS growth {a}{unit} -> {b}{unit}", peaks[a], peaks[b], target)
        for a, b in itertools.pairwise(sizes)
    ]


def as_the_command() -> None:
    """Tune this process as the ``segflow`` command tunes its own.

    The OpenMP wait policy is read when torch loads, which a benchmark has done
    by the time its main runs: without it, the benchmark runs again at once
    with the variable set (a user's own setting is kept).
    """
    missing = {k: v for k, v in OPENMP_SETTINGS.items() if k not in os.environ}
    if missing:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **missing})
    tune_process()
