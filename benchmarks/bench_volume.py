"""(d) Volumes: a small 3-D U-Net on a 256^3 volume, against its pure forward time and MONAI.

Patch 96^3, overlap 0.25, gaussian. Baseline 1: the model's forward over the
patches the engine predicts, nothing else. Baseline 2: MONAI's
sliding_window_inference on the same volume already in memory. Then peak RSS
of 256^3, 512^3 and 768^3 runs (near-free 3-D model, fresh processes) must be flat.
The timed runs go ``--repeat`` times in turn; the fastest of each is compared.

    uv run python benchmarks/bench_volume.py [--size 256] [--skip-memory] [--repeat 2]
    uv run python benchmarks/bench_volume.py --memory-only --memory-sizes 512,768
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from benchmarks.common import (
    Check,
    as_the_command,
    best_of_interleaved,
    growth_checks,
    near_free_model,
    peak_rss_mb,
    report,
    run_subprocess_json,
    timer,
)
from segflow import segment
from segflow.engine.grid import make_grid
from segflow.io.nib import save_volume
from segflow.models import LoadedModel, create_model
from segflow.models.meta import ClassInfo, ModelMeta, Normalization

TARGET_RATIO = 1.03  # end-to-end over the pure forward
TARGET_MONAI = 1.2  # times faster than MONAI's sliding_window_inference
TARGET_FLAT = 0.10
TARGET_FLAT_LARGE = 0.15  # 512^3 -> 768^3, both many regions
PATCH = 96
MEMORY_SIZES = (256, 512, 768)


def write_volume(path: Path, size: int) -> Path:
    rng = np.random.default_rng(0)
    data = np.empty((size, size, size), np.int16)
    for k in range(size):  # slab by slab: never a float copy of the whole volume
        i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
        r = np.sqrt((i - size / 2) ** 2 + (j - size / 2) ** 2 + (k - size / 2) ** 2)
        data[:, :, k] = np.where(r < size * 0.4, 40, -1000) + rng.integers(-20, 20, (size, size))
    save_volume(path, data, np.eye(4), descrip="segflow benchmark volume", disk_dtype=np.int16)
    return path


def unet3d_model() -> LoadedModel:
    torch.manual_seed(0)
    module = create_model("unet3d", in_channels=1, classes=3, base_channels=8, depth=3).eval()
    meta = ModelMeta(
        arch="unet3d",
        arch_kwargs={"base_channels": 8, "depth": 3},
        spatial_dims=3,
        in_channels=1,
        classes=tuple(ClassInfo(name=f"c{i}") for i in range(3)),
        normalization=Normalization(mean=(0.0,), std=(500.0,)),
        output_stride=8,
    )
    return LoadedModel(meta=meta, module=module, sha256="unet3d-small", path=None, runtime="torch")


def pure_forward_seconds(
    module: torch.nn.Module, patches: int, batch: int, device: str = "cpu"
) -> float:
    dev = torch.device(device)
    module = module.to(dev)
    x = torch.randn(batch, 1, PATCH, PATCH, PATCH, device=dev)
    with torch.inference_mode():
        module(x[:1])
        _synchronize(dev)
        start = time.perf_counter()
        remaining = patches
        while remaining > 0:
            n = min(batch, remaining)
            module(x[:n])
            remaining -= n
        _synchronize(dev)
    return time.perf_counter() - start


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def monai_seconds(path: Path, module: torch.nn.Module, batch: int, device: str = "cpu") -> float:
    from monai.inferers.utils import sliding_window_inference

    image = nib.load(path)
    assert isinstance(image, nib.Nifti1Image)
    data = np.asarray(image.dataobj, dtype=np.float32) / 500.0
    dev = torch.device(device)
    module = module.to(dev)
    x = torch.from_numpy(data)[None, None].to(dev)
    with timer() as t, torch.inference_mode():
        logits = sliding_window_inference(
            x, (PATCH,) * 3, batch, module, overlap=0.25, mode="gaussian"
        )
        assert isinstance(logits, torch.Tensor)
        torch.argmax(logits, dim=1).cpu()  # the labels back on the host, as the engine does
    return t["seconds"]


def memory_run(size: int, tmp: str) -> dict[str, Any]:
    as_the_command()  # as the segflow command does
    path = Path(tmp) / f"vol{size}.nii"
    with timer() as t:
        result = segment(
            path,
            near_free_model(1, 3, spatial_dims=3),
            Path(tmp) / f"m{size}.zarr",
            patch_size=PATCH,
            overlap=0.25,
            device="cpu",
        )
    return {
        "size": size,
        "seconds": t["seconds"],
        "peak_mb": peak_rss_mb(),
        "patches": result.stats["patches_predicted"],
        "grid": len(make_grid((size,) * 3, PATCH, 0.25)),
    }


def memory_checks(tmp: Path, figures: dict[str, Any], sizes: list[int]) -> list[Check]:
    """Peak RSS of near-free runs, each in a fresh process, from one region up to 27.

    256^3 is one region with no halo; 512^3 and 768^3 run regions of the same
    size with halos and patches handed on between them, so their step shows
    whether memory keeps growing with the volume. Every patch is predicted once.
    """
    runs = {}
    checks = []
    for size in sizes:
        if not (tmp / f"vol{size}.nii").exists():
            write_volume(tmp / f"vol{size}.nii", size)
        run = run_subprocess_json(memory_run, size, str(tmp))
        figures[f"near-free {size}^3 peak RSS / time"] = (
            f"{run['peak_mb']:.0f} MB / {run['seconds']:.1f} s"
        )
        ratio = run["patches"] / run["grid"]
        checks.append(
            Check(f"{size}^3 predicted / grid patches", ratio, "x", "== 1.00", ratio == 1.0)
        )
        figures[f"near-free {size}^3 patches predicted / grid"] = (
            f"{run['patches']} / {run['grid']}"
        )
        runs[size] = run["peak_mb"]
    small = {s: mb for s, mb in runs.items() if s < 512}
    large = {s: mb for s, mb in runs.items() if s >= 512}
    if small and large:
        checks += growth_checks({min(small): small[min(small)], 512: runs[512]}, TARGET_FLAT)
    return checks + growth_checks(large, TARGET_FLAT_LARGE)


def main() -> bool:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the timed runs only)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-only", action="store_true", help="only the peak RSS runs")
    parser.add_argument(
        "--memory-sizes",
        default=",".join(map(str, MEMORY_SIZES)),
        help="volume edges, e.g. 512,768",
    )
    parser.add_argument("--skip-monai", action="store_true")
    parser.add_argument("--repeat", type=int, default=2, help="best of N, interleaved")
    args = parser.parse_args()
    as_the_command()  # as the segflow command does; the baselines run under the same settings
    model = unet3d_model()
    figures: dict[str, Any] = {
        "volume": f"{args.size}^3 int16, patch {PATCH}^3, small 3-D U-Net, {args.device}"
    }
    checks = []
    sizes = [int(s) for s in args.memory_sizes.split(",")]
    if args.memory_only:
        with tempfile.TemporaryDirectory() as tmp:
            return report("(d) volumes", figures, memory_checks(Path(tmp), figures, sizes))
    with tempfile.TemporaryDirectory() as tmp:
        path = write_volume(Path(tmp) / f"vol{args.size}.nii", args.size)
        grid = make_grid((args.size,) * 3, PATCH, 0.25)
        predicted: list[int] = []

        def forward(_: int) -> float:
            return pure_forward_seconds(model.module, len(grid), args.batch_size, args.device)

        def end_to_end(i: int) -> float:
            with timer() as t:
                result = segment(
                    path,
                    model,
                    Path(tmp) / f"out{i}.zarr",
                    patch_size=PATCH,
                    overlap=0.25,
                    batch_size=args.batch_size,
                    device=args.device,
                )
            predicted.append(result.stats["patches_predicted"])
            return t["seconds"]

        def monai(_: int) -> float:
            return monai_seconds(path, model.module, args.batch_size, args.device)

        timed = [forward, end_to_end] + ([] if args.skip_monai else [monai])
        best = best_of_interleaved(args.repeat, *timed)
        forward_s, end_to_end_s = best[0], best[1]
        figures["grid patches / predicted"] = f"{len(grid)} / {predicted[-1]}"
        figures[f"pure forward seconds (best of {args.repeat})"] = f"{forward_s:.1f}"
        figures[f"end-to-end seconds (best of {args.repeat})"] = f"{end_to_end_s:.1f}"
        ratio = end_to_end_s / forward_s
        checks.append(
            Check(
                "end-to-end / pure forward", ratio, "x", f"<= {TARGET_RATIO}", ratio <= TARGET_RATIO
            )
        )
        if not args.skip_monai:
            figures[f"MONAI sliding_window seconds (best of {args.repeat})"] = f"{best[2]:.1f}"
            speedup = best[2] / end_to_end_s
            checks.append(
                Check(
                    "speed-up over MONAI",
                    speedup,
                    "x",
                    f">= {TARGET_MONAI}",
                    speedup >= TARGET_MONAI,
                )
            )
        if not args.skip_memory:
            checks += memory_checks(Path(tmp), figures, sizes)
    return report("(d) volumes", figures, checks)


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
