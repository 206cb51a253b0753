"""``segflow model ...``: list architectures, create, inspect and export model files.

A Typer sub-app mounted by :mod:`segflow.cli.main`. Like the main command, a
SegflowError prints one line on stderr and exits with status 1. torch loads
only in the commands that run a model: ``segflow model list`` needs none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from segflow.cli.common import one_line_errors
from segflow.errors import ConfigError
from segflow.options import parse_ints, parse_list, parse_numbers

if TYPE_CHECKING:
    from segflow.models.meta import ModelMeta, Normalization

model_app = typer.Typer(
    help="Create, inspect and export model files.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

_PRESETS: dict[str, dict[str, tuple[float, ...]]] = {
    # ImageNet statistics on 0..1 values; scale brings 8-bit data there
    "imagenet": {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "scale": (1 / 255,)},
    "uint8": {"mean": (0.0,), "std": (1.0,), "scale": (1 / 255,)},
}


@model_app.command("list")
def list_command(
    encoders: Annotated[
        bool, typer.Option("--encoders", help="List smp encoder names instead.")
    ] = False,
) -> None:
    """Architectures that 'segflow model create' accepts."""
    from segflow.models.archs import arch_spec, list_models

    if encoders:
        from segmentation_models_pytorch.encoders import get_encoder_names

        for name in get_encoder_names():
            typer.echo(name)
        typer.echo("tu-<name>  (any timm model with features_only support)")
        return
    typer.echo(f"{'ARCH':<14} {'DIMS':<5} {'ENCODER':<10} DESCRIPTION")
    for name in list_models():
        spec = arch_spec(name)
        dims = "/".join(f"{d}D" for d in spec.spatial_dims)
        typer.echo(f"{name:<14} {dims:<5} {spec.default_encoder or '-':<10} {spec.description}")


@model_app.command("create")
def create_command(
    arch: Annotated[str, typer.Argument(help="Architecture (see 'segflow model list').")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Model file to write.")],
    encoder: Annotated[
        str | None, typer.Option(help="smp encoder or tu-<timm name> (smp/FCN archs).")
    ] = None,
    in_channels: Annotated[int, typer.Option(help="Input channels (bands).")] = 3,
    classes: Annotated[int | None, typer.Option(help="Number of classes.")] = None,
    class_names: Annotated[
        str | None, typer.Option(help="Comma-separated class names (sets --classes).")
    ] = None,
    band_names: Annotated[str | None, typer.Option(help="Comma-separated band names.")] = None,
    spatial_dims: Annotated[
        int | None, typer.Option(help="2 or 3; checked against the architecture.")
    ] = None,
    normalization: Annotated[
        str | None, typer.Option(help="Preset: imagenet, uint8 (x/255) or none.")
    ] = None,
    mean: Annotated[str | None, typer.Option(help="Per-channel means, comma-separated.")] = None,
    std: Annotated[str | None, typer.Option(help="Per-channel stds, comma-separated.")] = None,
    scale: Annotated[str | None, typer.Option(help="Per-channel scale before mean/std.")] = None,
    offset: Annotated[str | None, typer.Option(help="Per-channel offset after scale.")] = None,
    patch_size: Annotated[
        str | None, typer.Option(help="Patch size hint, e.g. 512 or 96,96,96.")
    ] = None,
    overlap: Annotated[
        float | None, typer.Option(help="Overlap hint, fraction of the patch.")
    ] = None,
    orientation: Annotated[str | None, typer.Option(help="Volume axis codes, e.g. RAS.")] = None,
    spacing: Annotated[
        str | None, typer.Option(help="Trained voxel spacing in mm per model axis, e.g. 1.5.")
    ] = None,
    resolution: Annotated[
        float | None, typer.Option(help="Trained ground resolution in metres per pixel.")
    ] = None,
    value_range: Annotated[
        str | None,
        typer.Option(help="Expected values per channel, e.g. -1024..3071 or 0..1,0..1,0..1."),
    ] = None,
    arg: Annotated[
        list[str] | None,
        typer.Option("--arg", help="Architecture argument KEY=VALUE (JSON value), repeatable."),
    ] = None,
    concepts: Annotated[
        Path | None,
        typer.Option(
            help="YAML/JSON: coded concepts per class name for DICOM SEG, e.g. "
            "liver: {category: AnatomicalStructure, type: Liver}."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed for the initial weights.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
) -> None:
    """Create a randomly initialised model file (for tests, or as a training start)."""
    with one_line_errors():
        concept_data = read_concepts(concepts) if concepts is not None else None
        import torch

        from segflow.models.archs import arch_spec, parse_arch_args
        from segflow.models.files import save_model
        from segflow.models.info import count_parameters
        from segflow.models.registry import new_model

        if output.exists() and not overwrite:
            raise ConfigError(f"{output} exists; pass --overwrite to replace it")
        spec = arch_spec(arch)
        kwargs = parse_arch_args(arg or [], "--arg")
        if spatial_dims is not None and spatial_dims not in spec.spatial_dims:
            other = "unet3d" if spatial_dims == 3 else "unet"
            raise ConfigError(
                f"{spec.name} is {'/'.join(map(str, spec.spatial_dims))}-D, not {spatial_dims}-D; "
                f"try '{other}'"
            )
        if spec.family == "pixel" and spatial_dims is not None:
            kwargs["spatial_dims"] = spatial_dims
        names = parse_list(class_names)
        if names is not None and classes is not None and classes != len(names):
            raise ConfigError(f"--classes {classes} but --class-names lists {len(names)} names")
        class_spec: int | list[str] = names if names is not None else (classes or 2)
        norm = _normalization(in_channels, normalization, mean, std, scale, offset)
        torch.manual_seed(seed)
        module, meta = new_model(
            spec.name,
            encoder=encoder,
            in_channels=in_channels,
            classes=class_spec,
            band_names=parse_list(band_names),
            normalization=norm,
            patch_size=_ints(patch_size, "--patch-size", spatial_dims or spec.spatial_dims[0]),
            overlap=overlap,
            orientation=orientation,
            provenance={"created_by": "segflow model create", "seed": seed},
            **kwargs,
        )
        meta = _with_resolution(meta, spacing, resolution, value_range)
        if concepts is not None:
            meta = with_concepts(meta, concept_data, concepts.name)
        digest = save_model(module, meta, output)
        typer.echo(f"wrote {output}")
        typer.echo(f"  architecture {meta.arch} {_kw(meta.arch_kwargs)}")
        typer.echo(f"  parameters   {count_parameters(module):,}")
        typer.echo(f"  stride       {meta.output_stride}")
        typer.echo(f"  sha256       {digest}")


@model_app.command("info")
def info_command(
    path: Annotated[Path, typer.Argument(help="Model file.")],
    patch_size: Annotated[
        str | None, typer.Option(help="Patch for FLOPs/receptive field (default: the hint).")
    ] = None,
    flops: Annotated[bool, typer.Option(help="Count FLOPs per patch.")] = True,
    receptive_field: Annotated[bool, typer.Option(help="Estimate the receptive field.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Metadata, parameter count, FLOPs per patch, output stride and receptive field."""
    with one_line_errors():
        from segflow.models.files import load_model
        from segflow.models.info import format_info, model_info

        loaded = load_model(path)
        patch = _ints(patch_size, "--patch-size", loaded.meta.spatial_dims)
        info = model_info(loaded, patch_size=patch, flops=flops, receptive=receptive_field)
        if as_json:
            data: dict[str, Any] = {
                "path": str(info.path) if info.path else None,
                "sha256": info.sha256,
                "runtime": info.runtime,
                "parameters": info.parameters,
                "patch_size": list(info.patch_size),
                "flops_per_patch": info.flops_per_patch,
                "output_stride": info.output_stride,
                "receptive_field": list(info.receptive_field) if info.receptive_field else None,
                "global_context": info.global_context,
                "meta": info.meta.model_dump(mode="json"),
            }
            typer.echo(json.dumps(data, indent=2))
            return
        rows = [*format_info(info), *info.meta.describe_resolution()]
        for label, value in [*rows, *info.meta.describe_concepts()]:
            typer.echo(f"{label + ':':<17} {value}")


@model_app.command("export")
def export_command(
    path: Annotated[Path, typer.Argument(help="segflow model file (.safetensors).")],
    to: Annotated[str, typer.Option("--to", help="torchscript or onnx.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output file (default: next to input).")
    ] = None,
    atol: Annotated[float, typer.Option(help="Allowed difference from the original.")] = 1e-4,
    sidecar_format: Annotated[str, typer.Option(help="Sidecar format: yaml or json.")] = "yaml",
) -> None:
    """Export to TorchScript or ONNX; verified against the original, sidecar written."""
    with one_line_errors():
        from segflow.models.export import export_model

        result = export_model(
            path,
            _export_target(to),
            output,
            atol=atol,
            sidecar_format=sidecar_format,
        )
        typer.echo(
            f"wrote {result.path} ({result.method}, max difference {result.max_abs_diff:.2g})"
        )
        typer.echo(f"wrote {result.sidecar}")


def _with_resolution(
    meta: ModelMeta, spacing: str | None, resolution: float | None, value_range: str | None
) -> ModelMeta:
    """``meta`` with the trained spacing, resolution and value range given on the command line."""
    from segflow.models.meta import ModelMeta

    changes: dict[str, Any] = {}
    numbers = parse_numbers(spacing, "--spacing")
    if numbers is not None:
        changes["spacing"] = numbers * meta.spatial_dims if len(numbers) == 1 else numbers
    if resolution is not None:
        changes["resolution"] = resolution
    if value_range is not None:
        ranges = [_value_range(item) for item in parse_list(value_range) or []]
        changes["value_range"] = ranges * meta.in_channels if len(ranges) == 1 else ranges
    if not changes:
        return meta
    try:
        return ModelMeta.model_validate({**meta.model_dump(), **changes})
    except ValueError as exc:
        raise ConfigError(f"invalid model metadata: {' '.join(str(exc).split())[:200]}") from None


def read_concepts(path: Path) -> dict[str, Any]:
    """A concepts file: a mapping of class name -> {category, type}, read safely."""
    from segflow.io.documents import DocumentError, read_document

    try:
        data = read_document(path)
    except (OSError, DocumentError) as exc:
        raise ConfigError(f"cannot read concepts file {path}: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(
            f"{path} must map class names to {{category, type}}, e.g. "
            "liver: {category: AnatomicalStructure, type: Liver}"
        )
    return data


def with_concepts(meta: ModelMeta, data: Any, where: str) -> ModelMeta:
    """``meta`` carrying the coded concepts ``data``, validated with it (one line if wrong)."""
    from segflow.models.header import parse_meta

    return parse_meta({**meta.model_dump(), "concepts": data}, where)


def _value_range(text: str) -> tuple[float, float]:
    low, sep, high = text.partition("..")
    try:
        if not sep:
            raise ValueError(text)
        return float(low), float(high)
    except ValueError:
        raise ConfigError(f"--value-range takes LOW..HIGH per channel, got '{text}'") from None


def _export_target(value: str) -> Literal["torchscript", "onnx"]:
    target = value.lower()
    if target == "torchscript":
        return "torchscript"
    if target == "onnx":
        return "onnx"
    raise ConfigError(f"--to must be torchscript or onnx, got {value!r}")


def _floats(value: str | None, name: str, n: int) -> tuple[float, ...] | None:
    numbers = parse_numbers(value, name)
    return None if numbers is None else _broadcast(numbers, name, n)


def _broadcast(numbers: tuple[float, ...], name: str, n: int) -> tuple[float, ...]:
    if len(numbers) == 1:
        return numbers * n
    if len(numbers) != n:
        raise ConfigError(f"{name} has {len(numbers)} values for {n} input channels")
    return numbers


def _ints(value: str | None, name: str, dims: int) -> tuple[int, ...] | None:
    numbers = parse_ints(value, name)
    if numbers is None:
        return None
    if len(numbers) == 1:
        return numbers * dims
    if len(numbers) != dims:
        raise ConfigError(f"{name} needs 1 or {dims} sizes, got {len(numbers)}")
    return numbers


def _normalization(
    n: int,
    preset: str | None,
    mean: str | None,
    std: str | None,
    scale: str | None,
    offset: str | None,
) -> Normalization | None:
    from segflow.models.meta import Normalization

    fields = _preset_fields(preset, n)
    for key, raw in (("mean", mean), ("std", std), ("scale", scale), ("offset", offset)):
        parsed = _floats(raw, f"--{key}", n)
        if parsed is not None:
            fields[key] = parsed
    if not fields:
        return None
    fields.setdefault("mean", (0.0,) * n)
    fields.setdefault("std", (1.0,) * n)
    try:
        return Normalization.model_validate(fields)
    except ValueError as exc:
        raise ConfigError(f"invalid normalization: {' '.join(str(exc).split())[:200]}") from None


def _preset_fields(preset: str | None, n: int) -> dict[str, tuple[float, ...]]:
    """The fields of a normalization preset, broadcast to ``n`` channels."""
    if preset is None or preset.lower() == "none":
        return {}
    base = _PRESETS.get(preset.lower())
    if base is None:
        raise ConfigError(f"unknown normalization preset {preset!r}; use imagenet, uint8 or none")
    fields: dict[str, tuple[float, ...]] = {}
    for key, values in base.items():
        if len(values) not in (1, n):
            raise ConfigError(
                f"normalization preset {preset} is for {len(values)} channels, "
                f"the model has {n}; give --mean/--std instead"
            )
        fields[key] = _broadcast(values, preset, n)
    return fields


def _kw(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in kwargs.items())
