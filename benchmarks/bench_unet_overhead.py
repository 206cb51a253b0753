"""(b) End-to-end time of a U-Net/resnet18 run against the pure forward time of its patches.

2048x2048x3 input, 6 classes, patch 512, overlap 0.25, gaussian. The
baseline is the model's forward pass over exactly the patches the engine
predicts, in batches of the same size, with nothing else: no reads, no
blending, no writes. The engine's overhead is what remains. Each is timed
``--repeat`` times in turn, and the fastest of each is compared.

    uv run python benchmarks/bench_unet_overhead.py [--size 2048] [--device cpu] [--repeat 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import (
    Check,
    as_the_command,
    best_of_interleaved,
    report,
    timer,
    write_geotiff,
)
from segflow import segment
from segflow.engine.grid import make_grid
from segflow.models import LoadedModel, create_model
from segflow.models.meta import ClassInfo, ModelMeta, Normalization

TARGET_RATIO = 1.05


def unet_model(device: str) -> LoadedModel:
    torch.manual_seed(0)
    module = create_model("unet", encoder="resnet18", in_channels=3, classes=6).eval()
    meta = ModelMeta(
        arch="unet",
        arch_kwargs={"encoder": "resnet18"},
        in_channels=3,
        classes=tuple(ClassInfo(name=f"c{i}") for i in range(6)),
        normalization=Normalization(mean=(128.0,) * 3, std=(64.0,) * 3),
        output_stride=32,
    )
    return LoadedModel(meta=meta, module=module, sha256="unet-resnet18", path=None, runtime="torch")


def pure_forward_seconds(model: torch.nn.Module, patches: int, batch: int, device: str) -> float:
    dev = torch.device(device)
    module = model.to(dev).eval()
    x = torch.randn(batch, 3, 512, 512, device=dev)
    with torch.inference_mode():
        module(x[:1])  # warm-up, as the engine's first batch also pays it
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        remaining = patches
        while remaining > 0:
            n = min(batch, remaining)
            module(x[:n])
            remaining -= n
        if dev.type == "cuda":
            torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> bool:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2, help="best of N, interleaved")
    args = parser.parse_args()
    as_the_command()  # as the segflow command does; the baseline runs under the same settings
    model = unet_model(args.device)
    grid = make_grid((args.size, args.size), 512, 0.25)
    predicted: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = write_geotiff(Path(tmp) / "scene.tif", args.size)

        def forward(_: int) -> float:
            return pure_forward_seconds(model.module, len(grid), args.batch_size, args.device)

        def end_to_end(i: int) -> float:
            with timer() as t:
                result = segment(
                    path,
                    model,
                    Path(tmp) / f"out{i}.zarr",
                    patch_size=512,
                    overlap=0.25,
                    blend="gaussian",
                    batch_size=args.batch_size,
                    device=args.device,
                )
            predicted.append(result.stats["patches_predicted"])
            return t["seconds"]

        forward_s, end_to_end_s = best_of_interleaved(args.repeat, forward, end_to_end)
    ratio = end_to_end_s / forward_s
    figures = {
        "image": f"{args.size}x{args.size}x3, U-Net/resnet18, 6 classes, device {args.device}",
        "grid patches / predicted": f"{len(grid)} / {predicted[-1]}",
        f"pure forward seconds (best of {args.repeat})": f"{forward_s:.2f}",
        f"end-to-end seconds (best of {args.repeat})": f"{end_to_end_s:.2f}",
    }
    checks = [
        Check("end-to-end / pure forward", ratio, "x", f"<= {TARGET_RATIO}", ratio <= TARGET_RATIO)
    ]
    return report("(b) U-Net overhead", figures, checks)


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
