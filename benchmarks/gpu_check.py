"""The CUDA path on a lent GPU: busy share, AMP against fp32, peak device memory.

Run by ``benchmarks/gpu_check.sh``; each part is one short command:

    uv run python benchmarks/gpu_check.py busy [--size 16384]   # U-Net/resnet18, busy share
    uv run python benchmarks/gpu_check.py amp [--size 2048]     # AMP vs fp32 labels, memory
    uv run python benchmarks/gpu_check.py devices [--size 8192] # 2+ GPUs: bytes and speed-up

Busy share: ``nvidia-smi`` samples the GPU's utilization every 100 ms while
segflow runs the scene; the share is the mean of the samples taken during the
run (target >= 90 %). Utilization is the share of time a kernel ran, which is
what "the device never waits" asks of the pipeline.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.bench_unet_overhead import unet_model
from benchmarks.common import Check, as_the_command, report, timer, write_geotiff
from segflow import segment
from segflow.io.zarr_sink import ZarrSink
from segflow.models import save_model

TARGET_BUSY = 0.90
TARGET_AGREEMENT = 0.999
TARGET_DEVICES_SPEEDUP = 1.5  # every GPU of the machine against one, start-up included
SAMPLE_MS = 100


class Sampler:
    """``nvidia-smi`` utilization samples of GPU 0, taken in a child process.

    Only the samples stamped between ``start()`` and ``stop()`` count.
    """

    def __init__(self, out: Path) -> None:
        self._out = out
        self._process: subprocess.Popen[bytes] | None = None
        self._window = (datetime.max, datetime.min)

    def __enter__(self) -> Sampler:
        with open(self._out, "wb") as handle:  # the child keeps its own copy
            self._process = subprocess.Popen(
                [
                    "nvidia-smi",
                    "--id=0",
                    "--query-gpu=timestamp,utilization.gpu",
                    "--format=csv,noheader,nounits",
                    f"--loop-ms={SAMPLE_MS}",
                ],
                stdout=handle,
            )
        time.sleep(1.0)  # nvidia-smi's start-up, before the run
        return self

    def start(self) -> None:
        self._window = (datetime.now(), datetime.max)

    def stop(self) -> None:
        self._window = (self._window[0], datetime.now())

    def __exit__(self, *exc: object) -> None:
        assert self._process is not None
        self._process.terminate()
        self._process.wait(timeout=10)

    def utilization(self) -> list[float]:
        """Utilization in percent of the samples stamped while the run ran."""
        values = []
        first, last = self._window
        for line in self._out.read_text().splitlines():
            stamp, _, value = (p.strip() for p in line.partition(","))
            try:
                when = datetime.strptime(stamp, "%Y/%m/%d %H:%M:%S.%f")
                percent = float(value)
            except ValueError:
                continue  # a header or a note, not a sample
            if first <= when <= last:
                values.append(percent)
        return values


def busy(size: int, batch_size: int) -> bool:
    if shutil.which("nvidia-smi") is None:
        print("nvidia-smi not found: no busy share")
        return False
    model = unet_model("cuda")
    figures: dict[str, Any] = {"scene": f"{size}^2 x 3, U-Net/resnet18, 6 classes, patch 512"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with timer() as made:
            path = write_geotiff(folder / "scene.tif", size, tile=512)
        figures["scene written in"] = f"{made['seconds']:.0f} s"
        # warm-up: cuDNN autotuning, the CUDA context, the first region's buffers
        small = write_geotiff(folder / "small.tif", 1024, tile=512)
        segment(small, model, folder / "warm.zarr", patch_size=512, device="cuda")
        torch.cuda.reset_peak_memory_stats()
        with Sampler(folder / "smi.csv") as sampler, timer() as t:
            sampler.start()
            result = segment(
                path,
                model,
                folder / "out.zarr",
                patch_size=512,
                overlap=0.25,
                batch_size=batch_size,
                device="cuda",
            )
            sampler.stop()
        samples = sampler.utilization()
    share = float(np.mean(samples)) / 100.0 if samples else 0.0
    figures["run"] = f"{t['seconds']:.1f} s, {size**2 / 1e6 / t['seconds']:.0f} Mpx/s"
    figures["patches predicted"] = result.stats["patches_predicted"]
    figures["utilization samples"] = len(samples)
    figures["peak device memory (torch)"] = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    checks = [
        Check(
            "GPU busy share", share * 100, "%", f">= {TARGET_BUSY * 100:.0f}", share >= TARGET_BUSY
        )
    ]
    return report("GPU busy share", figures, checks)


def amp(size: int) -> bool:
    model = unet_model("cuda")
    figures: dict[str, Any] = {"scene": f"{size}^2 x 3, U-Net/resnet18, 6 classes"}
    labels = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = write_geotiff(Path(tmp) / "scene.tif", size, tile=512)
        for name, on in (("fp32", False), ("amp", True)):
            torch.cuda.reset_peak_memory_stats()
            with timer() as t:
                segment(
                    path, model, Path(tmp) / f"{name}.zarr", patch_size=512, device="cuda", amp=on
                )
            peak = torch.cuda.max_memory_allocated() / 2**30
            figures[f"{name}: seconds / peak device memory"] = (
                f"{t['seconds']:.1f} s / {peak:.2f} GiB"
            )
            labels[name] = np.asarray(ZarrSink.open(Path(tmp) / f"{name}.zarr").labels_array()[...])
    agreement = float((labels["fp32"] == labels["amp"]).mean())
    checks = [
        Check(
            "AMP vs fp32 label agreement",
            agreement * 100,
            "%",
            f">= {TARGET_AGREEMENT * 100:.1f}",
            agreement >= TARGET_AGREEMENT,
        )
    ]
    return report("AMP against fp32", figures, checks)


def devices(size: int) -> bool:
    """One worker per GPU (``devices="all"``) against one GPU: the same bytes, and faster."""
    count = torch.cuda.device_count()
    if count < 2:
        print("fewer than 2 CUDA GPUs here: no multi-GPU check")
        return True
    loaded = unet_model("cpu")
    figures: dict[str, Any] = {"scene": f"{size}^2 x 3, U-Net/resnet18, 6 classes, patch 512"}
    seconds, labels = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = folder / "unet.safetensors"
        save_model(loaded.module, loaded.meta, model)
        path = write_geotiff(folder / "scene.tif", size, tile=512)
        for name, chosen in (("1 GPU", "cuda:0"), (f"{count} GPUs", "all")):
            out = folder / f"{chosen.replace(':', '')}.zarr"
            with timer() as t:  # each run starts its workers, which load the model
                segment(path, model, out, patch_size=512, overlap=0.25, devices=chosen)
            seconds[name] = t["seconds"]
            labels[name] = np.asarray(ZarrSink.open(out).labels_array()[...])
            figures[f"{name}: seconds, Mpx/s"] = (
                f"{t['seconds']:.1f} s, {size**2 / 1e6 / t['seconds']:.1f}"
            )
    one, every = labels.values()
    speedup = seconds["1 GPU"] / seconds[f"{count} GPUs"]
    checks = [
        Check(
            "labels equal to one GPU's",
            float(np.array_equal(one, every)),
            "",
            "= 1",
            bool(np.array_equal(one, every)),
        ),
        Check(
            f"{count} GPUs against 1",
            speedup,
            "x",
            f">= {TARGET_DEVICES_SPEEDUP}",
            speedup >= TARGET_DEVICES_SPEEDUP,
        ),
    ]
    return report("One worker per GPU", figures, checks)


def main() -> bool:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("part", choices=["busy", "amp", "devices"])
    parser.add_argument("--size", type=int)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU here: nothing to check", file=sys.stderr)
        return False
    as_the_command()
    if args.part == "busy":
        return busy(args.size or 16384, args.batch_size)
    if args.part == "devices":
        return devices(args.size or 8192)
    return amp(args.size or 2048)


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
