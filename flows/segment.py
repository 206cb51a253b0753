"""The ``segment`` and ``segment_batch`` flows: one Prefect task per input, Dask for the chunks.

Prefect records every task run on its server, so the unit of orchestration is the
input (a scene or a scan), never a chunk: the chunk work of one input is a Dask graph
run by ``segflow.segment`` inside the task. Task inputs are paths and a small pipeline
spec, never arrays or models.

Failure policy per input: a ``SegflowError`` (a corrupt file, a wrong band count, an
output in the way) fails that input alone, with its one-line reason and no retry; an
``OSError`` that is not a SegflowError (a network file system hiccup) is retried, and
the retry resumes the chunks already written.

``run_flow`` is what ``segflow run`` calls: the same flows, started in-process, which
works without a Prefect server (ephemeral mode) and returns ``RunResult`` objects.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run as current_task_run
from prefect.states import Failed, State
from pydantic import BaseModel, Field

from flows import report
from flows.inputs import (
    INPUT_PATTERNS,
    RASTER_PATTERNS,
    VOLUME_PATTERNS,
    InputItem,
    collect_inputs,
    input_stem,
    output_state,
    plan_items,
    read_manifest,
)
from flows.runtime import (
    _CLIENTS,
    dask_scheduler,
    loaded_model,
    one_off_run_settings,
    prestart_server,
    resolve_pipeline,
    scheduler_for_task,
)
from segflow import errors
from segflow.errors import ConfigError, SegflowError
from segflow.spec import PipelineSpec

if TYPE_CHECKING:
    from segflow.api import RunResult

ProgressFn = Callable[[int, int], None]
ProgressFactory = Callable[[str], ProgressFn]  # label -> (done, total) callback
Status = Literal["complete", "skipped", "failed"]

TRANSIENT_RETRIES = 2
# seconds between attempts; a file system hiccup usually passes within these
TRANSIENT_RETRY_DELAYS: list[float] = [5.0, 30.0]
PROGRESS_LOG_SECONDS = 10.0


class InputResult(BaseModel):
    """What happened to one input."""

    name: str
    input: str
    output: str
    status: Status
    reason: str | None = None
    error_type: str | None = None  # the SegflowError subclass, for callers that re-raise
    seconds: float = 0.0
    # continued a store that had chunks done (its summary then counts only the rest)
    resumed: bool = False
    stats: dict[str, Any] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def to_run_result(self) -> RunResult:
        from segflow.api import RunResult

        return RunResult(
            input=Path(self.input),
            output=Path(self.output),
            status="failed" if self.status == "failed" else "complete",
            seconds=self.seconds,
            error=self.reason,
            stats=dict(self.stats),
        )


class BatchResult(BaseModel):
    flow: str
    started: float  # epoch seconds
    seconds: float
    items: list[InputResult]

    @property
    def failed(self) -> list[InputResult]:
        return [r for r in self.items if r.status == "failed"]

    def counts(self) -> dict[str, int]:
        return report.status_counts(r.status for r in self.items)


def exit_code(results: Sequence[InputResult]) -> int:
    """0: every input done (or already done); 3: some failed; 1: all failed."""
    failed = sum(r.status == "failed" for r in results)
    if failed == 0:
        return 0
    return 1 if failed == len(results) else 3


# In-process progress callbacks (the command line's progress bars); a module global so
# that tasks running in the flow's thread pool see it without it being a task input.
_PROGRESS: list[ProgressFactory] = []


def _progress(logger: Any, name: str) -> ProgressFn:
    hook = _PROGRESS[-1](name) if _PROGRESS else None
    last = [-PROGRESS_LOG_SECONDS]

    def update(done: int, total: int) -> None:
        if hook is not None:
            hook(done, total)
        now = time.monotonic()
        if done in (1, total) or now - last[0] >= PROGRESS_LOG_SECONDS:
            last[0] = now
            logger.info("%s: %d/%d regions written", name, done, total)

    return update


# --- the per-input task -----------------------------------------------------------------------


def is_transient_failure(task: Any, task_run: Any, state: State) -> bool:
    """Retry only an OSError that is not a SegflowError (those are the input's own fault)."""
    try:
        state.result()
    except SegflowError:
        return False
    except OSError:
        return True
    except BaseException:
        return False
    return False


@task(
    name="segment-input",
    task_run_name="segment {item.name}",
    retries=TRANSIENT_RETRIES,
    retry_delay_seconds=TRANSIENT_RETRY_DELAYS,
    retry_condition_fn=is_transient_failure,
    cache_policy=NO_CACHE,  # inputs are paths; the outputs are the stores themselves
    persist_result=False,
)
def segment_input(
    item: InputItem,
    model: str,
    spec: PipelineSpec,
    resume: bool = False,
    overwrite: bool = False,
    skip_complete: bool = False,
    scheduler: str = "threads",
) -> InputResult | State:
    """Segment one input into its store; a SegflowError fails this input alone."""
    logger = get_run_logger()
    started = time.perf_counter()
    state = output_state(item.output)
    retrying = (current_task_run.run_count or 1) > 1
    use_resume = resume or (retrying and state != "absent")  # a retry continues its chunks
    if state == "complete" and not overwrite and (skip_complete or use_resume):
        # already done: no model work (resuming a complete store would redo nothing anyway)
        logger.info("%s: %s is complete, skipped", item.name, item.output)
        return _skipped(item)
    base = item.model_dump()
    try:
        from segflow.api import segment as run_segment

        loaded = loaded_model(Path(model))
        result = run_segment(
            Path(item.input),
            loaded,
            Path(item.output),
            resume=use_resume,
            overwrite=overwrite and not use_resume,
            scheduler=scheduler_for_task(scheduler),
            workers=spec.dask.workers if scheduler == "threads" else None,
            region_size=spec.dask.region_size,
            progress=_progress(logger, item.name),
            raise_errors=True,
            **spec.run_options(),
        )
    except SegflowError as exc:
        reason = " ".join(str(exc).split())
        logger.error("%s failed: %s", item.name, reason)
        failed = InputResult(
            **base,
            status="failed",
            reason=reason,
            error_type=type(exc).__name__,
            seconds=round(time.perf_counter() - started, 3),
        )
        return Failed(message=reason, data=failed)
    assert not isinstance(result, list)
    seconds = round(time.perf_counter() - started, 3)
    logger.info("%s: complete in %.1f s -> %s", item.name, seconds, item.output)
    return InputResult(
        **base,
        status="complete",
        seconds=seconds,
        resumed=use_resume and state == "partial",
        stats=dict(result.stats),
    )


def _skipped(item: InputItem) -> InputResult:
    from segflow.io.zarr_sink import ZarrSink

    summary = ZarrSink.open(item.output).summary or {}
    return InputResult(**item.model_dump(), status="skipped", stats=summary)


def result_from_state(state: State, item: InputItem) -> InputResult:
    """The task's InputResult, or a failed one carrying an unexpected exception's reason."""
    data = state.result(raise_on_failure=False)
    if isinstance(data, InputResult):
        return data
    if isinstance(data, BaseException):
        reason = " ".join(f"{type(data).__name__}: {data}".split())
    else:
        reason = state.message or f"task ended in state {state.type.value}"
    return InputResult(**item.model_dump(), status="failed", reason=reason)


def run_inputs(
    items: Sequence[InputItem],
    model: Path,
    spec: PipelineSpec,
    *,
    resume: bool = False,
    overwrite: bool = False,
    skip_complete: bool = False,
    concurrency: int = 1,
) -> list[InputResult]:
    """Run the per-input task over ``items`` (``concurrency`` at a time); call inside a flow."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other; pass one of them")
    width = max(1, concurrency)
    results: list[InputResult] = []
    with dask_scheduler(spec.dask) as scheduler:
        for start in range(0, len(items), width):
            window = list(items[start : start + width])
            futures = segment_input.map(
                window,
                model=unmapped(str(model)),
                spec=unmapped(spec),  # a pydantic model would be iterated by map otherwise
                resume=unmapped(resume),
                overwrite=unmapped(overwrite),
                skip_complete=unmapped(skip_complete),
                scheduler=unmapped(scheduler),
            )
            for item, future in zip(window, futures, strict=True):
                future.wait()
                results.append(result_from_state(future.state, item))
    return results


def batch_state(batch: BatchResult, what: str) -> BatchResult | State:
    """Completed with the batch, or Failed (still carrying the batch) when an input failed."""
    failed = batch.failed
    if not failed:
        return batch
    message = report.failure_message(what, len(batch.items), [(r.name, r.reason) for r in failed])
    return Failed(message=message, data=batch)


# --- flows ------------------------------------------------------------------------------------


@flow(name="segment", description="Segment one GeoTIFF or NIfTI input into a Zarr store.")
def segment(
    input: str,
    output: str,
    model: str | None = None,
    spec: str | None = None,
    options: dict[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> InputResult | State:
    """One input; ``options`` are ``segflow run`` option names overriding the spec."""
    pipeline, model_path = resolve_pipeline(spec, model, options)
    items = plan_items([(None, Path(input))], Path(output))
    [result] = run_inputs(items, model_path, pipeline, resume=resume, overwrite=overwrite)
    if result.status == "failed":
        return Failed(message=result.reason or "failed", data=result)
    return result


@flow(
    name="segment-batch",
    description="Segment a folder, glob, manifest or list of inputs: one task per input.",
)
def segment_batch(
    inputs: str | list[str],
    output: str,
    model: str | None = None,
    spec: str | None = None,
    options: dict[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    skip_complete: bool = False,
    concurrency: int = 1,
    report_path: str | None = None,
) -> BatchResult | State:
    """Every input to ``output/<name>.zarr``; a failing input does not stop the others.

    ``resume`` continues partial stores and leaves complete ones alone;
    ``skip_complete`` leaves complete ones alone without resuming partial ones.
    ``report_path`` (a .json file) also writes the per-input report and a CSV beside it.
    """
    started = time.time()
    pipeline, model_path = resolve_pipeline(spec, model, options)
    items = plan_items(collect_inputs(inputs), Path(output))
    get_run_logger().info("%d input(s) -> %s", len(items), output)
    results = run_inputs(
        items,
        model_path,
        pipeline,
        resume=resume,
        overwrite=overwrite,
        skip_complete=skip_complete,
        concurrency=concurrency,
    )
    batch = BatchResult(
        flow="segment-batch", started=started, seconds=time.time() - started, items=results
    )
    _publish_batch(batch, report_path)
    return batch_state(batch, "inputs")


BATCH_COLUMNS = ("name", "status", "reason", "seconds", "input", "output")


def _publish_batch(batch: BatchResult, report_path: str | None) -> None:
    rows = [r.model_dump(include=set(BATCH_COLUMNS)) for r in batch.items]
    counts = batch.counts()
    title = (
        f"# segflow batch\n\n{len(rows)} input(s): {counts['complete']} complete, "
        f"{counts['skipped']} already complete, {counts['failed']} failed "
        f"in {batch.seconds:.1f} s\n\n"
    )
    report.publish_artifacts(
        "segment-batch", title + report.markdown_table(rows, BATCH_COLUMNS), rows, "segflow batch"
    )
    if report_path:
        target = Path(report_path)
        report.write_json(target, batch.model_dump(mode="json"))
        report.write_csv(target.with_suffix(".csv"), rows, BATCH_COLUMNS)


# --- entry point for `segflow run` ------------------------------------------------------------


def run_flow(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    model: str | os.PathLike[str] | None,
    output: str | os.PathLike[str],
    options: dict[str, Any] | None = None,
    *,
    spec: str | os.PathLike[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    scheduler: Any = None,
    workers: int | None = None,
    progress: ProgressFactory | None = None,
    raise_errors: bool = False,
) -> list[RunResult]:
    """Run ``segment`` (one input) or ``segment_batch`` as a recorded Prefect flow run.

    Works with no Prefect server configured: the temporary server is started in the
    background while the model loads. ``scheduler`` is threads, sync, local, an address,
    or a ``distributed.Client``; ``progress(label)`` returns a (done, total) callback.
    Configuration mistakes raise a SegflowError before any flow run starts; with
    ``raise_errors`` a single failed input raises its SegflowError too.
    """
    opts = {k: v for k, v in (options or {}).items() if v is not None}
    if workers is not None:
        opts["workers"] = workers
    client_key = _client_address(scheduler)
    if client_key is not None:
        opts["scheduler"] = client_key
    elif scheduler is not None:
        opts["scheduler"] = str(scheduler)
    sources = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    pipeline, model_path = resolve_pipeline(spec, model, opts)  # fail fast, before a run
    items = plan_items(collect_inputs([os.fspath(s) for s in sources]), Path(output))
    server = prestart_server()
    try:
        loaded_model(model_path)  # overlaps the server start-up; the task reuses it
    finally:
        if server is not None:
            server.join()
    if client_key is not None:
        _CLIENTS[client_key] = scheduler
    if progress is not None:
        _PROGRESS.append(progress)
    state: State[Any]
    heartbeats = one_off_run_settings()
    try:
        with heartbeats:
            if len(items) == 1:
                state = segment(
                    items[0].input,
                    items[0].output,
                    model=str(model_path),
                    spec=None,
                    options=_as_options(pipeline),
                    resume=resume,
                    overwrite=overwrite,
                    return_state=True,
                )
            else:
                state = segment_batch(
                    [os.fspath(s) for s in sources],  # as given: manifest ids name outputs
                    os.fspath(output),
                    model=str(model_path),
                    options=_as_options(pipeline),
                    resume=resume,
                    overwrite=overwrite,
                    return_state=True,
                )
    finally:
        if progress is not None:
            _PROGRESS.remove(progress)
        if client_key is not None:
            _CLIENTS.pop(client_key, None)
    data = state.result(raise_on_failure=False)
    if isinstance(data, BaseException):
        raise data
    if isinstance(data, InputResult):
        results = [data]
    elif isinstance(data, BatchResult):
        results = list(data.items)
    else:
        raise TypeError(f"unexpected flow result {type(data).__name__}")
    if raise_errors and len(results) == 1 and results[0].status == "failed":
        raise _error_for(results[0])
    return [r.to_run_result() for r in results]


def _as_options(spec: PipelineSpec) -> dict[str, Any]:
    """The resolved spec as flat options (JSON-friendly flow parameters)."""
    options: dict[str, Any] = {k: v for k, v in spec.run_options().items() if v is not None}
    options.update(
        scheduler=spec.dask.scheduler,
        threads_per_worker=spec.dask.threads_per_worker,
        nifti=spec.outputs.nifti,
    )
    if spec.dask.workers is not None:
        options["workers"] = spec.dask.workers
    if spec.dask.region_size is not None:
        options["region_size"] = spec.dask.region_size
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}


def _client_address(scheduler: Any) -> str | None:
    if scheduler is None or isinstance(scheduler, str):
        return None
    address = getattr(getattr(scheduler, "scheduler", None), "address", None)
    if not isinstance(address, str):
        raise ConfigError(
            f"unknown scheduler {scheduler!r}: use threads, sync, local, an address or a Client"
        )
    return address


def _error_for(result: InputResult) -> SegflowError:
    cls = getattr(errors, result.error_type or "", None)
    if not (isinstance(cls, type) and issubclass(cls, SegflowError)):
        cls = SegflowError
    return cls(result.reason or "failed")


__all__ = [
    "INPUT_PATTERNS",
    "RASTER_PATTERNS",
    "VOLUME_PATTERNS",
    "BatchResult",
    "InputItem",
    "InputResult",
    "collect_inputs",
    "exit_code",
    "input_stem",
    "is_transient_failure",
    "loaded_model",
    "output_state",
    "plan_items",
    "prestart_server",
    "read_manifest",
    "resolve_pipeline",
    "run_flow",
    "run_inputs",
    "segment",
    "segment_batch",
    "segment_input",
]
