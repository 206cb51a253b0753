"""Hospital scan batches: a folder or manifest of NIfTI scans or DICOM series, each isolated.

A folder of studies as it comes out of a PACS becomes one input per DICOM series
(grouped by SeriesInstanceUID, named after the patient, modality and series);
files that are no image series (reports, structure sets, scouts) are listed in the
report as skipped.

A corrupt scan fails alone with its reason while the others finish; transient I/O
errors are retried; a re-run skips finished scans and resumes interrupted ones. Each
scan gets a Zarr store (and, on request, a NIfTI mask that overlays the scan and, for a
DICOM series, a DICOM SEG ``<name>_seg.dcm`` that references it); the batch report (per
scan: status, reason, time, label volumes in mL, the outputs written) is published as
Prefect artifacts and written as CSV and JSON. :func:`exit_code` tells complete success
(0) from partial failure (3) and total failure (1).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from pydantic import BaseModel, Field

from flows import report
from flows.runtime import resolve_run, run_weights
from flows.segment import (
    TRANSIENT_RETRIES,
    TRANSIENT_RETRY_DELAYS,
    InputResult,
    is_transient_failure,
    run_unfinished,
)
from flows.segment import exit_code as _exit_code
from segflow.errors import ConfigError, SegflowError
from segflow.inputs import VOLUME_PATTERNS, collect_inputs, plan_items
from segflow.io.dicom import series_inputs
from segflow.io.dicom_paths import is_dicom_folder, is_dicom_input
from segflow.io.uris import ObjectPath

SCAN_COLUMNS = ("scan", "status", "reason", "seconds", "input", "output", "nifti", "seg")


class ScanReport(BaseModel):
    scan: str
    input: str
    output: str
    status: Literal["complete", "skipped", "failed"]  # skipped: complete before this run
    reason: str | None = None
    seconds: float = 0.0
    resumed: bool = False
    nifti: str | None = None
    seg: str | None = None  # the DICOM SEG of a DICOM series, when asked for
    voxel_ml: float | None = None
    volumes_ml: dict[str, float] = Field(default_factory=dict)
    voxels: dict[str, int] = Field(default_factory=dict)


class HospitalReport(BaseModel):
    started: float
    seconds: float
    counts: dict[str, int]
    exit_code: int
    scans: list[ScanReport]
    skipped_files: list[str] = Field(default_factory=list)  # not image series, and why
    report_json: str | None = None
    report_csv: str | None = None


def exit_code(scans: list[ScanReport]) -> int:
    """0: all scans done; 3: some failed; 1: all failed."""
    return _exit_code(
        [InputResult(name=s.scan, input=s.input, output=s.output, status=s.status) for s in scans]
    )


@task(
    name="export-nifti-mask",
    task_run_name="nifti {name}",
    retries=TRANSIENT_RETRIES,
    retry_delay_seconds=TRANSIENT_RETRY_DELAYS,
    retry_condition_fn=is_transient_failure,
    cache_policy=NO_CACHE,
    persist_result=False,
)
def export_mask(name: str, store: str, target: str, reference: str | None) -> str | State[Any]:
    """The store's labels as a NIfTI mask on the scan's exact header geometry."""
    try:
        from segflow.io.nifti_export import export_nifti
    except ImportError:
        return report.failed_state("NIfTI export is not available in this segflow installation")
    try:
        written = export_nifti(store, target, reference=reference, overwrite=True)
    except SegflowError as exc:
        reason = " ".join(str(exc).split())
        get_run_logger().error("%s: NIfTI export failed: %s", name, reason)
        return report.failed_state(f"NIfTI export failed: {reason}")
    return str(written.path)


@task(
    name="export-dicom-seg",
    task_run_name="seg {name}",
    retries=TRANSIENT_RETRIES,
    retry_delay_seconds=TRANSIENT_RETRY_DELAYS,
    retry_condition_fn=is_transient_failure,
    cache_policy=NO_CACHE,
    persist_result=False,
)
def export_seg(
    name: str, store: str, target: str, source: str, fractional: bool = False
) -> str | State[Any]:
    """The store as a DICOM SEG referencing ``source``, the series it was made from: binary
    from its labels, or ``fractional`` from its class probabilities."""
    try:
        from segflow.io.dicom_seg import export_dicom_seg
    except ImportError:
        return report.failed_state("DICOM SEG export is not available in this segflow installation")
    try:
        written = export_dicom_seg(
            store, target, source=source, fractional=fractional, overwrite=True
        )
    except SegflowError as exc:
        reason = " ".join(str(exc).split())
        get_run_logger().error("%s: DICOM SEG export failed: %s", name, reason)
        return report.failed_state(f"DICOM SEG export failed: {reason}")
    return str(written)


@flow(
    name="hospital-batch",
    description="Segment a batch of NIfTI scans; each scan fails alone; report volumes in mL.",
)
def hospital_batch(
    scans: str | list[str],
    output_dir: str,
    spec: str | None = None,
    model: str | list[str] | None = None,
    options: dict[str, Any] | None = None,
    export_nifti: bool | None = None,
    export_seg: bool = False,
    concurrency: int = 1,
    report_dir: str | None = None,
    seg_fractional: bool = False,
    weights: list[float] | None = None,
) -> HospitalReport | State[Any]:
    """``scans``: a folder, a glob, a manifest (.csv with a path column and optional id
    column, or .txt with one path per line) or a list of paths.

    ``export_nifti`` defaults to the spec's ``outputs.nifti``. ``export_seg`` writes a
    DICOM SEG ``<name>_seg.dcm`` beside the store of each DICOM series (other inputs have
    none); ``seg_fractional`` makes it a fractional SEG of the class probabilities (the
    run must store them). Reports go to ``report_dir`` (default ``output_dir/reports``).
    ``model`` may name an ensemble (several files or a folder), with optional ``weights``.
    """
    logger = get_run_logger()
    started = time.time()
    pipeline, models = resolve_run(spec, model, options)  # parsed once, here
    if seg_fractional and not pipeline.options.writes_probabilities:
        raise ConfigError(
            "a fractional DICOM SEG needs the class probabilities: add --probabilities uint8 "
            "(or probabilities: uint8 in the spec)"
        )
    want_nifti = pipeline.options.nifti if export_nifti is None else export_nifti
    found, skipped_files = scan_inputs(scans)
    items = plan_items(found, Path(output_dir))
    logger.info("%d scan(s) -> %s", len(items), output_dir)
    results = run_unfinished(
        items,
        pipeline,
        concurrency=concurrency,
        model=models,
        weights=run_weights(pipeline, weights),
    )
    exports = {
        "nifti": _export_masks(results) if want_nifti else {},
        "seg": _export_segs(results, seg_fractional) if export_seg or seg_fractional else {},
    }
    scans_out = [
        _scan_report(r, {k: v[r.name] for k, v in exports.items() if r.name in v}, logger)
        for r in results
    ]
    counts = report.status_counts(s.status for s in scans_out)
    batch = HospitalReport(
        started=started,
        seconds=round(time.time() - started, 3),
        counts=counts,
        exit_code=exit_code(scans_out),
        scans=scans_out,
        skipped_files=skipped_files,
    )
    batch = _publish(batch, Path(report_dir) if report_dir else Path(output_dir) / "reports")
    return report.batch_outcome(
        batch,
        counts=counts,
        seconds=batch.seconds,
        failures=[(s.scan, s.reason) for s in scans_out if s.status == "failed"],
        total=len(scans_out),
        what="scans",
        done="segmented",
        logger=logger,
    )


def scan_inputs(
    scans: str | list[str],
) -> tuple[list[tuple[str | None, Path | ObjectPath]], list[str]]:
    """The scans of a batch: NIfTI files as collect_inputs finds them, and one input per
    DICOM series in a folder; with the files skipped as no image series."""
    folder = Path(scans) if isinstance(scans, str) else None
    if folder is None or not is_dicom_folder(folder):
        return collect_inputs(scans, VOLUME_PATTERNS), []
    series, skipped = series_inputs(folder)
    nifti = [(None, p) for p in sorted(folder.rglob("*.nii*")) if p.name.endswith(_NIFTI)]
    found: list[tuple[str | None, Path | ObjectPath]] = [*nifti, *series]
    if not found:
        raise ConfigError(f"no image series or NIfTI scans in {folder}; check the folder")
    return found, skipped


_NIFTI = (".nii", ".nii.gz")


Exported = dict[str, tuple[str | None, str | None]]  # scan -> (path, failure reason)


def _export_masks(results: list[InputResult]) -> Exported:
    """The NIfTI mask of each scan whose store is complete."""
    return _export_each(
        [(r, _beside(r, ".nii.gz")) for r in results],
        export_mask,
        # a DICOM series has no header nibabel reads: the store's own affine is exact
        lambda r: None if is_dicom_input(Path(r.input)) else r.input,
    )


def _export_segs(results: list[InputResult], fractional: bool) -> Exported:
    """The DICOM SEG of each DICOM series whose store is complete (other inputs: none)."""
    return _export_each(
        [(r, _beside(r, "_seg.dcm")) for r in results if is_dicom_input(Path(r.input))],
        export_seg,
        lambda r: r.input,  # one file of the series: its series is read from its folder
        fractional=fractional,
    )


def _export_each(
    todo: list[tuple[InputResult, Path]],
    exporter: Any,
    source: Callable[[InputResult], str | None],
    **fixed: Any,
) -> Exported:
    """Run ``exporter(name, store, target, source(result), **fixed)`` for each complete store."""
    out: Exported = {}
    work = []
    for r, target in todo:
        if r.status == "skipped" and target.exists():
            out[r.name] = (str(target), None)  # finished by an earlier run, export included
        elif r.status != "failed":
            work.append((r, target))
    if not work:
        return out
    futures = exporter.map(
        [r.name for r, _ in work],
        [r.output for r, _ in work],
        [str(t) for _, t in work],
        [source(r) for r, _ in work],
        **{key: unmapped(value) for key, value in fixed.items()},
    )
    for (r, _), future in zip(work, futures, strict=True):
        future.wait()
        state = future.state
        data = state.result(raise_on_failure=False)
        if state.is_completed() and isinstance(data, str):
            out[r.name] = (data, None)
        else:
            reason = state.message or (f"{type(data).__name__}: {data}" if data else "failed")
            out[r.name] = (None, reason)
    return out


def _beside(result: InputResult, suffix: str) -> Path:
    """``<name>.zarr`` -> ``<name><suffix>`` beside it."""
    store = Path(result.output)
    return store.with_name(f"{store.stem}{suffix}")


def _scan_report(
    result: InputResult, exports: dict[str, tuple[str | None, str | None]], logger: Any
) -> ScanReport:
    """``exports``: output kind (``nifti``, ``seg``) -> (path, failure) for this scan."""
    scan = ScanReport(scan=result.name, **report.input_result_fields(result))
    if result.status == "failed":
        return scan
    for kind, (path, failure) in exports.items():
        setattr(scan, kind, path)
        if failure:  # a requested output is missing
            scan.status = "failed"
            scan.reason = "; ".join(r for r in (scan.reason, failure) if r)
    try:
        volumes = report.class_volumes(result.output, recount=result.resumed)
    except (SegflowError, OSError, ValueError) as exc:
        logger.warning("%s: no label volumes: %s", result.name, exc)
        scan.reason = scan.reason or f"label volumes unavailable: {exc}"
        return scan
    scan.voxel_ml = volumes["voxel_ml"]
    scan.volumes_ml = {name: v["ml"] for name, v in volumes["classes"].items()}
    scan.voxels = {name: v["voxels"] for name, v in volumes["classes"].items()}
    return scan


def _publish(batch: HospitalReport, report_dir: Path) -> HospitalReport:
    names: list[str] = []
    for scan in batch.scans:
        names.extend(n for n in scan.volumes_ml if n not in names)
    rows = []
    for scan in batch.scans:
        row: dict[str, Any] = scan.model_dump(include=set(SCAN_COLUMNS))
        for name in names:
            row[f"{name}_ml"] = scan.volumes_ml.get(name)
        rows.append(row)
    columns = [*SCAN_COLUMNS, *(f"{n}_ml" for n in names)]
    batch = report.write_run_reports(batch, batch.started, report_dir, "hospital", rows, columns)
    c = batch.counts
    markdown = (
        f"# Scan batch\n\n{len(batch.scans)} scan(s): {c['complete']} segmented, "
        f"{c['skipped']} already complete, {c['failed']} failed, in {batch.seconds:.1f} s "
        f"(exit code {batch.exit_code}).\n\n## Scans (label volumes in mL)\n\n"
        + report.markdown_table(rows, columns)
        + f"\nReport files: `{batch.report_json}`, `{batch.report_csv}`\n"
    )
    report.publish_artifacts("hospital-batch", markdown, rows, "hospital scan batch")
    return batch


__all__ = [
    "HospitalReport",
    "ScanReport",
    "exit_code",
    "export_mask",
    "export_seg",
    "hospital_batch",
]
