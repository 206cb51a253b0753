"""Run reports shared by the flows: measurements from output stores, JSON/CSV files, artifacts.

Areas and volumes come from the store itself: per-class pixel counts (the run summary,
or a chunked recount of the labels when the summary cannot be trusted) times the pixel
area or voxel volume of the geometry recorded in the store.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from segflow.errors import SegflowError
from segflow.io.source import RasterGeometry, VolumeGeometry
from segflow.io.zarr_sink import ZarrSink
from segflow.outputs.stats import (
    M2_PER_HA,
    M2_PER_KM2,
    MM3_PER_ML,
    class_statistics,
    planar_pixel_area_m2,
    voxel_volume_mm3,
)

if TYPE_CHECKING:
    from prefect.client.schemas.objects import State

ReportT = TypeVar("ReportT", bound=BaseModel)

# the per-input fields every report row copies from the flow's InputResult
INPUT_RESULT_FIELDS = ("input", "output", "status", "reason", "seconds", "resumed")

# --- measurements -----------------------------------------------------------------------------


def class_areas(store: str | os.PathLike[str], *, recount: bool = False) -> dict[str, Any]:
    """Per-class pixels, ha and km² of a complete raster store, and how they were measured.

    Fast path: the run summary's ``class_pixel_counts`` times the planar pixel area of a
    projected CRS. The labels are recounted chunk by chunk instead (segflow.outputs.stats) when
    ``recount`` is set (a resumed run's summary counts only what that run computed),
    when the summary has no counts, or for a geographic CRS (geodesic areas).
    """
    sink = ZarrSink.open(store)
    geometry = sink.geometry
    if not isinstance(geometry, RasterGeometry):
        raise ValueError(f"{sink.path} is a volume; use class_volumes")
    counts = _summary_counts(sink)
    crs = _crs(geometry)
    if counts is not None and not recount and (crs is None or crs.is_projected):
        pixel_m2 = None if crs is None else planar_pixel_area_m2(geometry.transform, crs)
        classes = {
            name: _area_entry(n, None if pixel_m2 is None else n * pixel_m2)
            for name, n in counts.items()
        }
        return {"method": "planar" if crs is not None else None, "classes": classes}
    stats = class_statistics(sink)
    classes = {c["name"]: _area_entry(c["pixels"], c["area_m2"]) for c in stats["classes"]}
    return {"method": stats["area_method"], "classes": classes}


def class_volumes(store: str | os.PathLike[str], *, recount: bool = False) -> dict[str, Any]:
    """Per-class voxels and mL of a complete volume store (voxel volume = |det(affine[:3, :3])|)."""
    sink = ZarrSink.open(store)
    geometry = sink.geometry
    if not isinstance(geometry, VolumeGeometry):
        raise ValueError(f"{sink.path} is a raster; use class_areas")
    voxel_ml = voxel_volume_mm3(geometry.affine) / MM3_PER_ML
    counts = _summary_counts(sink)
    if counts is None or recount:
        stats = class_statistics(sink)
        counts = {c["name"]: int(c["voxels"]) for c in stats["classes"]}
    classes = {name: {"voxels": n, "ml": round(n * voxel_ml, 3)} for name, n in counts.items()}
    return {"voxel_ml": voxel_ml, "classes": classes}


def _summary_counts(sink: ZarrSink) -> dict[str, int] | None:
    counts = (sink.summary or {}).get("class_pixel_counts")
    if not isinstance(counts, dict) or not counts:
        return None
    return {str(k): int(v) for k, v in counts.items()}


def _crs(geometry: RasterGeometry) -> Any:
    if not geometry.georeferenced or not geometry.crs_wkt:
        return None
    from pyproj import CRS

    return CRS.from_wkt(geometry.crs_wkt)


def _area_entry(pixels: int, m2: float | None) -> dict[str, Any]:
    return {
        "pixels": int(pixels),
        "ha": None if m2 is None else round(m2 / M2_PER_HA, 4),
        "km2": None if m2 is None else round(m2 / M2_PER_KM2, 6),
    }


# --- files ------------------------------------------------------------------------------------


def write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    """Write atomically (a reader never sees half a report)."""
    text = json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n"
    return _write_atomic(Path(path), text)


def write_csv(
    path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]], columns: Sequence[str]
) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in columns})
    return _write_atomic(Path(path), buffer.getvalue())


def _write_atomic(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else ""
    return value


def write_run_reports(
    summary: ReportT,
    started: float,
    report_dir: Path,
    prefix: str,
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
) -> ReportT:
    """``<prefix>-<UTC start>.json`` (the summary) and ``.csv`` (the rows) in ``report_dir``.

    Returns the summary with ``report_json`` and ``report_csv`` set to those paths.
    """
    slug = timestamp_slug(started)
    json_path = report_dir / f"{prefix}-{slug}.json"
    csv_path = report_dir / f"{prefix}-{slug}.csv"
    summary = summary.model_copy(
        update={"report_json": str(json_path), "report_csv": str(csv_path)}
    )
    write_json(json_path, summary.model_dump(mode="json"))
    write_csv(csv_path, rows, columns)
    return summary


# --- markdown and Prefect artifacts -----------------------------------------------------------


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "_no rows_\n"
    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_md_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join([head, rule, *body]) + "\n"


def _md_cell(value: Any) -> str:
    text = str(_cell(value))
    return text.replace("|", "\\|").replace("\n", " ")


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes only."""
    raw = "-".join(parts).lower()
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", raw)).strip("-") or "segflow"


def publish_artifacts(
    key: str,
    markdown: str,
    table: Sequence[Mapping[str, Any]],
    description: str,
) -> bool:
    """A markdown summary and a table artifact on the current flow run (no-op outside one)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return False
    create_markdown_artifact(markdown, key=artifact_key(key), description=description)
    rows = [{k: _cell(v) for k, v in row.items()} for row in table]
    create_table_artifact(rows, key=artifact_key(key, "table"), description=description)
    return True


def input_result_fields(result: BaseModel) -> dict[str, Any]:
    """The :data:`INPUT_RESULT_FIELDS` of a flow's InputResult, as keyword arguments."""
    return result.model_dump(include=set(INPUT_RESULT_FIELDS))


def failure_message(what: str, total: int, failures: Sequence[tuple[str, str | None]]) -> str:
    """``"2 of 5 scans failed: a: why; b: why"``, naming at most the first three failures."""
    return f"{len(failures)} of {total} {what} failed: " + "; ".join(
        f"{name}: {reason}" for name, reason in failures[:3]
    )


def batch_outcome(
    summary: ReportT,
    *,
    counts: Mapping[str, int],
    seconds: float,
    failures: Sequence[tuple[str, str | None]],
    total: int,
    what: str,
    done: str,
    logger: Any,
) -> ReportT | State[Any]:
    """Log the run's counts; Failed (carrying ``summary``) when an input failed, else ``summary``.

    ``failures`` are the (name, reason) of failed inputs, ``what`` names the inputs
    ("scenes") and ``done`` the complete ones ("mapped").
    """
    logger.info(
        f"%d {done}, %d already complete, %d failed in %.1f s",
        counts["complete"],
        counts["skipped"],
        counts["failed"],
        seconds,
    )
    if counts["failed"]:
        return failed_state(failure_message(what, total, failures), summary)
    return summary


def status_counts(statuses: Iterable[str]) -> dict[str, int]:
    counts = {"complete": 0, "skipped": 0, "failed": 0}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return counts


def timestamp_slug(epoch: float) -> str:
    """UTC time as a file-name friendly slug, e.g. 20260101T020000Z."""
    import time

    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(epoch))


class RunFailed(SegflowError):
    """A flow or task run that failed, with what it still produced (its report).

    A Prefect Failed state must carry an exception: a deployed run's worker reads
    the state's result, and any other value there is a TypeError.
    """

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message, result)  # both in args, so the error pickles whole
        self.message = message
        self.result = result

    def __str__(self) -> str:
        return self.message


def failed_state(message: str, result: Any = None) -> State[Any]:
    """A Failed state whose result is a :class:`RunFailed` carrying ``result``."""
    from prefect.states import Failed

    return Failed(message=message, data=RunFailed(message, result))


def outcome(state: State[Any]) -> Any:
    """What a run produced: its result, or the report a failed run carried."""
    data = state.result(raise_on_failure=False)
    return data.result if isinstance(data, RunFailed) and data.result is not None else data
