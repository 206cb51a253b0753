"""The flow commands of ``segflow``: batch, landcover, hospital, serve and server.

``register(app)`` adds them to the main Typer app; ``python -m segflow.cli.flows``
runs them alone. Each flow command resolves its spec and flags into one pipeline
(checked before Prefect is imported), then starts one Prefect flow run on the server
:func:`flows.runtime.use_prefect_server` picks: ``PREFECT_API_URL``, else the one
``segflow server start`` left running, else a temporary one. Exit codes: 0 all
inputs done, 3 some failed, 1 all failed or a usage error (one line, no traceback).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from segflow.cli.common import EXIT_ERROR, EXIT_PARTIAL, err, one_line_errors, out
from segflow.errors import ConfigError

if TYPE_CHECKING:
    from flows.runtime import ModelRef
    from segflow.spec import Pipeline

EXIT_OK = 0

SpecOpt = Annotated[
    Path | None, typer.Option("--spec", "-s", help="Pipeline spec YAML (see pipelines/).")
]
ModelsOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--model",
        "-m",
        help="Model file (overrides the spec's); repeat it, or give a folder of model files, "
        "to run an ensemble (averaged probabilities).",
    ),
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


def _text(path: Path | None) -> str | None:
    return str(path) if path else None


def _one_or_many(inputs: list[str]) -> str | list[str]:
    return inputs if len(inputs) > 1 else inputs[0]


def _resolved(
    spec: Path | None, models: list[Path] | None, **flags: Any
) -> tuple[Pipeline, ModelRef]:
    """The spec (read once) with the flags, and the model or an ensemble's member files."""
    from flows.runtime import resolve_run

    return resolve_run(spec, models or None, flags)


def check_members_agree(models: ModelRef) -> None:
    """An ensemble's members must agree (classes, channels, spacing...): checked on their
    headers, without torch; one model has nothing to agree with."""
    if isinstance(models, str):
        return
    from segflow.models.header import header_meta
    from segflow.models.members import check_agreement

    check_agreement([(Path(m).name, header_meta(Path(m))) for m in models])


def _run_flow(
    flow: Callable[..., Any], *args: Any, pipeline: Pipeline, models: ModelRef, **kwargs: Any
) -> Any:
    """Run ``flow`` with the resolved pipeline (so it reads no spec again) and return its
    data; raise its error. The model (each member of an ensemble, checked against the
    others, with the spec's weights) loads while a temporary server starts, if one must."""
    from flows.runtime import load_while_server_starts, prefect_api, run_weights

    weights = run_weights(pipeline, None)  # the spec's, for its ensemble
    with prefect_api():
        load_while_server_starts(models, weights)  # the flow's tasks reuse it
        state = flow(
            *args,
            model=models,
            options=pipeline.options.to_dict(),
            weights=weights,
            return_state=True,
            **kwargs,
        )
    from flows.report import outcome

    data = outcome(state)
    if isinstance(data, BaseException):
        raise data
    return data


def batch_command(
    inputs: Annotated[
        list[str], typer.Argument(help="Files, folders, globs or manifests (.csv / .txt).")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for <name>.zarr stores.")],
    spec: SpecOpt = None,
    model: ModelsOpt = None,
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
        pipeline, models = _resolved(
            spec,
            model,
            scheduler=scheduler,
            workers=workers,
            device=device,
            batch_size=batch_size,
            patch_size=patch_size,
            chunk_size=chunk_size,
        )
        from segflow.inputs import collect_inputs

        collect_inputs(inputs)  # no inputs at all: one line now, not a failed flow run
        from flows.segment import exit_code, segment_batch

        batch = _run_flow(
            segment_batch,
            _one_or_many(inputs),
            str(output),
            pipeline=pipeline,
            models=models,
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
    model: ModelsOpt = None,
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
        pipeline, models = _resolved(
            spec, model, scheduler=scheduler, workers=workers, device=device
        )
        if not input_dir.is_dir():
            raise ConfigError(f"input folder {input_dir} not found; check the path")
        from flows.landcover import landcover_mapping

        summary = _run_flow(
            landcover_mapping,
            str(input_dir),
            str(output_dir),
            pipeline=pipeline,
            models=models,
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
        list[str],
        typer.Argument(
            help="NIfTI files, DICOM study folders (one scan per series), globs or manifests."
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for <scan>.zarr stores.")],
    spec: SpecOpt = None,
    model: ModelsOpt = None,
    nifti: Annotated[
        bool | None, typer.Option("--nifti/--no-nifti", help="Also write NIfTI masks.")
    ] = None,
    seg: Annotated[
        bool, typer.Option("--seg", help="Also write a DICOM SEG beside each DICOM series' store.")
    ] = False,
    seg_fractional: Annotated[
        bool,
        typer.Option(
            "--seg-fractional",
            help="Make that SEG fractional, from the class probabilities (needs "
            "--probabilities in the spec or options).",
        ),
    ] = False,
    probabilities: Annotated[
        str | None, typer.Option(help="Store class probabilities: none, uint8 or float16.")
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
        pipeline, models = _resolved(
            spec,
            model,
            scheduler=scheduler,
            workers=workers,
            device=device,
            nifti=nifti,
            probabilities=probabilities,
        )
        if seg_fractional and not pipeline.options.writes_probabilities:
            raise ConfigError(
                "--seg-fractional needs the class probabilities: add --probabilities uint8"
            )
        from segflow.inputs import VOLUME_PATTERNS, collect_inputs

        collect_inputs(scans, VOLUME_PATTERNS)  # no scans at all: one line now
        from flows.hospital import hospital_batch

        batch = _run_flow(
            hospital_batch,
            _one_or_many(scans),
            str(output),
            pipeline=pipeline,
            models=models,
            concurrency=concurrency,
            report_dir=_text(report_dir),
            export_seg=seg,
            seg_fractional=seg_fractional,
        )
    for scan in batch.scans:
        _print_item(scan.scan, scan.status, scan.reason, scan.seconds, scan.output)
    out.print(f"report: {batch.report_csv}", highlight=False)
    raise typer.Exit(batch.exit_code)


def serve_command(
    input_dir: Annotated[Path, typer.Argument(help="Folder of GeoTIFF scenes.")],
    output_dir: Annotated[Path, typer.Argument(help="Folder for <scene>.zarr stores.")],
    spec: SpecOpt = None,
    model: ModelsOpt = None,
    cron: Annotated[str, typer.Option(help="Cron schedule.")] = "0 2 * * *",
    timezone: Annotated[str, typer.Option(help="IANA time zone of the schedule.")] = "UTC",
    name: Annotated[str, typer.Option(help="Deployment name.")] = "nightly-landcover",
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    limit: Annotated[int, typer.Option(help="Flow runs at the same time.")] = 1,
) -> None:
    """Serve the scheduled land-cover deployment until Ctrl-C / SIGTERM."""
    with one_line_errors():
        flags = {"scheduler": scheduler, "workers": workers}
        # a mistake fails now, not at the first night's run: members that disagree included
        _, models = _resolved(spec, model, **flags)
        check_members_agree(models)
        from flows.deploy import landcover_deployment, serve_landcover
        from flows.runtime import prefect_api

        given = {k: v for k, v in flags.items() if v is not None}

        deployment = landcover_deployment(
            input_dir,
            output_dir,
            spec=spec,
            model=model,
            options=given or None,  # the spec is read again by each night's run: edits apply
            cron=cron,
            timezone=timezone,
            name=name,
        )
        with prefect_api():
            serve_landcover(deployment, limit=limit)


def _print_item(name: str, status: str, reason: str | None, seconds: float, output: str) -> None:
    if status == "failed":
        err.print(f"[red]failed[/] {name}: {reason}", highlight=False, soft_wrap=True)
    elif status == "skipped":
        out.print(f"[cyan]up to date[/] {name} -> {output}", highlight=False)
    else:
        out.print(f"[green]done[/] {name} -> {output} ({seconds:.1f} s)", highlight=False)


# --- segflow server ----------------------------------------------------------------------------

server_app = typer.Typer(
    help="A local Prefect server that runs reuse (no temporary server per run).",
    no_args_is_help=True,
)


@server_app.command("start")
def server_start_command(
    port: Annotated[
        int | None, typer.Option(help="Port on 127.0.0.1. [default: a free one]")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for it to answer.")] = 120.0,
) -> None:
    """Start a Prefect server in the background; later runs record to it."""
    from flows import server

    with one_line_errors():
        before = server.running()
        record = server.start(port, timeout=timeout)
    verb = "already running" if before is not None else "started"
    out.print(f"Prefect server {verb} at {record.url} (pid {record.pid})", highlight=False)
    out.print(f"UI: {record.ui_url}; log: {record.log}", highlight=False)
    _note_configured_api(record.url)


@server_app.command("status")
def server_status_command() -> None:
    """Say whether the remembered server runs (exit 0) or not (exit 1)."""
    from flows import server

    record = server.remembered()
    if record is None:
        out.print("no server started; `segflow server start` starts one", highlight=False)
        raise typer.Exit(EXIT_ERROR)
    if server.running() is None:
        out.print(f"not running (was {record.url}, pid {record.pid})", highlight=False)
        raise typer.Exit(EXIT_ERROR)
    out.print(f"running at {record.url} (pid {record.pid}); UI {record.ui_url}", highlight=False)
    _note_configured_api(record.url)


@server_app.command("stop")
def server_stop_command() -> None:
    """Stop the remembered server and forget it."""
    from flows import server

    record = server.stop()
    if record is None:
        out.print("no server to stop", highlight=False)
        return
    out.print(f"stopped the server at {record.url} (pid {record.pid})", highlight=False)


def _note_configured_api(url: str) -> None:
    """PREFECT_API_URL wins over the remembered server: say so when it points elsewhere."""
    configured = os.environ.get("PREFECT_API_URL")
    if configured and configured.rstrip("/") != url:
        err.print(
            f"note: PREFECT_API_URL={configured} is set, so runs from this shell record there",
            highlight=False,
        )


def register(app: typer.Typer) -> None:
    """Add ``batch``, ``landcover``, ``hospital``, ``serve`` and ``server`` to the segflow app."""
    app.command("batch")(batch_command)
    app.command("landcover")(landcover_command)
    app.command("hospital")(hospital_command)
    app.command("serve")(serve_command)
    app.add_typer(server_app, name="server")


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
