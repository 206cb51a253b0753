"""(a) Pipeline throughput with a near-free model, against MONAI's sliding window.

8192x8192x3 uint8 tiled GeoTIFF -> Zarr labels, patch 512, overlap 0.25,
gaussian blending, end to end (read to written). MONAI runs the very module
segflow runs, on the same array already in memory (no I/O at all), so the
comparison favours MONAI. Each runs in a fresh process: a heap left behind by
one (several GB for MONAI's full-scene logits) changes the other's speed.

    uv run python benchmarks/bench_throughput.py [--size 8192] [--skip-monai]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt
import rasterio
import torch

from benchmarks.common import (
    Check,
    as_the_command,
    near_free_model,
    report,
    run_subprocess,
    timer,
    write_geotiff,
)
from segflow import segment

TARGET_MPXS = 25.0
TARGET_RATIO = 10.0


def monai_mpxs(path: str) -> float:
    from monai.inferers.utils import sliding_window_inference

    as_the_command()  # the heap settings segflow runs under, for a like-for-like baseline

    model = near_free_model().module
    with rasterio.open(path) as src:
        image: npt.NDArray[np.uint8] = src.read()
    x = torch.from_numpy((image.astype(np.float32) - 128.0) / 64.0)[None]
    with timer() as t, torch.inference_mode():
        # MONAI's default sw_batch_size (1): on this CPU it is faster than 4 or 8
        logits = sliding_window_inference(
            x, roi_size=(512, 512), sw_batch_size=1, predictor=model, overlap=0.25, mode="gaussian"
        )
        assert isinstance(logits, torch.Tensor)
        labels = torch.argmax(logits, dim=1).to(torch.uint8)
    assert labels.shape[-2:] == image.shape[-2:]
    pixels = image.size // len(image)  # per band
    return pixels / t["seconds"] / 1e6


def segflow_seconds(path: str, tmp: str) -> float:
    as_the_command()  # as the segflow command does
    model = near_free_model()
    # one small run first: process start-up (thread pools, codecs, first kernels) is
    # not throughput; the timed run below still does every read, hash and write
    warm = write_geotiff(Path(tmp) / "warm.tif", 1024)
    segment(warm, model, Path(tmp) / "warm.zarr", patch_size=512, device="cpu")
    with timer() as t:
        segment(
            path,
            model,
            Path(tmp) / "out.zarr",
            patch_size=512,
            overlap=0.25,
            blend="gaussian",
            device="cpu",
        )
    return t["seconds"]


def main() -> bool:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--skip-monai", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = str(write_geotiff(Path(tmp) / "scene.tif", args.size))
        seconds = run_subprocess(segflow_seconds, path, tmp)
        ours = args.size * args.size / 1e6 / seconds
        figures = {
            "image": f"{args.size}x{args.size}x3 uint8",
            "segflow seconds": f"{seconds:.2f}",
            "segflow Mpx/s": f"{ours:.1f}",
        }
        checks = [
            Check("segflow throughput", ours, "Mpx/s", f">= {TARGET_MPXS}", ours >= TARGET_MPXS)
        ]
        if not args.skip_monai:
            theirs = run_subprocess(monai_mpxs, path)
            figures["MONAI sliding_window Mpx/s"] = f"{theirs:.2f}"
            ratio = ours / theirs
            checks.append(
                Check(
                    "speed-up over MONAI", ratio, "x", f">= {TARGET_RATIO}", ratio >= TARGET_RATIO
                )
            )
    return report("(a) near-free model throughput", figures, checks)


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
