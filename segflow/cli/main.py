"""The ``segflow`` command: a thin layer over the library.

User mistakes (SegflowError) print one line and exit non-zero, without a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from segflow.errors import SegflowError

EXIT_ERROR = 1
EXIT_PARTIAL = 3

app = typer.Typer(
    name="segflow",
    help="Tiled segmentation of large GeoTIFFs and NIfTI volumes into geometry-keeping Zarr.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
err = Console(stderr=True)
out = Console()


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn a SegflowError into one line on stderr and exit code 1."""
    try:
        yield
    except SegflowError as exc:
        err.print(f"[bold red]error:[/] {_one_line(exc)}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_ERROR) from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _ints(value: str | None, name: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"{name} takes whole numbers like 512 or 512,512") from None


def _size(value: str | None, name: str) -> int | tuple[int, ...] | None:
    values = _ints(value, name)
    if values is None:
        return None
    return values[0] if len(values) == 1 else values


def _overlap(value: str) -> float | int:
    number = float(value)
    return number if number < 1 else int(number)


@contextmanager
def progress_bar(enabled: bool) -> Iterator[Callable[[str], Callable[[int, int], None]]]:
    """Yields a factory: ``factory(label)`` returns a (done, total) callback for one input."""
    if not enabled:
        yield lambda label: lambda done, total: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("regions"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=False) as progress:

        def factory(label: str) -> Callable[[int, int], None]:
            task = progress.add_task(label, total=None)

            def update(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            return update

        yield factory


@app.command("run")
def run_command(
    inputs: Annotated[
        list[Path],
        typer.Argument(help="GeoTIFF/NIfTI files, folders or globs.", show_default=False),
    ],
    model: Annotated[
        Path | None,
        typer.Option("--model", "-m", help="Model file (.safetensors, TorchScript or ONNX)."),
    ] = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="OUT.zarr for one input, else a folder.")
    ] = Path("segflow-out"),
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
        str | None, typer.Option(help="auto, cpu, cuda, cuda:N or mps. [default: auto]")
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
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted run: compute only missing chunks.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output store.")] = False,
    scheduler: Annotated[
        str | None,
        typer.Option(help="threads, sync, local, or a Dask scheduler address tcp://host:port."),
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Threads or local Dask workers.")] = None,
    region_size: Annotated[
        int | None,
        typer.Option(
            help="Edge of the region a task reads and blends at once, in whole chunks; larger "
            "regions predict fewer boundary patches twice and take more memory. "
            "[default: 2048 / 256, less for many classes]"
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
    with reported_errors():
        options: dict[str, Any] = dict(
            patch_size=_size(patch_size, "--patch-size"),
            overlap=_overlap(overlap) if overlap is not None else None,
            blend=blend,
            sigma=sigma,
            batch_size=batch_size,
            device=device,
            amp=amp,
            tta=tta,
            chunk_size=_size(chunk_size, "--chunk-size"),
            labels=labels,
            probabilities=probabilities,
            bands=_ints(bands, "--bands"),
            nodata=nodata,
            volume=volume,
            volumes_as_channels=volumes_as_channels,
            slice_axis=slice_axis,
            region_size=region_size,
        )
        options = {k: v for k, v in options.items() if v is not None}
        with progress_bar(progress and sys.stderr.isatty()) as bar:
            if flow:
                if len(inputs) == 1 and inputs[0].is_file():
                    _check_input(inputs[0], options)  # fail in a second, not after a flow start
                from flows.segment import run_flow

                results = run_flow(
                    list(inputs),
                    model,
                    output,
                    options,
                    spec=spec,
                    resume=resume,
                    overwrite=overwrite,
                    scheduler=scheduler,
                    workers=workers,
                    progress=bar,
                    raise_errors=len(inputs) == 1,
                )
            else:
                results = _run_library(
                    inputs, model, output, options, spec, resume, overwrite, scheduler, workers, bar
                )
    failed = [r for r in results if r.status != "complete"]
    for r in results:
        if r.status == "complete":
            out.print(
                f"[green]done[/] {r.input} -> {r.output} ({r.seconds:.1f} s)", highlight=False
            )
        else:
            err.print(f"[red]failed[/] {r.input}: {r.error}", highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(EXIT_PARTIAL if len(failed) < len(results) else EXIT_ERROR)


def _check_input(path: Path, options: dict[str, Any]) -> None:
    from segflow.io.open import open_source

    keys = ("bands", "nodata", "volume", "volumes_as_channels")
    open_source(path, **{k: options[k] for k in keys if k in options})


def _run_library(
    inputs: list[Path],
    model: Path | None,
    output: Path,
    options: dict[str, Any],
    spec: Path | None,
    resume: bool,
    overwrite: bool,
    scheduler: str | None,
    workers: int | None,
    bar: Callable[[str], Callable[[int, int], None]],
) -> list[Any]:
    """``--no-flow``: the same work through segflow.segment, without Prefect."""
    from segflow.api import output_paths, segment
    from segflow.errors import ConfigError
    from segflow.models import load_model

    if spec is not None:
        from segflow.spec import load_spec, merge_overrides

        merged = merge_overrides(load_spec(spec), model=model, **options)
        model, options = merged.model, merged.run_options()
        options = {k: v for k, v in options.items() if v is not None}
        if merged.dask.region_size is not None:
            options["region_size"] = merged.dask.region_size
    if model is None:
        raise ConfigError("no model given: pass --model FILE or a --spec that names one")
    loaded = load_model(model)
    results = []
    for path, out_path in zip(inputs, output_paths(inputs, output), strict=True):
        result = segment(
            path,
            loaded,
            out_path,
            resume=resume,
            overwrite=overwrite,
            scheduler=scheduler or "threads",
            workers=workers,
            progress=bar(path.name),
            raise_errors=len(inputs) == 1,
            **options,
        )
        assert not isinstance(result, list)
        results.append(result)
    return results


def _mount_subcommands() -> None:
    """Commands that live in their own modules, each registering itself on ``app``."""
    from importlib import import_module

    from segflow.cli.model import model_app

    app.add_typer(model_app, name="model", help="Create, inspect and export model files.")
    for name in ("segflow.cli.outputs", "segflow.cli.flows", "segflow.cli.train"):
        try:
            module = import_module(name)
        except ModuleNotFoundError as exc:  # a part not installed in this build
            if exc.name != name:
                raise
            continue
        module.register(app)


_mount_subcommands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
