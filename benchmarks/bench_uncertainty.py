"""The cost of ``--uncertainty``: time and peak memory of a run with it against one without.

A near-free model (a 1x1 convolution, 6 classes) on a 4096x4096x3 GeoTIFF, patch 512,
so the entropy's share is as large as it gets; with a real network it is a small part
of the forward time. Times are the best of ``--repeat`` interleaved runs; peak RSS is
measured for each in a fresh process. The uncertainty is computed a slab of rows at a
time, so its memory is the slab's, not a second float copy of a region (which would
add ~200 MB per 2048² region of 6 classes in float64).

    uv run python -m benchmarks.bench_uncertainty [--size 4096] [--repeat 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import (
    Check,
    as_the_command,
    best_of_interleaved,
    near_free_model,
    peak_rss_mb,
    report,
    run_subprocess_json,
    timer,
    write_geotiff,
)
from segflow import segment

TARGET_TIME_RATIO = 1.3  # near-free model: the worst case for the entropy's share
TARGET_RSS_RATIO = 1.1


def run_once(path: str, out: str, uncertainty: bool) -> dict[str, Any]:
    """One run in this process: its seconds and the process's peak RSS."""
    as_the_command()
    with timer() as t:
        segment(path, near_free_model(), out, patch_size=512, uncertainty=uncertainty, device="cpu")
    return {"seconds": t["seconds"], "peak_mb": peak_rss_mb()}


def main() -> bool:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=2, help="best of N, interleaved")
    args = parser.parse_args()
    as_the_command()
    with tempfile.TemporaryDirectory() as tmp:
        path = str(write_geotiff(Path(tmp) / "scene.tif", args.size))

        def timed(uncertainty: bool) -> Any:
            def run(i: int) -> float:
                out = str(Path(tmp) / f"{uncertainty}-{i}.zarr")
                with timer() as t:
                    segment(
                        path,
                        near_free_model(),
                        out,
                        patch_size=512,
                        uncertainty=uncertainty,
                        device="cpu",
                    )
                return t["seconds"]

            return run

        without_s, with_s = best_of_interleaved(args.repeat, timed(False), timed(True))
        peaks = {
            flag: run_subprocess_json(run_once, path, str(Path(tmp) / f"rss-{flag}.zarr"), flag)
            for flag in (False, True)
        }
    time_ratio = with_s / without_s
    rss_ratio = peaks[True]["peak_mb"] / peaks[False]["peak_mb"]
    figures = {
        "image": f"{args.size}x{args.size}x3, near-free model, 6 classes, cpu",
        f"labels only, seconds (best of {args.repeat})": f"{without_s:.2f}",
        f"labels + uncertainty, seconds (best of {args.repeat})": f"{with_s:.2f}",
        "peak RSS without / with (MB)": f"{peaks[False]['peak_mb']:.0f} / {peaks[True]['peak_mb']:.0f}",
    }
    checks = [
        Check(
            "time with / without",
            time_ratio,
            "x",
            f"<= {TARGET_TIME_RATIO}",
            time_ratio <= TARGET_TIME_RATIO,
        ),
        Check(
            "peak RSS with / without",
            rss_ratio,
            "x",
            f"<= {TARGET_RSS_RATIO}",
            rss_ratio <= TARGET_RSS_RATIO,
        ),
    ]
    return report("uncertainty overhead", figures, checks)


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
