"""``segflow run``: inputs through a model into stores, recorded as a Prefect flow run.

Everything that can be wrong with a command line (options, inputs, the model path,
the output location) is checked here before torch is imported, so a mistake costs
a second and one line.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from segflow.cli.common import EXIT_ERROR, EXIT_PARTIAL, err, one_line_errors, out
from segflow.engine.devices import worker_devices
from segflow.errors import ConfigError, OutputError
from segflow.inputs import InputItem, collect_inputs, plan_items
from segflow.io.files import check_readable
from segflow.io.stac_names import is_stac_input, split_fragment
from segflow.io.uris import as_location, is_uri
from segflow.models.compat import check_shape_fit
from segflow.models.members import check_agreement, check_weights, member_files
from segflow.options import RunOptions, parse_numbers
from segflow.spec import Pipeline, load_spec

if TYPE_CHECKING:
    from segflow.api import RunResult
    from segflow.io.source import Source
    from segflow.models.meta import ModelMeta

ProgressFactory = Callable[[str], Callable[[int, int], None]]


def run_command(
    inputs: Annotated[
        list[str] | None,
        typer.Argument(
            help="GeoTIFF/NIfTI files, folders or globs; s3:// (gs://, az://, https://) URIs too.",
            show_default=False,
        ),
    ] = None,
    more_inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--input", "-i", help="An input, as nnU-Net and TotalSegmentator take it (repeatable)."
        ),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="Model file (.safetensors, TorchScript or ONNX); repeat it, or give a folder "
            "of model files, to run an ensemble (averaged probabilities).",
        ),
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option(help="Ensemble: one weight per model, e.g. 1,1,2 (default: equal)."),
    ] = None,
    output: Annotated[
        str,
        typer.Option(
            "--output", "-o", help="OUT.zarr for one input, else a folder (or an s3:// prefix)."
        ),
    ] = "segflow-out",
    spec: Annotated[
        Path | None, typer.Option(help="Pipeline spec (YAML); options below override it.")
    ] = None,
    patch_size: Annotated[
        str | None, typer.Option(help="Patch size, e.g. 512 or 96,96,96. [default: 512 / 96]")
    ] = None,
    overlap: Annotated[
        str | None, typer.Option(help="Overlap: a fraction (<1) or pixels. [default: 0.25]")
    ] = None,
    blend: Annotated[
        str | None,
        typer.Option(
            help="gaussian, hann, spline, linear, constant or center. [default: gaussian]"
        ),
    ] = None,
    sigma: Annotated[
        float | None, typer.Option(help="Gaussian sigma, fraction of the patch. [default: 0.125]")
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(help="Patches per forward pass. [default: auto: 8 on GPUs, fewer on CPUs]"),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu, cuda (or gpu), cuda:N or mps. [default: auto]")
    ] = None,
    amp: Annotated[bool | None, typer.Option(help="Mixed precision on GPUs. [default: on]")] = None,
    tta: Annotated[
        bool | None, typer.Option(help="Flip test-time augmentation. [default: off]")
    ] = None,
    chunk_size: Annotated[
        str | None, typer.Option(help="Output chunk size, e.g. 1024. [default: 1024 / 128]")
    ] = None,
    labels: Annotated[
        bool | None, typer.Option(help="Write the label array. [default: on]")
    ] = None,
    probabilities: Annotated[
        str | None, typer.Option(help="Class probabilities: none, uint8 or float16.")
    ] = None,
    uncertainty: Annotated[
        bool | None,
        typer.Option(
            "--uncertainty/--no-uncertainty",
            help="Also store the per-pixel uncertainty: the normalized entropy of the blended "
            "class probabilities, uint8 0..254 (255 nodata). [default: off]",
        ),
    ] = None,
    zarr_format: Annotated[
        str | None,
        typer.Option(
            help="3 (Zarr v3, OME-Zarr for volumes) or 2: raster stores GDAL and QGIS "
            'open (ZARR:"out.zarr":/labels). [default: 3]'
        ),
    ] = None,
    bands: Annotated[str | None, typer.Option(help="1-based bands to read, e.g. 4,3,2.")] = None,
    nodata: Annotated[
        float | None, typer.Option(help="Nodata value (overrides the file's).")
    ] = None,
    volume: Annotated[int | None, typer.Option(help="4-D NIfTI: the volume to segment.")] = None,
    volumes_as_channels: Annotated[
        bool | None, typer.Option(help="4-D NIfTI: volumes as channels.")
    ] = None,
    slice_axis: Annotated[
        int | None, typer.Option(help="2-D model on a volume: axis to slice along.")
    ] = None,
    spacing: Annotated[
        str | None,
        typer.Option(help="Model spacing in mm, e.g. 1.5 or 1.5,1.5,3 (overrides the model's)."),
    ] = None,
    resolution: Annotated[
        float | None, typer.Option(help="Model resolution in m per pixel (overrides the model's).")
    ] = None,
    resample: Annotated[
        bool | None,
        typer.Option(help="Resample each region to the model's spacing. [default: on]"),
    ] = None,
    series: Annotated[
        str | None,
        typer.Option(help="DICOM: the SeriesInstanceUID, where a folder holds several."),
    ] = None,
    keep_largest: Annotated[
        str | None,
        typer.Option(
            help="Clean: keep only the largest component of these classes (a,b).",
            rich_help_panel="Post-processing into NAME_clean.zarr",
        ),
    ] = None,
    keep_top: Annotated[
        int | None,
        typer.Option(
            help="Clean: keep this many of their largest components. [default: 1]",
            rich_help_panel="Post-processing into NAME_clean.zarr",
        ),
    ] = None,
    min_size: Annotated[
        str | None,
        typer.Option(
            help="Clean: drop smaller components (pixels, or 5mL, 0.5ha, 100m2).",
            rich_help_panel="Post-processing into NAME_clean.zarr",
        ),
    ] = None,
    sieve: Annotated[
        str | None,
        typer.Option(
            help="Clean: merge smaller components into their neighbour, as GDAL's sieve.",
            rich_help_panel="Post-processing into NAME_clean.zarr",
        ),
    ] = None,
    fill: Annotated[
        str | None,
        typer.Option(
            help="Clean: the class removed components become. [default: 0]",
            rich_help_panel="Post-processing into NAME_clean.zarr",
        ),
    ] = None,
    connectivity: Annotated[
        str | None,
        typer.Option(
            help="Clean: full (8 / 26 neighbours) or face (4 / 6). [default: full]",
            rich_help_panel="Post-processing into NAME_clean.zarr",
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted run: compute only missing chunks.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output store.")] = False,
    scheduler: Annotated[
        str | None,
        typer.Option(help="threads, sync, local, or a Dask scheduler address tcp://host:port."),
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Threads or local Dask workers.")] = None,
    devices: Annotated[
        str | None,
        typer.Option(
            help="One local worker process per device, each on its own GPU: cuda:0,cuda:1 "
            "(or 0,1), all (every visible GPU), or cpu,cpu (CPU worker processes)."
        ),
    ] = None,
    region_size: Annotated[
        int | None,
        typer.Option(
            help="Edge of the region a task reads and blends at once, in pixels (voxels), "
            "rounded down to whole chunks; larger regions read less halo and take more "
            "memory. [default: 2048 / 256, less for many classes]"
        ),
    ] = None,
    flow: Annotated[
        bool, typer.Option(help="Record the run as a Prefect flow run (off: call the library).")
    ] = True,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show Prefect's log lines in the terminal.")
    ] = False,
) -> None:
    """Segment INPUTS with MODEL into Zarr stores that keep the input's geometry."""
    if not verbose:
        # flow and task logs still reach the Prefect API (and UI); the terminal gets the
        # progress bar, a line per result and one-line errors
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    with one_line_errors():
        _check_scheduler_flag(scheduler, devices)
        ensemble = _ensemble_models(model_paths(model or []))
        pipeline = (load_spec(spec) if spec is not None else Pipeline()).with_overrides(
            model=ensemble[0] if ensemble else (model_paths(model)[0] if model else None),
            weights=parse_numbers(weights, "--weights"),
            patch_size=patch_size,
            overlap=overlap,
            blend=blend,
            sigma=sigma,
            batch_size=batch_size,
            device=device,
            amp=amp,
            tta=tta,
            chunk_size=chunk_size,
            labels=labels,
            probabilities=probabilities,
            uncertainty=uncertainty,
            zarr_format=zarr_format,
            bands=bands,
            nodata=nodata,
            volume=volume,
            volumes_as_channels=volumes_as_channels,
            slice_axis=slice_axis,
            spacing=spacing,
            resolution=resolution,
            resample=resample,
            series=series,
            keep_largest=keep_largest,
            keep_top=keep_top,
            min_size=min_size,
            sieve=sieve,
            fill=fill,
            connectivity=connectivity,
            scheduler=scheduler,
            workers=workers,
            devices=devices,
            region_size=region_size,
        )
        ensemble = ensemble or spec_ensemble(pipeline)
        check_weights(pipeline.weights, len(ensemble) or 1)
        given = [*(inputs or []), *(more_inputs or [])]
        checked = check_run(
            given, pipeline, output, resume=resume, overwrite=overwrite, models=ensemble
        )
        at_terminal = progress and sys.stderr.isatty()
        if at_terminal:  # the model and the flow take seconds to start: say what is coming
            err.print(
                start_message(checked, ensemble or [pipeline.require_model()], flow),
                highlight=False,
            )
        with progress_bar(at_terminal) as bar:
            # an ensemble's members are recorded in each store's provenance
            models = ensemble or pipeline.require_model()
            results = _run(checked, models, pipeline, output, resume, overwrite, flow, bar)
    _report(results)


def start_message(items: list[InputItem], models: list[Path], flow: bool) -> str:
    """The line shown at once: what runs, into what, and what the next seconds are for."""
    what = items[0].name if len(items) == 1 else f"{len(items)} inputs"
    where = items[0].output if len(items) == 1 else Path(items[0].output).parent
    model = models[0].name if len(models) == 1 else f"{len(models)} models"
    recorded = ", recorded as a Prefect flow run" if flow else ""
    return f"segmenting {what} -> {where} with {model}{recorded}; loading the model..."


def _ensemble_models(models: list[Path]) -> list[Path]:
    """The model files of an ensemble (several -m, or a folder), or [] for one model file."""
    if not models or (len(models) == 1 and not models[0].is_dir()):
        return []  # no -m (the spec's model) or one model file: no ensemble, no torch yet
    return member_files(models)


def spec_ensemble(pipeline: Pipeline) -> list[Path]:
    """The spec's ensemble (a list of model files, or a folder of them) where no -m replaced
    it, else [] (one model)."""
    folder = isinstance(pipeline.model, Path) and pipeline.model.is_dir()
    return pipeline.ensemble_files() if pipeline.ensemble or folder else []


def _check_scheduler_flag(scheduler: str | None, devices: str | None) -> None:
    """``--scheduler threads`` (or sync) with ``--devices``: the options cannot tell an
    explicit ``threads`` from the default, which devices turn into a local cluster."""
    if devices is None or scheduler is None or scheduler.strip().lower() == "local":
        return
    raise ConfigError(
        f"--devices starts one local worker per device; --scheduler {scheduler} "
        "contradicts it (drop one of them)"
    )


def model_paths(models: list[str]) -> list[Path]:
    """Model files as local paths; a URI is copied once to the local cache (no torch yet)."""
    if not any(is_uri(m) for m in models):
        return [Path(m) for m in models]
    from segflow.io.remote import local_copy

    return [local_copy(m) for m in models]


def check_run(
    inputs: list[str],
    pipeline: Pipeline,
    output: str,
    *,
    resume: bool,
    overwrite: bool,
    models: list[Path] | None = None,
) -> list[InputItem]:
    """The planned inputs, once inputs, model and output are known to be usable.

    A single input must be readable, and fit the model (``models`` for an ensemble);
    in a batch an unreadable input fails alone (with its reason) while the others run.
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other; pass one of them")
    if not inputs:
        raise ConfigError("no input given; pass files, folders or globs (or -i PATH)")
    if pipeline.options.devices:  # each named GPU must exist before any work
        worker_devices(pipeline.options.devices, pipeline.options.workers)
    files = models or [pipeline.require_model()]
    metas = model_metas(files)
    if len(metas) > 1:  # members that disagree fail now, before torch
        check_agreement([(f.name, m) for f, m in zip(files, metas, strict=True)])
    _check_clean_classes(pipeline.options, metas[0])
    _check_clean_sizes(pipeline.options)
    items = plan_items(collect_inputs(list(inputs)), as_location(output))
    first = as_location(split_fragment(items[0].input)[0])  # a STAC item: its JSON file
    single = len(items) == 1 and not (isinstance(first, Path) and first.is_dir())  # a DICOM series
    if single:
        check_readable(first)
    if not is_uri(items[0].output):  # a store in object storage is checked as it is created
        _check_output(items)
        if len(items) == 1 and not (resume or overwrite):
            target = Path(items[0].output)
            if target.exists() or target.is_symlink():
                raise OutputError(
                    f"{target} exists; pass --resume to continue it or --overwrite to replace it"
                )
    if single and isinstance(first, Path) and not is_stac_input(items[0].input):
        source = _check_header(first, pipeline.options)
        for meta in metas:
            check_shape_fit(source, meta, pipeline.options)
    return items


# "s3://b/k" as a Path is "s3:/b/k": a scheme of two letters or more (C:/ is a drive)


def _check_header(path: Path, options: RunOptions) -> Source:
    """Open the input as the run will (its header, not its data): a damaged or
    meaningless file fails before torch is imported. Its warnings come with the run."""
    from segflow.io.open import open_source

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return open_source(
            path,
            bands=options.bands,
            nodata=options.nodata,
            volume=options.volume,
            volumes_as_channels=options.volumes_as_channels,
            series=options.series,
        )


def model_metas(models: list[Path]) -> list[ModelMeta]:
    """The metadata of each model file (its header or sidecar), read without torch; an
    exported module is checked against its sidecar when it loads, by a one-patch probe."""
    from segflow.models.header import header_meta

    return [header_meta(path) for path in models]


def _check_clean_sizes(options: RunOptions) -> None:
    """Post-processing sizes that cannot be read fail now; class names once the model is known."""
    if options.postprocess_options() is None:
        return
    from segflow.outputs.postprocess import parse_min_size

    parse_min_size(options.min_size)
    parse_min_size(options.sieve, "--sieve")


def _check_clean_classes(options: RunOptions, meta: ModelMeta) -> None:
    """Class names in the post-processing options, against the model's classes."""
    asked = options.postprocess_options()
    if asked is None:
        return
    from segflow.outputs.postprocess import parse_operations

    parse_operations(list(meta.classes), **asked)


def _check_output(items: list[InputItem]) -> None:
    inputs = {Path(i.input).resolve() for i in items}
    for item in items:
        target = Path(item.output)
        if target.resolve() in inputs:
            raise OutputError(f"{target} is an input; choose another output")
        if target.exists() and not target.is_dir():
            raise OutputError(f"{target} exists and is not a store; choose another output")
    parent = Path(items[0].output).parent
    for folder in (parent, *parent.parents):
        if folder.exists():
            if not folder.is_dir():
                raise OutputError(f"{folder} is a file; the output cannot go inside it")
            if not os.access(folder, os.W_OK):
                raise OutputError(f"{folder} is not writable; choose another output")
            break


def _run(
    items: list[InputItem],
    model: Path | list[Path],
    pipeline: Pipeline,
    output: str,
    resume: bool,
    overwrite: bool,
    flow: bool,
    bar: ProgressFactory,
) -> list[RunResult]:
    """The planned inputs through one model or an (optionally weighted) ensemble, as a
    flow run or the library."""
    if flow:
        from flows.segment import run_flow

        return run_flow(
            [i.input for i in items],
            model,
            output,
            pipeline.options,
            weights=pipeline.weights,
            resume=resume,
            overwrite=overwrite,
            progress=bar,
            raise_errors=len(items) == 1,
        )
    return _run_library(items, model, pipeline, resume, overwrite, bar)


def _run_library(
    items: list[InputItem],
    model: Path | list[Path],
    pipeline: Pipeline,
    resume: bool,
    overwrite: bool,
    bar: ProgressFactory,
) -> list[RunResult]:
    """``--no-flow``: the same inputs through segflow.segment, without Prefect."""
    from segflow.api import segment
    from segflow.engine.ensemble import load_models

    # absolute paths: cluster workers have other working folders
    loaded = load_models(model, pipeline.weights)
    results = []
    for item in items:
        result = segment(
            item.input,
            loaded,
            item.output,
            pipeline.options,
            resume=resume,
            overwrite=overwrite,
            progress=bar(item.name),
            raise_errors=len(items) == 1,
        )
        assert not isinstance(result, list)
        results.append(result)
    return results


def _report(results: list[RunResult]) -> None:
    failed = [r for r in results if r.status != "complete"]
    for r in results:
        if r.status == "complete":
            out.print(
                f"[green]done[/] {r.input} -> {r.output} ({r.seconds:.1f} s)", highlight=False
            )
            if "clean" in r.stats:
                out.print(f"[green]cleaned[/] {r.output} -> {r.stats['clean']}", highlight=False)
        else:
            err.print(f"[red]failed[/] {r.input}: {r.error}", highlight=False, soft_wrap=True)
    urls = {r.run_url for r in results if r.run_url}
    for url in sorted(urls):
        out.print(f"flow run: {url}", highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(EXIT_PARTIAL if len(failed) < len(results) else EXIT_ERROR)


@contextmanager
def progress_bar(enabled: bool) -> Iterator[ProgressFactory]:
    """Yields a factory: ``factory(label)`` returns a (done, total) callback for one input."""
    if not enabled:
        yield lambda label: lambda done, total: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=False) as progress:

        def factory(label: str) -> Callable[[int, int], None]:
            task = progress.add_task(label, total=None)

            def update(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            return update

        yield factory


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
