"""(e) An emulated accelerator: how busy segflow keeps a device, measured on any machine.

The "device" is a TorchScript model whose forward calls one custom op. The op
holds one process-wide lock (one device, one batch at a time), sleeps
pixels / speed with the GIL released, and returns logits of the right shape
(a per-class constant, no heavy CPU work). The model file and its sidecar load
through segflow's normal model loading; everything else is segflow's real
path: tiled GeoTIFF reads, cutting and normalization, blending, argmax, Zarr
writes. Batches are as large as segflow makes them for a GPU (GPU_BATCH_SIZE);
the emulated device runs as "cpu", for which segflow would pick smaller ones.

Figures, next to their targets (8192^2 x 3, 6 classes, patch 512, overlap 0.25):

- busy share at 25 Mpx/s (a slow device, slower than the CPU path): the time
  the device sleeps inside its lock / the wall time of the run, >= 90 %;
- end-to-end Mpx/s at 400 Mpx/s (a fast device: the run is CPU-bound), >= 50 %
  of the I/O floor measured in the same run: the scene's tiles read and uint8
  Zarr chunks written with the same number of threads, no model, no blending.

    uv run python benchmarks/bench_device.py [--size 8192] [--speeds 25,400]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from benchmarks.common import Check, as_the_command, report, timer, write_geotiff
from segflow import segment
from segflow.io.open import open_source
from segflow.models import load_model
from segflow.models.exported import default_sidecar_path, write_sidecar
from segflow.models.meta import ClassInfo, ModelMeta, Normalization
from segflow.plan import GPU_BATCH_SIZE

CLASSES = 6
PATCH = 512
OVERLAP = 0.25
TARGET_BUSY = 0.90
TARGET_FLOOR_SHARE = 0.50
SLOW, FAST = 25.0, 400.0
CHUNK = 1024  # the engine's default chunk for rasters


class EmulatedDevice:
    """One device: a lock held for pixels / speed seconds per batch, and the time it was busy."""

    lock = threading.Lock()
    busy_seconds = 0.0

    @classmethod
    def run(cls, pixels: int, speed_mpx: float) -> None:
        with cls.lock:
            seconds = pixels / (speed_mpx * 1e6)
            time.sleep(seconds)  # releases the GIL, as a device computing does
            cls.busy_seconds += seconds


@torch.library.custom_op("segflow_bench::emulated_forward", mutates_args=())
def emulated_forward(x: torch.Tensor, classes: int, speed_mpx: float) -> torch.Tensor:
    n, _, h, w = x.shape
    EmulatedDevice.run(n * h * w, speed_mpx)
    levels = torch.arange(classes, dtype=torch.float32) * 0.1
    return levels.view(1, classes, 1, 1).expand(n, classes, h, w)


@emulated_forward.register_fake
def _(x: torch.Tensor, classes: int, speed_mpx: float) -> torch.Tensor:
    return x.new_empty((x.shape[0], classes, x.shape[2], x.shape[3]))


class EmulatedModel(torch.nn.Module):
    def __init__(self, classes: int, speed_mpx: float) -> None:
        super().__init__()
        self.classes = classes
        self.speed_mpx = float(speed_mpx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.ops.segflow_bench.emulated_forward(
            x, self.classes, self.speed_mpx
        )
        return out


def model_file(folder: Path, speed_mpx: float) -> Path:
    """A TorchScript model file and its sidecar, as a user would export them."""
    path = folder / f"emulated-{speed_mpx:g}.pt"
    torch.jit.save(torch.jit.script(EmulatedModel(CLASSES, speed_mpx)), str(path))
    meta = ModelMeta(
        arch="torchscript",
        spatial_dims=2,
        in_channels=3,
        classes=tuple(ClassInfo(name=f"c{i}") for i in range(CLASSES)),
        normalization=Normalization(mean=(128.0,) * 3, std=(64.0,) * 3),
        output_stride=1,
    )
    write_sidecar(meta, default_sidecar_path(path))
    return path


def scene(size: int) -> Path:
    """The tiled scene, made once and kept between runs."""
    folder = Path(tempfile.gettempdir()) / "segflow-bench-device"
    folder.mkdir(exist_ok=True)
    path = folder / f"scene{size}.tif"
    if not path.exists():
        partial = path.with_suffix(".part.tif")
        write_geotiff(partial, size, bands=3, tile=512)
        os.replace(partial, path)
    return path


def io_floor_seconds(path: Path, out: Path, threads: int) -> float:
    """Read every chunk's window of the scene and write a uint8 Zarr chunk, ``threads`` at once."""
    source = open_source(path)
    height, width = source.spatial_shape
    array = zarr.create_array(
        out, shape=(height, width), chunks=(CHUNK, CHUNK), dtype="uint8", fill_value=255
    )

    def one(y: int, x: int) -> None:
        region = (slice(y, min(y + CHUNK, height)), slice(x, min(x + CHUNK, width)))
        data = source.read(region).data
        array[region] = data[0].astype(np.uint8, copy=False)

    windows = [(y, x) for y in range(0, height, CHUNK) for x in range(0, width, CHUNK)]
    with (
        timer() as t,
        concurrent.futures.ThreadPoolExecutor(threads) as pool,
    ):
        for future in [pool.submit(one, y, x) for y, x in windows]:
            future.result()
    return t["seconds"]


def device_run(scene_path: Path, model_path: Path, out: Path) -> dict[str, Any]:
    loaded = load_model(model_path)  # segflow's own loading: TorchScript + sidecar, probed
    EmulatedDevice.busy_seconds = 0.0
    with timer() as t:
        result = segment(
            scene_path,
            loaded,
            out,
            patch_size=PATCH,
            overlap=OVERLAP,
            device="cpu",
            batch_size=GPU_BATCH_SIZE,  # what segflow picks for a GPU; "cpu" would pick 2
        )
    return {
        "seconds": t["seconds"],
        "busy": EmulatedDevice.busy_seconds / t["seconds"],
        "patches": result.stats["patches_predicted"],
    }


def main() -> bool:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=8192, help="scene edge (8192 for the targets)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    as_the_command()  # as the segflow command does
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit's deprecation notes
    path = scene(args.size)
    megapixels = args.size**2 / 1e6
    figures: dict[str, Any] = {
        "scene": f"{args.size}^2 x 3 uint8, {CLASSES} classes, patch {PATCH}, overlap {OVERLAP}",
        "cores": os.cpu_count(),
    }
    checks = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # warm-up: imports, GDAL and Zarr set-up, each model's loading and TorchScript's
        # first-call optimisation (a second or two, once per process), the first buffers
        io_floor_seconds(scene(PATCH * 2), folder / "warm.zarr", args.threads)
        models = {speed: model_file(folder, speed) for speed in (SLOW, FAST)}
        for speed, model in models.items():
            device_run(scene(PATCH * 2), model, folder / f"warm-{speed:g}.zarr")
        floor = io_floor_seconds(path, folder / "floor.zarr", args.threads)
        floor_mpx = megapixels / floor
        figures[f"I/O floor ({args.threads} threads)"] = f"{floor_mpx:.1f} Mpx/s ({floor:.1f} s)"
        slow = device_run(path, models[SLOW], folder / "slow.zarr")
        fast = device_run(path, models[FAST], folder / "fast.zarr")
    figures["patches predicted"] = slow["patches"]
    figures[f"{SLOW:g} Mpx/s device: run"] = (
        f"{slow['seconds']:.1f} s, {megapixels / slow['seconds']:.1f} Mpx/s"
    )
    figures[f"{FAST:g} Mpx/s device: run"] = (
        f"{fast['seconds']:.1f} s, busy {fast['busy'] * 100:.0f} %"
    )
    checks.append(
        Check(
            f"device busy at {SLOW:g} Mpx/s",
            slow["busy"] * 100,
            "%",
            f">= {TARGET_BUSY * 100:.0f}",
            slow["busy"] >= TARGET_BUSY,
        )
    )
    fast_mpx = megapixels / fast["seconds"]
    share = fast_mpx / floor_mpx
    checks.append(
        Check(
            f"Mpx/s at {FAST:g} Mpx/s / I/O floor",
            share * 100,
            "%",
            f">= {TARGET_FLOOR_SHARE * 100:.0f}",
            share >= TARGET_FLOOR_SHARE,
        )
    )
    figures[f"{FAST:g} Mpx/s device: end-to-end"] = f"{fast_mpx:.1f} Mpx/s"
    return report("(e) emulated device", figures, checks)


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
