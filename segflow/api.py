"""``segflow.segment``: inputs through a model (or an ensemble) into geometry-keeping Zarr stores."""

from __future__ import annotations

import errno
import os
import threading
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from segflow.engine.ensemble import Ensemble, load_models
from segflow.engine.execute import ProgressFn, execute
from segflow.engine.grid import iter_chunks
from segflow.engine.region import (
    RegionStats,
    RegionWork,
    pending_tasks,
    process_region,
    task_indices,
    task_region,
)
from segflow.errors import ConfigError, InputDataError, OutputError, RegionError, SegflowError
from segflow.heap import lower_this_threads_priority
from segflow.inputs import InputItem, collect_inputs, is_one_input, plan_items
from segflow.io.lease import writer_lock
from segflow.io.open import open_source
from segflow.io.stac_names import is_stac_input
from segflow.io.stores import StorePath, discard_store
from segflow.io.uris import ObjectPath, as_location, is_uri
from segflow.models import LoadedModel
from segflow.options import RunOptions
from segflow.plan import plan

PathLike = str | os.PathLike[str]


@dataclass
class RunResult:
    """What happened to one input."""

    input: StorePath
    output: StorePath
    status: Literal["complete", "failed"]
    seconds: float = 0.0
    error: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    run_url: str | None = None  # the Prefect UI page of the flow run that recorded it


def run_options(
    options: RunOptions | Mapping[str, Any] | None = None, **overrides: Any
) -> RunOptions:
    """``options`` (a RunOptions, a mapping of option names, or the defaults) with
    ``overrides`` applied; a misspelt name fails with a did-you-mean."""
    if isinstance(options, RunOptions):
        return options.replace(**overrides)
    return RunOptions.from_mapping({**(options or {}), **overrides})


def segment(
    inputs: PathLike | Sequence[PathLike],
    model: PathLike | LoadedModel | Ensemble | Sequence[PathLike | LoadedModel],
    output: PathLike,
    options: RunOptions | Mapping[str, Any] | None = None,
    *,
    weights: Sequence[float] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    client: Any = None,
    progress: ProgressFn | None = None,
    raise_errors: bool | None = None,
    **overrides: Any,
) -> RunResult | list[RunResult]:
    """Segment one input (returns a RunResult) or several (returns a list).

    ``inputs`` is a file, a folder, a glob, a manifest or a list of them. With
    several inputs, ``output`` is a folder receiving ``<name>.zarr`` per input,
    and a failing input does not stop the others (its result says why).
    ``options`` and keyword ``overrides`` are :class:`~segflow.options.RunOptions`
    fields; ``client`` is a ``distributed.Client`` to run the chunk work on.

    ``model`` is a model file, a loaded model, or for an ensemble several of them
    (or a folder of model files, or an :class:`~segflow.engine.ensemble.Ensemble`):
    each patch is cut once, every member predicts it and their softmax
    probabilities are averaged, with ``weights`` (one per member) if given.
    """
    if not isinstance(overrides.get("scheduler", ""), str):  # a Client passed as scheduler
        client = overrides.pop("scheduler")
    chosen = run_options(options, **overrides)
    single = isinstance(inputs, str | os.PathLike) and is_one_input(inputs)
    target = as_location(output)
    if isinstance(target, ObjectPath) and chosen.postprocess_options() is not None:
        raise ConfigError(
            f"post-processing writes local stores; write {target} without it and post-process "
            "a local copy, or choose a local output"
        )
    items = plan_items(collect_inputs(inputs), target)
    # one model loads as ever; several (or a folder of them) are one ensemble
    loaded = (
        model
        if isinstance(model, LoadedModel) and weights is None
        else load_models(local_models(model), weights)
    )
    check_postprocess(chosen, loaded)  # a class name the model lacks fails now, not after the run
    results = []
    with _scheduler(chosen, client) as scheduler:
        for item in items:
            results.append(
                _segment_item(
                    item,
                    loaded,
                    chosen,
                    scheduler,
                    resume,
                    overwrite,
                    progress,
                    raise_errors=single if raise_errors is None else raise_errors,
                )
            )
    return results[0] if single else results


def _segment_item(
    item: InputItem,
    loaded: LoadedModel | Ensemble,
    options: RunOptions,
    scheduler: Any,
    resume: bool,
    overwrite: bool,
    progress: ProgressFn | None,
    *,
    raise_errors: bool,
) -> RunResult:
    path, out = as_location(item.input), as_location(item.output)
    started = time.perf_counter()
    try:
        stats = segment_one(
            path.absolute(),
            loaded,
            out.absolute(),
            options,
            resume=resume,
            overwrite=overwrite,
            scheduler=scheduler,
            progress=progress,
        )
    except SegflowError as exc:
        if raise_errors:
            raise
        return RunResult(path, out, "failed", time.perf_counter() - started, str(exc))
    return RunResult(path, out, "complete", time.perf_counter() - started, None, stats)


@contextmanager
def _scheduler(options: RunOptions, client: Any) -> Iterator[Any]:
    """What region tasks run on: threads, sync, a Client, or a LocalCluster for the run."""
    if client is not None:  # the flows' tasks pass the cluster their flow started for devices
        yield client
        return
    if options.scheduler != "local":
        yield options.scheduler
        return
    from segflow.engine.cluster import cluster_for

    with cluster_for(options) as started:  # one worker per device when devices are named
        yield started


def segment_one(
    input_path: StorePath,
    loaded: LoadedModel | Ensemble,
    output: StorePath,
    options: RunOptions,
    *,
    resume: bool = False,
    overwrite: bool = False,
    scheduler: Any = "threads",
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """One input into one store; returns the summary recorded in the store.

    One run writes a store at a time: another run on it fails at once, in one line.
    With post-processing options the finished store is also cleaned into
    ``<name>_clean.zarr`` beside it (the summary then says where, and what changed).
    """
    with writer_lock(output):
        summary = _segment_locked(
            input_path, loaded, output, options, resume, overwrite, scheduler, progress
        )
        if is_stac_input(str(input_path)):  # the result is discoverable as a STAC item too
            summary = {**summary, "stac_item": str(_stac_item(input_path, loaded, output))}
    return _postprocessed(output, options, summary)


def _stac_item(
    input_path: StorePath, loaded: LoadedModel | Ensemble, output: StorePath
) -> StorePath:
    from segflow.io.stac_output import write_output_item
    from segflow.io.zarr_sink import ZarrSink

    model = {"sha256": loaded.sha256, "path": str(loaded.path) if loaded.path else None}
    return write_output_item(ZarrSink.open(output), str(input_path), model)


def clean_path(output: StorePath) -> StorePath:
    """Where a run's post-processed store goes: ``<name>_clean.zarr`` beside its store."""
    return output.with_name(f"{output.name.removesuffix('.zarr')}_clean.zarr")


def check_postprocess(options: RunOptions, loaded: LoadedModel | Ensemble) -> None:
    """The post-processing options checked against the model's classes, before any work."""
    asked = options.postprocess_options()
    if asked is None:
        return
    from segflow.outputs.postprocess import parse_operations

    parse_operations(list(loaded.meta.classes), **asked)


def _postprocessed(
    output: StorePath, options: RunOptions, summary: dict[str, Any]
) -> dict[str, Any]:
    asked = options.postprocess_options()
    if asked is None:
        return summary
    from segflow.outputs.postprocess import postprocess

    target = clean_path(output)
    assert isinstance(output, Path) and isinstance(target, Path)  # refused for URIs in segment()
    with writer_lock(target):
        cleaned = postprocess(output, target, overwrite=True, **asked)
    return {**summary, "clean": str(target), "postprocess": cleaned.summary}


def _segment_locked(
    input_path: StorePath,
    loaded: LoadedModel | Ensemble,
    output: StorePath,
    options: RunOptions,
    resume: bool,
    overwrite: bool,
    scheduler: Any,
    progress: ProgressFn | None,
) -> dict[str, Any]:
    source = open_source(
        input_path,
        bands=options.bands,
        nodata=options.nodata,
        volume=options.volume,
        volumes_as_channels=options.volumes_as_channels,
        series=options.series,
        band_names=loaded.meta.band_names,
    )
    try:
        work = plan(source, loaded, output, options, resume=resume, overwrite=overwrite)
    except OSError as exc:
        if isinstance(exc, SegflowError):
            raise
        raise OutputError(
            f"cannot create {output} ({exc.strerror or exc}); {_hint(exc)} or choose another output"
        ) from exc
    if resume and work.sink.is_complete:
        return work.sink.summary or {}  # nothing left to do; keep what the finished run recorded
    checksum: dict[str, str] = {}

    def hash_input() -> None:
        lower_this_threads_priority()  # the run's threads come first: nothing waits on it
        checksum.update(sha256=source.checksum())

    hasher = threading.Thread(target=hash_input, daemon=True)
    hasher.start()  # hashing the input overlaps the run instead of delaying it
    started = time.perf_counter()
    created = not resume or not work.sink.done_chunks()
    try:
        todo = pending_tasks(work) if resume else task_indices(work)
        # an explicit CUDA device asks cluster workers for a GPU slot (one model task per GPU)
        resources = {"GPU": 1.0} if options.device.startswith("cuda") else None
        with failures_named(input_path, work):
            stats = execute(
                work,
                todo,
                scheduler=scheduler,
                workers=options.workers if scheduler == "threads" else None,
                progress=progress,
                resources=resources,
            )
    finally:
        hasher.join()
    if not resume and stats.valid_pixels == 0:
        if created and not overwrite:
            discard_store(output)
        raise InputDataError(
            f"{input_path} has no valid pixels (all nodata or NaN); check the nodata value or the band selection"
        )
    if resume:
        # this run computed only the missing regions: count the whole store instead
        stats.valid_pixels, stats.class_counts = _count_labels(work)
    names = [c.name for c in loaded.meta.classes]
    seconds = time.perf_counter() - started
    summary = _summary(names, stats, seconds, checksum.get("sha256", ""), len(todo))
    with failures_named(input_path, work, "finishing the store"):
        work.sink.finalize(summary)
    return summary


def local_models(model: Any) -> Any:
    """Model files given as URIs, copied to the local cache (loaders need a local file)."""
    if isinstance(model, str | os.PathLike | ObjectPath) and is_uri(
        model if isinstance(model, ObjectPath) else os.fspath(model)
    ):
        from segflow.io.remote import cached_copy

        return cached_copy(ObjectPath(str(model)), sidecars=(".yaml", ".yml", ".json"))
    if isinstance(model, list | tuple):
        return [local_models(m) for m in model]
    return model


# causes no retry can cure: the user has to act (free space, fix permissions)
_PERMANENT_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOENT,
}


@contextmanager
def failures_named(
    input_path: StorePath, work: RegionWork, step: str = "a region task"
) -> Iterator[None]:
    """Anything that breaks a run mid-way (a full disk, a CUDA error, a bug) ends in one
    RegionError naming the input, the region and the cause; the store stays incomplete,
    and ``--resume`` redoes only the chunks not recorded as written."""
    try:
        yield
    except SegflowError:
        raise  # already says what and where (a damaged tile names its rows and columns)
    except Exception as exc:
        region = failed_region(work, exc)
        where = f"region {region_text(region)}" if region is not None else step
        raise RegionError(
            f"{input_path}: {where} failed: {cause_text(exc)}; {work.sink.path} is incomplete "
            f"({_written(work)}): {_hint(exc)}, then rerun with --resume to finish it",
            retryable=isinstance(exc, OSError) and exc.errno not in _PERMANENT_ERRNOS,
        ) from exc


def failed_region(work: RegionWork, exc: BaseException) -> tuple[slice, ...] | None:
    """The region whose task raised ``exc``, from its traceback (threads and sync runs;
    a cluster sends tracebacks without their frames' variables)."""
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        if frame.f_code is process_region.__code__:
            task = frame.f_locals.get("task")
            return task_region(work, task) if isinstance(task, tuple) else None
    return None


def cause_text(exc: BaseException) -> str:
    """``No space left on device [ENOSPC]`` for a system error, else the type and first line."""
    code = errno.errorcode.get(exc.errno or 0) if isinstance(exc, OSError) else None
    if isinstance(exc, OSError) and code is not None:
        return f"{exc.strerror or first_line(exc)} [{code}]"
    return f"{type(exc).__name__}: {first_line(exc)}"


def region_text(region: tuple[slice, ...]) -> str:
    """``rows 0:512, columns 512:1024`` for a raster, ``0:128 x 0:128 x 128:256`` for a volume."""
    spans = [f"{s.start}:{s.stop}" for s in region]
    if len(spans) == 2:
        return f"rows {spans[0]}, columns {spans[1]}"
    return " x ".join(spans)


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's first line, shortened (CUDA errors append paragraphs of advice)."""
    lines = str(exc).strip().splitlines()
    text = " ".join(lines[0].split()) if lines else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _hint(exc: BaseException) -> str:
    """What the user can do about ``exc`` before trying again."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free some space"
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return "use a smaller --batch-size or --region-size"
    if "cuda" in str(exc).lower():
        return "check the GPU (nvidia-smi) or use --device cpu"
    if isinstance(exc, OSError):
        return "fix the cause"
    return "fix the cause (or report it with the input's details)"


def _written(work: RegionWork) -> str:
    try:
        done = len(work.sink.done_chunks())
    except OSError:
        return "some chunks written"
    total = 1
    for n in work.sink.chunk_grid_shape:
        total *= n
    return f"{done} of {total} chunks written"


def _summary(
    names: list[str], stats: RegionStats, seconds: float, checksum: str, region_tasks: int
) -> dict[str, Any]:
    return {
        "input_sha256": checksum,
        "seconds": round(seconds, 3),
        "region_tasks": region_tasks,  # this run's; a resumed run counts only its own
        "valid_pixels": stats.valid_pixels,
        "patches_predicted": stats.patches_predicted,
        "patches_skipped_nodata": stats.patches_skipped,
        "class_pixel_counts": dict(zip(names, stats.class_counts, strict=False)),
    }


def _count_labels(work: RegionWork) -> tuple[int, list[int]]:
    """Valid pixels and per-class counts of a finished store, read chunk by chunk."""
    num_classes = work.model.num_classes
    counts = np.zeros(num_classes, np.int64)
    valid = 0
    if not work.write_labels:
        return 0, counts.tolist()
    for chunk in iter_chunks(work.sink.chunk_grid_shape, (1,) * len(work.sink.chunk_grid_shape)):
        labels = work.sink.read_labels(work.sink.chunk_region(chunk))
        histogram = np.bincount(labels.ravel(), minlength=num_classes)
        counts += histogram[:num_classes]
        valid += int(histogram[:num_classes].sum())
    return valid, [int(c) for c in counts]
