"""(c) Peak memory is bounded by chunk, patch and batch size, not by image size.

Runs the near-free model (6 classes) on 8192^2 and 16384^2 x3 uint8 GeoTIFFs,
each in a fresh process, and compares their peak RSS.

    uv run python benchmarks/bench_memory.py [--sizes 8192 16384]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import (
    Check,
    as_the_command,
    growth_check,
    near_free_model,
    peak_rss_mb,
    report,
    run_subprocess_json,
    timer,
    write_geotiff,
)

TARGET_PEAK_MB = 1536.0
TARGET_GROWTH = 0.10


def one_run(size: int, tmp: str) -> dict[str, Any]:
    from segflow import segment

    as_the_command()  # as the segflow command does
    path = Path(tmp) / f"scene{size}.tif"
    before = peak_rss_mb()
    with timer() as t:
        segment(
            path,
            near_free_model(),
            Path(tmp) / f"out{size}.zarr",
            patch_size=512,
            overlap=0.25,
            blend="gaussian",
            device="cpu",
        )
    return {"size": size, "seconds": t["seconds"], "peak_mb": peak_rss_mb(), "baseline_mb": before}


def main() -> bool:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs=2, default=[8192, 16384])
    args = parser.parse_args()
    small, large = args.sizes
    with tempfile.TemporaryDirectory() as tmp:
        for size in (small, large):
            write_geotiff(Path(tmp) / f"scene{size}.tif", size)
        runs = [run_subprocess_json(one_run, size, tmp) for size in (small, large)]
    a, b = runs
    figures = {
        f"{r['size']}^2 peak RSS / time": f"{r['peak_mb']:.0f} MB / {r['seconds']:.1f} s"
        for r in runs
    }
    checks = [
        Check(
            f"peak RSS at {large}^2",
            b["peak_mb"],
            "MB",
            f"<= {TARGET_PEAK_MB:.0f}",
            b["peak_mb"] <= TARGET_PEAK_MB,
        ),
        growth_check(f"growth {small}^2 -> {large}^2", a["peak_mb"], b["peak_mb"], TARGET_GROWTH),
    ]
    return report("(c) memory", figures, checks)


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
