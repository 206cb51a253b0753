"""``segflow train`` and ``segflow demo``.

``register(app)`` adds both commands to the main Typer app; ``python -m
segflow.cli.train`` runs them alone. User mistakes (SegflowError) print one
line and exit 1, without a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from segflow.cli.common import one_line_errors
from segflow.errors import ConfigError
from segflow.options import parse_ints, parse_list, parse_numbers, parse_size

if TYPE_CHECKING:
    from segflow.models.meta import ClassInfo
    from segflow.train.augment import AugmentConfig
    from segflow.train.config import TrainConfig

err = Console(stderr=True)
out = Console()

CLASS_PRESETS = ("landcover", "phantom")


def parse_classes(value: str | None) -> list[ClassInfo] | None:
    """Class list from a preset (landcover, phantom), a JSON file, or comma-separated names."""
    if value is None:
        return None
    if value in CLASS_PRESETS:
        from segflow.samples import landcover_classes, phantom_classes

        return landcover_classes() if value == "landcover" else phantom_classes()
    if value.endswith(".json"):
        return _classes_from_json(Path(value))
    from segflow.models.meta import ClassInfo, default_colors

    names = parse_list(value) or []
    if not names:
        raise ConfigError("--classes needs names like water,forest,field,urban")
    colors = default_colors(len(names))
    return [ClassInfo(name=n, color=c) for n, c in zip(names, colors, strict=True)]


def _classes_from_json(path: Path) -> list[ClassInfo]:
    from segflow.models.meta import ClassInfo

    try:
        entries = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read classes from {path}: {exc}") from None
    try:
        return [
            ClassInfo.model_validate(e) if isinstance(e, dict) else ClassInfo(name=str(e))
            for e in entries
        ]
    except ValueError as exc:
        raise ConfigError(
            f"{path}: entries must be {{'name': ..., 'color': [r, g, b]}} ({exc})"
        ) from None


def parse_arch_args(values: list[str] | None) -> dict[str, Any]:
    """``key=value`` pairs; values are JSON when they parse (numbers, lists), else strings."""
    from segflow.models.archs import parse_arch_args as parse

    return parse(values or [], "--arch-arg")


def augment_config(
    augment: bool,
    *,
    flip: bool,
    rotate: bool,
    rotate_axes: str | None,
    gain: float,
    bias: float,
    noise: float,
) -> AugmentConfig:
    """The augmentation the flags ask for; ``augment=False`` turns every kind off."""
    from segflow.train.augment import AugmentConfig

    if not augment:
        return AugmentConfig(flip=False, rotate90=False, gain=0.0, bias=0.0, noise=0.0)
    axes = parse_ints(rotate_axes, "--rotate-axes")
    if axes is not None and len(axes) != 2:
        raise ConfigError("--rotate-axes takes two spatial axes, e.g. 0,1")
    return AugmentConfig(
        flip=flip,
        rotate90=rotate,
        rotate_axes=((axes[0], axes[1]),) if axes else None,
        gain=gain,
        bias=bias,
        noise=noise,
    )


def parse_class_weights(value: str) -> str | list[float]:
    """``none``, ``auto``, or one weight per class."""
    if value in ("none", "auto"):
        return value
    return list(parse_numbers(value, "--class-weights") or ())


def parse_percentiles(value: str | None) -> tuple[float, float] | None:
    clip = parse_numbers(value, "--clip-percentiles")
    if clip is None:
        return None
    if len(clip) != 2:
        raise ConfigError("--clip-percentiles takes two numbers, e.g. 0.5,99.5")
    return clip[0], clip[1]


def train_command(
    images: Annotated[
        list[Path], typer.Option("--images", "-i", help="Training images or folders.")
    ],
    masks: Annotated[
        list[Path], typer.Option("--masks", "-k", help="Masks / label volumes, or folders.")
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Model file to write (.safetensors).")
    ],
    val_images: Annotated[
        list[Path] | None, typer.Option(help="Validation images or folders.")
    ] = None,
    val_masks: Annotated[
        list[Path] | None, typer.Option(help="Validation masks or folders.")
    ] = None,
    val_fraction: Annotated[
        float, typer.Option(help="Without validation pairs: share of each input held out.")
    ] = 0.1,
    classes: Annotated[
        str | None, typer.Option(help="landcover, phantom, names a,b,c, or a JSON file.")
    ] = None,
    arch: Annotated[str, typer.Option(help="Architecture (segflow model list).")] = "unet2d",
    encoder: Annotated[str | None, typer.Option(help="Encoder for smp/FCN architectures.")] = None,
    arch_arg: Annotated[
        list[str] | None, typer.Option(help="Architecture argument key=value (repeatable).")
    ] = None,
    slice_axis: Annotated[int, typer.Option(help="2-D model on volumes: axis to slice along.")] = 2,
    bands: Annotated[str | None, typer.Option(help="1-based bands to read, e.g. 4,3,2.")] = None,
    nodata: Annotated[
        float | None, typer.Option(help="Image nodata value (overrides the file's).")
    ] = None,
    patch_size: Annotated[
        str | None, typer.Option(help="Training patch, e.g. 256 or 64,64,64.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Patches per step.")] = 8,
    epochs: Annotated[
        int, typer.Option(help="Epochs (validation and checkpoint after each).")
    ] = 10,
    steps_per_epoch: Annotated[int, typer.Option(help="Optimizer steps per epoch.")] = 100,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, warm-up + cosine).")] = 2e-3,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 1e-4,
    ignore_index: Annotated[int, typer.Option(help="Mask value that is not trained on.")] = 255,
    balance: Annotated[bool, typer.Option(help="Class-balanced patch sampling.")] = False,
    class_weights: Annotated[
        str, typer.Option(help="none, auto, or one weight per class.")
    ] = "none",
    dice_weight: Annotated[
        float, typer.Option(help="Weight of the soft Dice term (0: off).")
    ] = 0.0,
    augment: Annotated[
        bool, typer.Option(help="Augment at all (--no-augment: none of the below).")
    ] = True,
    flip: Annotated[
        bool, typer.Option(help="Random flips (off for anatomy with a fixed left/right).")
    ] = True,
    rotate: Annotated[bool, typer.Option(help="Random quarter turns.")] = True,
    rotate_axes: Annotated[
        str | None, typer.Option(help="3-D: plane for quarter turns, e.g. 0,1.")
    ] = None,
    gain: Annotated[float, typer.Option(help="Intensity gain jitter (fraction).")] = 0.1,
    bias: Annotated[float, typer.Option(help="Intensity offset jitter (normalized units).")] = 0.1,
    noise: Annotated[float, typer.Option(help="Gaussian noise (normalized units).")] = 0.0,
    encoder_weights: Annotated[
        Path | None, typer.Option(help="Local encoder weights to start from.")
    ] = None,
    freeze_encoder_epochs: Annotated[int, typer.Option(help="Epochs with the encoder frozen.")] = 0,
    patience: Annotated[
        int | None, typer.Option(help="Early stopping: epochs without gain.")
    ] = None,
    val_patches: Annotated[int, typer.Option(help="Most validation patches per epoch.")] = 64,
    checkpoint_dir: Annotated[
        Path | None, typer.Option(help="Checkpoints (default OUTPUT.ckpt).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint.")] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch.")] = None,
    clip_percentiles: Annotated[
        str | None, typer.Option(help="Clip inputs to percentiles, e.g. 0.5,99.5.")
    ] = None,
    scale: Annotated[str | None, typer.Option(help="Raw-value scale per channel (or one).")] = None,
    offset: Annotated[
        str | None, typer.Option(help="Raw-value offset per channel (or one).")
    ] = None,
    time_limit: Annotated[float | None, typer.Option(help="Stop after this many minutes.")] = None,
    infer_patch: Annotated[
        str | None, typer.Option(help="Patch-size hint written for inference.")
    ] = None,
    half: Annotated[
        bool, typer.Option(help="Store float16 weights when labels stay the same.")
    ] = True,
    spacing: Annotated[
        str | None,
        typer.Option(help="Volumes: mm per model axis to record (default: the inputs' own)."),
    ] = None,
    resolution: Annotated[
        float | None,
        typer.Option(help="Rasters: metres per pixel to record (default: the inputs' own)."),
    ] = None,
    flow: Annotated[bool, typer.Option(help="Run as a Prefect flow (flows/train.py).")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a segmentation model on image/mask pairs and write a segflow model file."""
    with one_line_errors():
        from segflow.train.config import TrainConfig

        config = TrainConfig(
            images=list(images), masks=list(masks), output=output,
            val_images=list(val_images or []), val_masks=list(val_masks or []),
            val_fraction=val_fraction, classes=parse_classes(classes), arch=arch, encoder=encoder,
            arch_kwargs=parse_arch_args(arch_arg), slice_axis=slice_axis,
            bands=parse_ints(bands, "--bands"), nodata=nodata,
            patch_size=parse_size(patch_size, "--patch-size"), batch_size=batch_size,
            epochs=epochs, steps_per_epoch=steps_per_epoch, lr=lr, weight_decay=weight_decay,
            ignore_index=ignore_index, balance=balance,
            class_weights=parse_class_weights(class_weights), dice_weight=dice_weight,
            augment=augment_config(
                augment, flip=flip, rotate=rotate, rotate_axes=rotate_axes, gain=gain, bias=bias,
                noise=noise,
            ),
            encoder_weights=encoder_weights, freeze_encoder_epochs=freeze_encoder_epochs,
            patience=patience, val_patches=val_patches, checkpoint_dir=checkpoint_dir,
            resume=resume, seed=seed, threads=threads,
            scale=parse_numbers(scale, "--scale"), offset=parse_numbers(offset, "--offset"),
            clip_percentiles=parse_percentiles(clip_percentiles),
            time_limit_s=time_limit * 60 if time_limit else None,
            infer_patch=parse_size(infer_patch, "--infer-patch"), half=half,
            spacing=parse_numbers(spacing, "--spacing"), resolution=resolution,
        )  # fmt: skip
        config.check()  # before torch is imported
        summary = run_training(config, flow=flow, progress=progress and sys.stderr.isatty())
    print_training_summary(summary)


def run_training(config: TrainConfig, *, flow: bool, progress: bool) -> dict[str, Any]:
    """Train in this process, or as a recorded Prefect flow run; returns the summary."""
    if flow:
        from flows.train import train_flow

        return train_flow(config=config)
    from segflow.train.loop import train

    result = train(config, log=lambda m: err.print(m, highlight=False), progress=progress)
    return result.summary()


def print_training_summary(summary: dict[str, Any]) -> None:
    out.print(
        f"[green]wrote[/] {summary['model']}: {summary['epochs']} epochs, {summary['steps']} steps, "
        f"best epoch {summary['best_epoch']} (val mIoU {summary['miou']}), "
        f"{summary['seconds']:.0f} s, stopped by {summary['stopped']}",
        highlight=False,
    )


def demo_command(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path(
        "segflow-demo"
    ),
    size: Annotated[
        str, typer.Option(help="Sample size: default (2048² scene) or small.")
    ] = "default",
    seed: Annotated[
        int,
        typer.Option(
            help="Seed of the sample data (the bundled models never saw seeds below 100)."
        ),
    ] = 0,
    phantom: Annotated[bool, typer.Option(help="Also segment the CT phantom.")] = True,
    flow: Annotated[bool, typer.Option(help="Run through the Prefect segment flow.")] = True,
    progress: Annotated[bool, typer.Option(help="Show progress.")] = True,
    resolution: Annotated[
        bool,
        typer.Option(
            "--resolution",
            help="Instead: train a model at a coarser resolution than the sample's and score "
            "it on full-resolution input with and without resampling (about 3 minutes).",
        ),
    ] = False,
    factor: Annotated[
        int, typer.Option(help="--resolution: the model's pixels are this many times larger.")
    ] = 4,
) -> None:
    """The main job: sample data -> bundled models -> Zarr, preview PNG, statistics, accuracy."""
    if resolution:
        _resolution_demo(out_dir, size, factor, progress)
        return
    with one_line_errors():
        from segflow.samples.demo import print_summary, run_demo

        result = run_demo(
            out_dir, size=size, seed=seed, phantom=phantom, use_flow=flow,
            log=lambda m: err.print(m, highlight=False) if progress else None,
        )  # fmt: skip
    print_summary(result, out)


def _resolution_demo(out_dir: Path, size: str, factor: int, progress: bool) -> None:
    """``segflow demo --resolution``: the table of mIoU with and without resampling."""
    with one_line_errors():
        from segflow.samples.resolution import run_resolution_demo

        demo = run_resolution_demo(
            out_dir, size=size, factor=factor,
            log=lambda m: err.print(m, highlight=False) if progress else None,
        )  # fmt: skip
    out.print(f"model trained in {demo.train_seconds:.0f} s: {demo.model}", highlight=False)
    width = max(len(r.label) for r in demo.runs)
    names = list(demo.runs[0].iou)
    head = "".join(f"{n[:7]:>8}" for n in names)
    out.print(f"{'run':<{width}}  mIoU  {head}  seconds", highlight=False)
    for run in demo.runs:
        ious = "".join(f"{run.iou[n]:8.3f}" for n in names)
        out.print(
            f"{run.label:<{width}}  {run.miou:.3f}{ious}  {run.seconds:7.1f}", highlight=False
        )


def register(app: typer.Typer) -> None:
    """Add ``train`` and ``demo`` to the ``segflow`` command."""
    app.command("train")(train_command)
    app.command("demo")(demo_command)


def main() -> None:
    app = typer.Typer(name="segflow", no_args_is_help=True, add_completion=False,
                      pretty_exceptions_show_locals=False)  # fmt: skip
    register(app)
    app()


if __name__ == "__main__":
    main()
