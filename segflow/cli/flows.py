"""The flow commands of ``segflow``: batch, landcover, hospital and serve.

``register(app)`` adds them to the main Typer app; ``python -m segflow.cli.flows``
runs them alone. Each command starts a Prefect flow run (with no server configured,
Prefect's temporary local server, started while the inputs are checked). Exit codes:
0 all inputs done, 3 some failed, 1 all failed or a usage error (one line, no
traceback).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from segflow.cli.common import one_line_errors
from segflow.errors import ConfigError

if TYPE_CHECKING:
    from prefect.states import State

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_PARTIAL = 3

err = Console(stderr=True)
out = Console()

SpecOpt = Annotated[
    Path | None, typer.Option("--spec", "-s", help="Pipeline spec YAML (see pipelines/).")
]
ModelOpt = Annotated[
    Path | None, typer.Option("--model", "-m", help="Model file (overrides the spec's).")
]
SchedulerOpt = Annotated[
    str | None,
    typer.Option(help="threads, sync, local (a LocalCluster) or a Dask address tcp://host:8786."),
]
WorkersOpt = Annotated[
    int | None, typer.Option(help="Threads (threaded) or worker processes (local).")
]
DeviceOpt = Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
BatchSizeOpt = Annotated[int | None, typer.Option(help="Patches per forward pass.")]
PatchOpt = Annotated[str | None, typer.Option(help="Patch size, e.g. 512 or 96,96,96.")]
ChunkOpt = Annotated[str | None, typer.Option(help="Output chunk size, e.g. 1024.")]
ConcurrencyOpt = Annotated[int, typer.Option(help="Inputs processed at the same time.")]


def _size(value: str | None, name: str) -> int | tuple[int, ...] | None:
    if value is None:
        return None
    try:
        sizes = tuple(int(v) for v in value.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"{name} takes whole numbers like 512 or 512,512") from None
    return sizes[0] if len(sizes) == 1 else sizes


def _options(**values: Any) -> dict[str, Any]:
    """Options given on the command line (None: not given, the spec decides)."""
    return {k: v for k, v in values.items() if v is not None}


def _checked(
    spec: Path | None,
    model: Path | None,
    options: dict[str, Any],
    inputs: Any = None,
    patterns: tuple[str, ...] | None = None,
) -> None:
    """Fail with one line before any flow run when the spec, model or inputs are wrong;
    then load the model while Prefect's temporary server starts (when none is configured)."""
    from flows.inputs import INPUT_PATTERNS, collect_inputs
    from flows.runtime import loaded_model, prestart_server, resolve_pipeline

    _, model_path = resolve_pipeline(spec, model, options)
    if inputs is not None:
        collect_inputs(inputs, patterns or INPUT_PATTERNS)
    server = prestart_server()
    try:
        loaded_model(model_path)  # the flow's tasks reuse it
    finally:
        if server is not None:
            server.join()


def _text(path: Path | None) -> str | None:
    return str(path) if path else None


def _one_or_many(inputs: list[str]) -> str | list[str]:
    return inputs if len(inputs) > 1 else inputs[0]


def _run_flow(
    flow: Callable[..., Any], *args: Any, spec: Path | None, model: Path | None, **kwargs: Any
) -> Any:
    """Run ``flow`` (spec and model given as strings) and return its data; raise its error."""
    state: State[Any] = flow(
        *args, spec=_text(spec), model=_text(model), return_state=True, **kwargs
    )
    data = state.result(raise_on_failure=False)
    if isinstance(data, BaseException):
        raise data
    return data


def batch_command(
    inputs: Annotated[
        list[str], typer.Argument(help="Files, folders, globs or manifests (.csv / .txt).")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for <name>.zarr stores.")],
    spec: SpecOpt = None,
    model: ModelOpt = None,
    resume: Annotated[
        bool, typer.Option(help="Continue partial outputs; leave complete ones alone.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
    skip_complete: Annotated[bool, typer.Option(help="Leave complete outputs alone.")] = False,
    concurrency: ConcurrencyOpt = 1,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    device: DeviceOpt = None,
    batch_size: BatchSizeOpt = None,
    patch_size: PatchOpt = None,
    chunk_size: ChunkOpt = None,
    report: Annotated[
        Path | None, typer.Option(help="Write the batch report here (.json, plus a .csv).")
    ] = None,
) -> None:
    """Segment many inputs as one Prefect flow run (one task per input)."""
    with one_line_errors():
        options = _options(
            scheduler=scheduler,
            workers=workers,
            device=device,
            batch_size=batch_size,
            patch_size=_size(patch_size, "--patch-size"),
            chunk_size=_size(chunk_size, "--chunk-size"),
        )
        _checked(spec, model, options, inputs)
        from flows.segment import exit_code, segment_batch

        batch = _run_flow(
            segment_batch,
            _one_or_many(inputs),
            str(output),
            spec=spec,
            model=model,
            options=options,
            resume=resume,
            overwrite=overwrite,
            skip_complete=skip_complete,
            concurrency=concurrency,
            report_path=_text(report),
        )
    for item in batch.items:
        _print_item(item.name, item.status, item.reason, item.seconds, item.output)
    raise typer.Exit(exit_code(batch.items))


def landcover_command(
    input_dir: Annotated[Path, typer.Argument(help="Folder of GeoTIFF scenes.")],
    output_dir: Annotated[Path, typer.Argument(help="Folder for <scene>.zarr stores.")],
    spec: SpecOpt = None,
    model: ModelOpt = None,
    concurrency: ConcurrencyOpt = 1,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    device: DeviceOpt = None,
    report_dir: Annotated[
        Path | None, typer.Option(help="Report folder (default OUTPUT_DIR/reports).")
    ] = None,
) -> None:
    """One land-cover mapping run: only scenes without a complete output are computed."""
    with one_line_errors():
        options = _options(scheduler=scheduler, workers=workers, device=device)
        _checked(spec, model, options)
        if not input_dir.is_dir():
            raise ConfigError(f"input folder {input_dir} not found; check the path")
        from flows.landcover import landcover_mapping

        summary = _run_flow(
            landcover_mapping,
            str(input_dir),
            str(output_dir),
            spec=spec,
            model=model,
            options=options,
            concurrency=concurrency,
            report_dir=_text(report_dir),
        )
    for scene in summary.scenes:
        _print_item(scene.scene, scene.status, scene.reason, scene.seconds, scene.output)
    for name, total in summary.totals.items():
        area = "" if total["ha"] is None else f" {total['ha']:.2f} ha ({total['km2']:.4f} km²)"
        out.print(f"  {name}: {total['pixels']} px{area}", highlight=False)
    out.print(f"report: {summary.report_json}", highlight=False)
    failed = summary.counts["failed"]
    raise typer.Exit(
        EXIT_OK if not failed else EXIT_ERROR if failed == len(summary.scenes) else EXIT_PARTIAL
    )


def hospital_command(
    scans: Annotated[
        list[str], typer.Argument(help="NIfTI files, folders, globs or manifests (.csv / .txt).")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for <scan>.zarr stores.")],
    spec: SpecOpt = None,
    model: ModelOpt = None,
    nifti: Annotated[
        bool | None, typer.Option("--nifti/--no-nifti", help="Also write NIfTI masks.")
    ] = None,
    concurrency: ConcurrencyOpt = 1,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    device: DeviceOpt = None,
    report_dir: Annotated[
        Path | None, typer.Option(help="Report folder (default OUTPUT/reports).")
    ] = None,
) -> None:
    """A batch of scans; each fails alone. Exit 0: all done, 3: some failed, 1: all failed."""
    with one_line_errors():
        options = _options(scheduler=scheduler, workers=workers, device=device)
        from flows.inputs import VOLUME_PATTERNS

        _checked(spec, model, options, scans, VOLUME_PATTERNS)
        from flows.hospital import hospital_batch

        batch = _run_flow(
            hospital_batch,
            _one_or_many(scans),
            str(output),
            spec=spec,
            model=model,
            options=options,
            export_nifti=nifti,
            concurrency=concurrency,
            report_dir=_text(report_dir),
        )
    for scan in batch.scans:
        _print_item(scan.scan, scan.status, scan.reason, scan.seconds, scan.output)
    out.print(f"report: {batch.report_csv}", highlight=False)
    raise typer.Exit(batch.exit_code)


def serve_command(
    input_dir: Annotated[Path, typer.Argument(help="Folder of GeoTIFF scenes.")],
    output_dir: Annotated[Path, typer.Argument(help="Folder for <scene>.zarr stores.")],
    spec: SpecOpt = None,
    model: ModelOpt = None,
    cron: Annotated[str, typer.Option(help="Cron schedule.")] = "0 2 * * *",
    timezone: Annotated[str, typer.Option(help="IANA time zone of the schedule.")] = "UTC",
    name: Annotated[str, typer.Option(help="Deployment name.")] = "nightly-landcover",
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    limit: Annotated[int, typer.Option(help="Flow runs at the same time.")] = 1,
) -> None:
    """Serve the scheduled land-cover deployment until Ctrl-C / SIGTERM."""
    with one_line_errors():
        options = _options(scheduler=scheduler, workers=workers)
        _checked(spec, model, options)
        from flows.deploy import landcover_deployment, serve_landcover

        deployment = landcover_deployment(
            input_dir,
            output_dir,
            spec=spec,
            model=model,
            options=options or None,
            cron=cron,
            timezone=timezone,
            name=name,
        )
        serve_landcover(deployment, limit=limit)


def _print_item(name: str, status: str, reason: str | None, seconds: float, output: str) -> None:
    if status == "failed":
        err.print(f"[red]failed[/] {name}: {reason}", highlight=False, soft_wrap=True)
    elif status == "skipped":
        out.print(f"[cyan]up to date[/] {name} -> {output}", highlight=False)
    else:
        out.print(f"[green]done[/] {name} -> {output} ({seconds:.1f} s)", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``batch``, ``landcover``, ``hospital`` and ``serve`` to the segflow app."""
    app.command("batch")(batch_command)
    app.command("landcover")(landcover_command)
    app.command("hospital")(hospital_command)
    app.command("serve")(serve_command)


def standalone_app() -> typer.Typer:
    app = typer.Typer(
        name="segflow",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_show_locals=False,
    )
    register(app)
    return app


if __name__ == "__main__":
    standalone_app()(prog_name="segflow")
