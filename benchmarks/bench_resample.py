"""(r) Native resolution: a 3-D U-Net trained at 1.5 mm on a 1 mm volume, resampled per region.

The 192^3 1 mm volume has a 128^3 model grid (patch 96^3, overlap 0.25, 8
patches; ``--size 256`` gives 171^3 and 27 patches, three times as long: 192
keeps the benchmark within 4 minutes on two shared cores, and has more output
voxels per patch to resample back than 256). Three timed runs, interleaved,
best of ``--repeat``:

* pure forward: the model over as many 96^3 patches as the model grid has (the
  baseline of bench_volume);
* resampled: ``segment`` of the 1 mm volume with the 1.5 mm model (every patch
  resampled from the input, the blended probabilities resampled back);
* native: ``segment`` of the same sphere written at 1.5 mm (171^3), the same
  model and patches with no resampling.

The resampling overhead is (resampled - native) / pure forward; the total
overhead (resampled - pure forward) / pure forward also counts the reads,
blending and writes every run has. Then peak RSS of 256^3 and 512^3 1 mm
volumes through a near-free 1.5 mm model, each in a fresh process, must be flat.

    uv run python benchmarks/bench_resample.py [--size 192] [--skip-memory] [--repeat 2]
    uv run python benchmarks/bench_resample.py --memory-only [--memory-sizes 256,512]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_volume import PATCH, pure_forward_seconds, unet3d_model
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
from segflow.engine.resample import model_space
from segflow.io.nib import save_volume
from segflow.models import LoadedModel

MODEL_SPACING = 1.5
TARGET_OVERHEAD = 0.10
TARGET_FLAT = 0.10
MEMORY_SIZES = (256, 512)


def write_sphere(path: Path, size: int, spacing: float) -> Path:
    """A noisy sphere filling 80 % of a cube of ``size`` voxels at ``spacing`` mm (int16)."""
    rng = np.random.default_rng(0)
    data = np.empty((size, size, size), np.int16)
    centre = np.arange(size) - size / 2
    i, j = np.meshgrid(centre, centre, indexing="ij")
    for k in range(size):  # slab by slab: never a float copy of the whole volume
        r = np.sqrt(i**2 + j**2 + centre[k] ** 2)
        data[:, :, k] = np.where(r < size * 0.4, 40, -1000) + rng.integers(-20, 20, (size, size))
    affine = np.diag([spacing, spacing, spacing, 1.0])
    save_volume(path, data, affine, descrip="segflow resampling benchmark", disk_dtype=np.int16)
    return path


def at_spacing(model: LoadedModel, spacing: float) -> LoadedModel:
    meta = model.meta.model_copy(update={"spacing": (spacing,) * 3})
    return LoadedModel(meta, model.module, model.sha256, model.path, model.runtime)


def memory_run(size: int, tmp: str) -> dict[str, Any]:
    as_the_command()  # as the segflow command does
    model = at_spacing(near_free_model(1, 3, spatial_dims=3), MODEL_SPACING)
    with timer() as t:
        result = segment(
            Path(tmp) / f"vol{size}.nii",
            model,
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
    }


def memory_checks(
    tmp: Path, figures: dict[str, Any], sizes: tuple[int, ...] = MEMORY_SIZES
) -> list[Check]:
    """Peak RSS of resampled near-free runs, each in a fresh process: one region, then eight."""
    runs = {}
    for size in sizes:
        if not (tmp / f"vol{size}.nii").exists():
            write_sphere(tmp / f"vol{size}.nii", size, 1.0)
        run = run_subprocess_json(memory_run, size, str(tmp))
        figures[f"near-free {size}^3 resampled peak RSS / time"] = (
            f"{run['peak_mb']:.0f} MB / {run['seconds']:.1f} s / {run['patches']} patches"
        )
        runs[size] = run["peak_mb"]
    return growth_checks(runs, TARGET_FLAT)


def timed_runs(
    tmp: Path, size: int, batch: int, repeat: int, figures: dict[str, Any]
) -> list[Check]:
    base = unet3d_model()
    coarse = at_spacing(base, MODEL_SPACING)
    fine_path = write_sphere(tmp / f"fine{size}.nii", size, 1.0)
    space = model_space((size,) * 3, (1.0,) * 3, (MODEL_SPACING,) * 3)
    assert space is not None
    grid_shape = space.model_shape
    native_path = write_sphere(tmp / f"native{grid_shape[0]}.nii", grid_shape[0], MODEL_SPACING)
    grid = make_grid(grid_shape, PATCH, 0.25)
    predicted: dict[str, int] = {}

    def forward(_: int) -> float:
        return pure_forward_seconds(base.module, len(grid), batch)

    def run(name: str, path: Path, model: LoadedModel, i: int) -> float:
        with timer() as t:
            result = segment(
                path,
                model,
                tmp / f"{name}{i}.zarr",
                patch_size=PATCH,
                overlap=0.25,
                batch_size=batch,
                device="cpu",
            )
        predicted[name] = result.stats["patches_predicted"]
        return t["seconds"]

    def resampled(i: int) -> float:
        return run("resampled", fine_path, coarse, i)

    def native(i: int) -> float:
        return run("native", native_path, base, i)

    forward_s, resampled_s, native_s = best_of_interleaved(repeat, forward, resampled, native)
    figures["model grid / grid patches"] = f"{'x'.join(map(str, grid_shape))} / {len(grid)}"
    figures["patches predicted resampled / native"] = (
        f"{predicted['resampled']} / {predicted['native']}"
    )
    figures[f"pure forward seconds (best of {repeat})"] = f"{forward_s:.1f}"
    figures[f"resampled run seconds (best of {repeat})"] = f"{resampled_s:.1f}"
    figures[f"native 1.5 mm run seconds (best of {repeat})"] = f"{native_s:.1f}"
    resampling = (resampled_s - native_s) / forward_s
    total = (resampled_s - forward_s) / forward_s
    return [
        Check(
            "resampling overhead / pure forward",
            resampling * 100,
            "%",
            f"<= {TARGET_OVERHEAD * 100:.0f}",
            resampling <= TARGET_OVERHEAD,
        ),
        Check(
            "all overhead / pure forward",
            total * 100,
            "%",
            f"<= {TARGET_OVERHEAD * 100:.0f}",
            total <= TARGET_OVERHEAD,
        ),
    ]


def main() -> bool:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-only", action="store_true", help="only the peak RSS runs")
    parser.add_argument(
        "--memory-sizes",
        default=",".join(map(str, MEMORY_SIZES)),
        help="volume edges, e.g. 256,512",
    )
    parser.add_argument("--repeat", type=int, default=2, help="best of N, interleaved")
    args = parser.parse_args()
    try:
        sizes = tuple(sorted(int(v) for v in args.memory_sizes.split(",")))
    except ValueError:
        parser.error(f"--memory-sizes takes edges like 256,512, not {args.memory_sizes!r}")
    as_the_command()  # as the segflow command does; the baseline runs under the same settings
    figures: dict[str, Any] = {
        "volume": f"{args.size}^3 int16 at 1 mm, model at {MODEL_SPACING} mm, small 3-D U-Net"
        if not args.memory_only
        else f"int16 at 1 mm, near-free model at {MODEL_SPACING} mm"
    }
    with tempfile.TemporaryDirectory() as tmp:
        checks = []
        if not args.memory_only:
            checks += timed_runs(Path(tmp), args.size, args.batch_size, args.repeat, figures)
        if not args.skip_memory:
            checks += memory_checks(Path(tmp), figures, sizes)
    return report("(r) resampling to the model's spacing", figures, checks)


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
