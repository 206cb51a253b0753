"""The main job on built-in data: samples -> bundled models -> Zarr, preview, statistics, accuracy.

``run_demo`` writes the synthetic land-cover scene and CT phantom (with their
known truth) into a folder, segments each with the model bundled for it
through the Prefect ``segment`` flow (``segflow.segment`` when the flows are
not installed), renders a preview PNG and class statistics per output, and
scores the labels against the truth chunk by chunk (never whole).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from segflow.errors import ModelError, OutputError
from segflow.options import RunOptions
from segflow.train.metrics import ConfusionMatrix

LANDCOVER_MODEL = "landcover-unet.safetensors"
PHANTOM_MODEL = "phantom-unet.safetensors"
SUMMARY_FILE = "demo_summary.json"

Log = Callable[[str], None]


@dataclass
class DemoOutput:
    """What the demo produced for one input."""

    name: str
    input: Path
    truth: Path
    model: Path
    zarr: Path
    preview: Path | None
    statistics: Path | None
    seconds: float
    accuracy: dict[str, Any]
    unpredicted_pixels: int = 0  # valid truth pixels the output left as nodata


@dataclass
class DemoResult:
    out_dir: Path
    via: str  # "prefect flow" or "segflow.segment"
    seconds: float
    outputs: list[DemoOutput] = field(default_factory=list)
    summary: Path | None = None
    notes: list[str] = field(default_factory=list)


def bundled_model(name: str) -> Path:
    """Path of a model file shipped in ``segflow/bundled``."""
    path = Path(str(resources.files("segflow.bundled").joinpath(name)))
    if not path.is_file():
        raise ModelError(
            f"bundled model {name} is missing from {path.parent}; rebuild it with "
            "scripts/train_bundled.sh"
        )
    return path


def score_store(store: Path, truth: Path, class_names: list[str]) -> tuple[ConfusionMatrix, int]:
    """Confusion matrix of a store's labels against a truth file, read chunk by chunk.

    Truth nodata is not scored; output nodata over valid truth is counted apart.
    """
    from segflow.io.open import open_source
    from segflow.io.zarr_sink import ZarrSink

    sink = ZarrSink.open(store)
    source = open_source(truth)
    if tuple(source.spatial_shape) != tuple(sink.layout.spatial_shape):
        raise OutputError(f"{store} and {truth} differ in shape; cannot score")
    cm = ConfusionMatrix(len(class_names), ignore_index=-1)
    unpredicted = 0
    for index in np.ndindex(*sink.chunk_grid_shape):
        region = sink.chunk_region(index)
        pred = sink.read_labels(region).astype(np.int64)
        result = source.read(region)
        t = result.data[0].astype(np.int64)
        scored = result.valid & (t >= 0) & (t < len(class_names))
        missing = scored & (pred == sink.label_nodata)
        unpredicted += int(missing.sum())
        keep = scored & ~missing
        cm.update(pred[keep], t[keep])
    return cm, unpredicted


def _segment(
    image: Path, model: Path, output: Path, options: dict[str, Any], use_flow: bool
) -> str:
    if use_flow:
        try:
            from flows.segment import run_flow
        except ImportError:
            use_flow = False
    if use_flow:
        results = run_flow(
            [str(image)],
            model,
            output,
            RunOptions.from_mapping(options),
            overwrite=True,
            raise_errors=True,
        )
        failed = [r for r in results if r.status != "complete"]
        if failed:
            raise OutputError(f"segmenting {image.name} failed: {failed[0].error}")
        return "prefect flow"
    from segflow.api import segment

    segment(image, model, output, RunOptions.from_mapping(options), overwrite=True)
    return "segflow.segment"


def _outputs(
    name: str, store: Path, image: Path, out_dir: Path, notes: list[str]
) -> tuple[Path | None, Path | None]:
    """Preview PNG and class statistics, when those modules are installed."""
    png: Path | None = None
    stats_path: Path | None = None
    try:
        from segflow.outputs.preview import preview
    except ImportError:
        notes.append("segflow.outputs.preview is not available: no preview PNG")
    else:
        png = preview(store, out_dir / f"{name}_preview.png", input=image)
    try:
        from segflow.outputs.stats import class_statistics, write_statistics_json
    except ImportError:
        notes.append("segflow.outputs.stats is not available: no class statistics")
    else:
        stats_path = write_statistics_json(class_statistics(store), out_dir / f"{name}_stats.json")
    return png, stats_path


def run_demo(
    out_dir: str | Path = "segflow-demo",
    *,
    size: str = "default",
    seed: int = 0,
    phantom: bool = True,
    use_flow: bool = True,
    log: Log | None = None,
) -> DemoResult:
    """Run the main job into ``out_dir``; see the module docstring."""
    from segflow.models import read_meta
    from segflow.samples import write_samples

    say = log or (lambda message: None)
    started = time.perf_counter()
    out = Path(out_dir).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the demo folder {out}: {exc.strerror or exc}") from exc
    say(f"writing the built-in sample data ({size}) to {out / 'data'}")
    paths = write_samples(out / "data", size=size, seed=seed)
    jobs = [("landcover", paths["landcover_image"], paths["landcover_truth"], LANDCOVER_MODEL)]
    if phantom:
        jobs.append(("phantom", paths["phantom_image"], paths["phantom_label"], PHANTOM_MODEL))
    result = DemoResult(out_dir=out, via="", seconds=0.0)
    for name, image, truth, model_name in jobs:
        model = bundled_model(model_name)
        meta = read_meta(model)
        options: dict[str, Any] = {}
        slice_axis = meta.provenance.get("slice_axis")
        if meta.spatial_dims == 2 and slice_axis is not None:
            options["slice_axis"] = int(slice_axis)
        store = out / f"{name}.zarr"
        say(f"segmenting {image.name} with {model.name} -> {store}")
        t0 = time.perf_counter()
        result.via = _segment(image, model, store, options, use_flow)
        seconds = time.perf_counter() - t0
        png, stats_path = _outputs(name, store, image, out, result.notes)
        names = [c.name for c in meta.classes]
        cm, unpredicted = score_store(store, truth, names)
        result.outputs.append(
            DemoOutput(
                name=name, input=image, truth=truth, model=model, zarr=store, preview=png,
                statistics=stats_path, seconds=round(seconds, 2), accuracy=cm.report(names),
                unpredicted_pixels=unpredicted,
            )
        )  # fmt: skip
    result.seconds = round(time.perf_counter() - started, 2)
    result.summary = out / SUMMARY_FILE
    try:
        result.summary.write_text(json.dumps(_jsonable(result), indent=2))
    except OSError as exc:
        raise OutputError(f"cannot write {result.summary}: {exc.strerror or exc}") from exc
    return result


def _jsonable(result: DemoResult) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(asdict(result), default=str))
    return data


def print_summary(result: DemoResult, console: Any) -> None:
    """Where the outputs are and how accurate they are, for people."""
    console.print(f"[bold]segflow demo[/] finished in {result.seconds:.1f} s via {result.via}")
    for o in result.outputs:
        acc = o.accuracy
        console.print(f"\n[bold]{o.name}[/]: {o.input}", highlight=False)
        console.print(f"  labels (Zarr)  {o.zarr}", highlight=False)
        if o.preview:
            console.print(f"  preview PNG    {o.preview}", highlight=False)
        if o.statistics:
            console.print(f"  statistics     {o.statistics}", highlight=False)
        console.print(
            f"  accuracy vs truth: overall {_pct(acc['overall_accuracy'])}, "
            f"mIoU {_num(acc['miou'])} ({o.seconds:.1f} s)",
            highlight=False,
        )
        console.print(
            "  IoU per class: " + ", ".join(f"{k} {_num(v)}" for k, v in acc["iou"].items()),
            highlight=False,
        )
        if o.unpredicted_pixels:
            console.print(f"  [yellow]{o.unpredicted_pixels} valid pixels left unpredicted[/]")
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    if result.summary:
        console.print(f"\nsummary: {result.summary}", highlight=False)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


__all__ = [
    "LANDCOVER_MODEL",
    "PHANTOM_MODEL",
    "DemoOutput",
    "DemoResult",
    "bundled_model",
    "print_summary",
    "run_demo",
    "score_store",
]
