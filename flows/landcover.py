"""Bulk land-cover mapping, meant to run on a schedule (see flows/deploy.py and prefect.yaml).

Each run looks at the scenes in an input folder (a local folder, an ``s3://`` prefix, or a
STAC Item, ItemCollection or catalog, whose items are matched to the model's bands) and
maps only those without a complete output: a complete store is left alone (no model work), a store a crashed run left behind
is resumed (only its missing chunks are computed), a new scene gets a new store. The run
summary (scenes, status, time, class areas in ha and km²) is published as Prefect
artifacts and written as JSON and CSV.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from pydantic import BaseModel, Field

from flows import report
from flows.runtime import ModelRef, resolve_run, run_weights
from flows.segment import InputResult, run_unfinished
from segflow.errors import ConfigError, SegflowError
from segflow.inputs import RASTER_PATTERNS, collect_inputs, plan_items
from segflow.io.files import sha256_file
from segflow.io.stac_names import is_stac_input
from segflow.io.stac_search import StacSearch, search_to_file
from segflow.io.uris import ObjectPath, as_location, is_uri

SCENE_COLUMNS = ("scene", "status", "reason", "seconds", "resumed", "output")


class SceneSummary(BaseModel):
    scene: str
    input: str
    output: str
    status: Literal["complete", "skipped", "failed"]  # skipped: complete before this run
    reason: str | None = None
    seconds: float = 0.0
    resumed: bool = False
    area_method: str | None = None  # planar, geodesic, or None (no CRS: pixel counts only)
    classes: dict[str, dict[str, Any]] = Field(default_factory=dict)  # name -> pixels, ha, km2


class LandcoverSummary(BaseModel):
    input_dir: str
    output_dir: str
    started: float
    seconds: float
    counts: dict[str, int]
    scenes: list[SceneSummary]
    totals: dict[str, dict[str, Any]]  # class -> pixels, ha, km2 over every mapped scene
    report_json: str | None = None
    report_csv: str | None = None


@flow(
    name="landcover-mapping",
    description="Map the scenes of a folder that have no complete land-cover output yet.",
)
def landcover_mapping(
    input_dir: str,
    output_dir: str,
    spec: str | None = None,
    model: str | list[str] | None = None,
    options: dict[str, Any] | None = None,
    patterns: list[str] | None = None,
    concurrency: int = 1,
    report_dir: str | None = None,
    stac_search: dict[str, Any] | None = None,
    weights: list[float] | None = None,
) -> LandcoverSummary | State[Any]:
    """Scenes in ``input_dir`` -> ``output_dir/<scene>.zarr``; reports in ``report_dir``.

    ``report_dir`` defaults to ``output_dir/reports``; ``options`` override the spec
    (``segflow run`` option names, e.g. ``{"scheduler": "tcp://dask:8786"}``). ``model``
    may name an ensemble (several files or a folder), with optional ``weights``.
    ``stac_search`` (url, collections, bbox or intersects, datetime, query, max_items)
    asks a STAC API for the night's items instead of ``input_dir`` (pass ""); the items
    found are kept as ``stac-search-<time>.json`` in the report folder.
    """
    logger = get_run_logger()
    started = time.time()
    pipeline, models = resolve_run(spec, model, options)  # parsed once, here
    if stac_search is not None:
        input_dir = _searched(input_dir, stac_search, _report_dir(output_dir, report_dir), logger)
    chosen = run_weights(pipeline, weights)
    source, found = scene_inputs(input_dir, patterns or RASTER_PATTERNS, models, chosen)
    items = plan_items(found, as_location(output_dir)) if found else []
    logger.info("%d scene(s) in %s", len(items), source)
    results = run_unfinished(items, pipeline, concurrency=concurrency, model=models, weights=chosen)
    scenes = [_scene_summary(r, logger) for r in results]
    summary = LandcoverSummary(
        input_dir=source,
        output_dir=str(output_dir),
        started=started,
        seconds=round(time.time() - started, 3),
        counts=report.status_counts(s.status for s in scenes),
        scenes=scenes,
        totals=_totals(scenes),
    )
    summary = _publish(summary, _report_dir(output_dir, report_dir))
    return report.batch_outcome(
        summary,
        counts=summary.counts,
        seconds=summary.seconds,
        failures=[(s.scene, s.reason) for s in scenes if s.status == "failed"],
        total=len(scenes),
        what="scenes",
        done="mapped",
        logger=logger,
    )


def scene_inputs(
    input_dir: str,
    patterns: list[str] | tuple[str, ...],
    model: ModelRef,
    weights: list[float] | None = None,
) -> tuple[str, list[tuple[str | None, Path | ObjectPath]]]:
    """The scenes of a night: a folder, a prefix in object storage, or a STAC document.

    A STAC item's store is named ``<item id>-<model hash>``: the run is idempotent per
    item and model, and a new model maps every item again into stores of its own.
    """
    if is_stac_input(input_dir):
        tag = model_tag(model, weights)
        try:
            items = collect_inputs(input_dir)
        except ConfigError:  # a document (or search) without items is a quiet night
            return input_dir, []
        return input_dir, [(f"{name}-{tag}", path) for name, path in items]
    source = as_location(input_dir)
    if not source.is_dir():
        raise ConfigError(f"input folder {source} not found; check input_dir")
    try:
        return str(source), collect_inputs(str(source), patterns)
    except ConfigError:
        return str(source), []  # an empty folder is a quiet night, not an error


def model_tag(model: ModelRef, weights: list[float] | None = None) -> str:
    """12 hex digits that name the model: its file's sha256, or for an ensemble a digest
    of its members' sha256 (in order) and weights, so another ensemble gets other stores."""
    if isinstance(model, str):
        return sha256_file(Path(model))[:12]
    payload = {"members": [sha256_file(Path(m)) for m in model], "weights": weights}
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:12]


def _searched(input_dir: str, fields: dict[str, Any], folder: Path, logger: Any) -> str:
    """Run the STAC search; its ItemCollection file is the night's input."""
    if input_dir:
        raise ConfigError("give input_dir or stac_search, not both")
    search = StacSearch.from_mapping(fields)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    path, count = search_to_file(search, folder / f"stac-search-{stamp}.json")
    logger.info("STAC search at %s: %d item(s) -> %s", search.url, count, path)
    return str(path)


def _report_dir(output_dir: str, report_dir: str | None) -> Path:
    if report_dir:
        return Path(report_dir)
    if is_uri(output_dir):  # reports are local files; object storage keeps the maps
        return Path("landcover-reports")
    return Path(output_dir) / "reports"


def _scene_summary(result: InputResult, logger: Any) -> SceneSummary:
    scene = SceneSummary(scene=result.name, **report.input_result_fields(result))
    if result.status == "failed":
        return scene
    try:
        areas = report.class_areas(result.output, recount=result.resumed)
    except (SegflowError, OSError, ValueError) as exc:  # the map exists; say why areas do not
        logger.warning("%s: no class areas: %s", result.name, exc)
        scene.reason = f"class areas unavailable: {exc}"
        return scene
    scene.area_method = areas["method"]
    scene.classes = areas["classes"]
    return scene


def _totals(scenes: list[SceneSummary]) -> dict[str, dict[str, Any]]:
    totals: dict[str, dict[str, Any]] = {}
    for scene in scenes:
        for name, entry in scene.classes.items():
            total = totals.setdefault(name, {"pixels": 0, "ha": 0.0, "km2": 0.0})
            total["pixels"] += entry["pixels"]
            for unit in ("ha", "km2"):
                if total[unit] is None or entry[unit] is None:
                    total[unit] = None
                else:
                    total[unit] = round(total[unit] + entry[unit], 6)
    return totals


def _publish(summary: LandcoverSummary, report_dir: Path) -> LandcoverSummary:
    names = list(summary.totals)
    rows = []
    for scene in summary.scenes:
        row: dict[str, Any] = scene.model_dump(include=set(SCENE_COLUMNS))
        for name in names:
            row[f"{name}_ha"] = scene.classes.get(name, {}).get("ha")
        rows.append(row)
    columns = [*SCENE_COLUMNS, *(f"{n}_ha" for n in names)]
    summary = report.write_run_reports(
        summary, summary.started, report_dir, "landcover", rows, columns
    )
    report.publish_artifacts(
        "landcover-summary", _markdown(summary, rows, columns), rows, "land-cover mapping run"
    )
    return summary


def _markdown(summary: LandcoverSummary, rows: list[dict[str, Any]], columns: list[str]) -> str:
    c = summary.counts
    totals = [
        {"class": name, "pixels": t["pixels"], "ha": t["ha"], "km²": t["km2"]}
        for name, t in summary.totals.items()
    ]
    return (
        f"# Land-cover mapping\n\n`{summary.input_dir}` -> `{summary.output_dir}`: "
        f"{len(summary.scenes)} scene(s), {c['complete']} mapped, {c['skipped']} already "
        f"complete, {c['failed']} failed, in {summary.seconds:.1f} s.\n\n"
        "## Scenes (class areas in ha)\n\n"
        + report.markdown_table(rows, columns)
        + "\n## Class areas, all mapped scenes\n\n"
        + report.markdown_table(totals, ("class", "pixels", "ha", "km²"))
        + f"\nReport files: `{summary.report_json}`, `{summary.report_csv}`\n"
    )
