"""The ``segflow`` command: a thin layer over the library.

User mistakes (SegflowError) print one line and exit non-zero, without a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

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
        list[Path], typer.Argument(help="GeoTIFF or NIfTI files.", show_default=False)
    ],
    model: Annotated[
        Path, typer.Option("--model", "-m", help="Model file (.safetensors, TorchScript or ONNX).")
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="OUT.zarr for one input, else a folder.")
    ],
    patch_size: Annotated[
        str | None, typer.Option(help="Patch size, e.g. 512 or 96,96,96.")
    ] = None,
    overlap: Annotated[str, typer.Option(help="Overlap: a fraction (<1) or pixels.")] = "0.25",
    blend: Annotated[
        str, typer.Option(help="gaussian, hann, spline, linear, constant or center.")
    ] = "gaussian",
    sigma: Annotated[
        float, typer.Option(help="Gaussian sigma as a fraction of the patch.")
    ] = 0.125,
    batch_size: Annotated[int, typer.Option(help="Patches per forward pass.")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    amp: Annotated[bool, typer.Option(help="Mixed precision on GPUs.")] = True,
    tta: Annotated[bool, typer.Option(help="Flip test-time augmentation.")] = False,
    chunk_size: Annotated[str | None, typer.Option(help="Output chunk size, e.g. 1024.")] = None,
    labels: Annotated[bool, typer.Option(help="Write the label array.")] = True,
    probabilities: Annotated[
        str, typer.Option(help="Class probabilities: none, uint8 or float16.")
    ] = "none",
    bands: Annotated[str | None, typer.Option(help="1-based bands to read, e.g. 4,3,2.")] = None,
    nodata: Annotated[
        float | None, typer.Option(help="Nodata value (overrides the file's).")
    ] = None,
    volume: Annotated[int | None, typer.Option(help="4-D NIfTI: the volume to segment.")] = None,
    volumes_as_channels: Annotated[
        bool, typer.Option(help="4-D NIfTI: volumes as channels.")
    ] = False,
    slice_axis: Annotated[
        int | None, typer.Option(help="2-D model on a volume: axis to slice along.")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted run: compute only missing chunks.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output store.")] = False,
    scheduler: Annotated[
        str, typer.Option(help="threads, sync, or a Dask scheduler address tcp://host:port.")
    ] = "threads",
    workers: Annotated[int | None, typer.Option(help="Threads for the threaded scheduler.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Segment INPUTS with MODEL into Zarr stores that keep the input's geometry."""
    with reported_errors():
        from segflow.api import segment

        options: dict[str, Any] = dict(
            patch_size=_size(patch_size, "--patch-size"),
            overlap=_overlap(overlap),
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
        )
        from segflow.api import output_paths
        from segflow.models import load_model

        loaded = load_model(model)
        outputs = output_paths(inputs, output)
        results = []
        with progress_bar(progress and sys.stderr.isatty()) as bar:
            for path, out_path in zip(inputs, outputs, strict=True):
                result = segment(
                    path,
                    loaded,
                    out_path,
                    resume=resume,
                    overwrite=overwrite,
                    scheduler=scheduler,
                    workers=workers,
                    progress=bar(path.name),
                    raise_errors=len(inputs) == 1,
                    **options,
                )
                assert not isinstance(result, list)
                results.append(result)
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


def _mount_subcommands() -> None:
    """Commands that live in their own modules, each registering itself on ``app``."""
    from importlib import import_module

    from segflow.cli_model import model_app

    app.add_typer(model_app, name="model", help="Create, inspect and export model files.")
    for name in ("segflow.cli_outputs", "segflow.cli_flows", "segflow.cli_train"):
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
