"""The ``segment`` and ``segment_batch`` flows: one Prefect task per input, Dask for the chunks.

Prefect records every task run on its server, so the unit of orchestration is the
input (a scene or a scan), never a chunk: the chunk work of one input is a Dask graph
run by ``segflow.segment`` inside the task. Task inputs are paths and the run's frozen
``RunOptions``, never arrays or models; flow parameters are ``RunOptions.to_dict()``,
parsed back once when the flow starts.

A model is one file or an ensemble: several files (or a folder of them) whose averaged
probabilities are one prediction, exactly as ``segflow.segment`` runs them; flows and
tasks carry the member files' paths (and optional ``weights``), never loaded models.

Failure policy per input: a ``SegflowError`` (a corrupt file, a wrong band count, an
output in the way) fails that input alone, with its one-line reason and no retry; an
``OSError`` that is not a SegflowError (a network file system hiccup) is retried, and
the retry resumes the chunks already written.

``run_flow`` is what ``segflow run`` calls: the same flows, started in-process, recorded
on the server :func:`flows.runtime.use_prefect_server` picks (a temporary one when none
runs), returning ``RunResult`` objects.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from prefect import flow, get_run_logger, tags, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.runtime import task_run as current_task_run
from pydantic import BaseModel, Field

from flows import report
from flows.inputs import output_state
from flows.progress import ProgressFactory, progress_hook, progress_logged
from flows.runtime import (
    ModelArg,
    ModelRef,
    client_for,
    dask_scheduler,
    load_while_server_starts,
    loaded_model,
    loaded_models,
    model_members,
    model_ref,
    one_off_run_settings,
    prefect_api,
    registered,
    resolve_run,
    run_weights,
)
from segflow import errors
from segflow.errors import ConfigError, SegflowError
from segflow.inputs import InputItem, collect_inputs, plan_items
from segflow.io.uris import as_location
from segflow.options import RunOptions
from segflow.spec import Pipeline

if TYPE_CHECKING:
    from distributed import Client

    from segflow.api import RunResult

Status = Literal["complete", "skipped", "failed"]

TRANSIENT_RETRIES = 2
# seconds between attempts; a file system hiccup usually passes within these
TRANSIENT_RETRY_DELAYS: list[float] = [5.0, 30.0]


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

    def to_run_result(self, run_url: str | None = None) -> RunResult:
        from segflow.api import RunResult

        return RunResult(
            input=as_location(self.input),
            output=as_location(self.output),
            status="failed" if self.status == "failed" else "complete",
            seconds=self.seconds,
            error=self.reason,
            stats=dict(self.stats),
            run_url=run_url,
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


# --- the per-input task -----------------------------------------------------------------------


def is_transient_failure(task: Any, task_run: Any, state: State[Any]) -> bool:
    """Retry only an OSError that is not a SegflowError (those are the input's own fault)."""
    try:
        state.result()
    except SegflowError as exc:  # a region that failed on a hiccup (not a full disk) may pass
        return bool(getattr(exc, "retryable", False))
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
    model: ModelRef,
    options: RunOptions,
    resume: bool = False,
    overwrite: bool = False,
    skip_complete: bool = False,
    scheduler: str = "threads",
    weights: list[float] | None = None,
) -> InputResult | State[Any]:
    """Segment one input into its store; a SegflowError fails this input alone.

    ``model`` is a model file or an ensemble's member files (``weights``: one per member).
    ``scheduler`` is what :func:`flows.runtime.dask_scheduler` yielded: threads, sync,
    or the address of a client this process holds.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    state = output_state(item.output)
    retrying = (current_task_run.run_count or 1) > 1
    use_resume = resume or (retrying and state != "absent")  # a retry continues its chunks
    if state == "complete" and not overwrite and (skip_complete or use_resume):
        # already done: no model work (resuming a complete store would redo nothing anyway)
        logger.info("%s: %s is complete, skipped", item.name, item.output)
        return _skipped(item)
    try:
        from segflow.api import segment as run_segment

        result = run_segment(
            item.input,
            loaded_models(model, weights),
            item.output,
            options,
            resume=use_resume,
            overwrite=overwrite and not use_resume,
            client=client_for(scheduler),
            progress=progress_logged(logger, item.name),
            raise_errors=True,
        )
    except SegflowError as exc:
        if getattr(exc, "retryable", False):
            raise  # Prefect retries it (is_transient_failure); the retry resumes the store
        reason = " ".join(str(exc).split())
        logger.error("%s failed: %s", item.name, reason)
        failed = InputResult(
            **item.to_dict(),
            status="failed",
            reason=reason,
            error_type=type(exc).__name__,
            seconds=round(time.perf_counter() - started, 3),
        )
        return report.failed_state(reason, failed)
    assert not isinstance(result, list)
    seconds = round(time.perf_counter() - started, 3)
    logger.info("%s: complete in %.1f s -> %s", item.name, seconds, item.output)
    return InputResult(
        **item.to_dict(),
        status="complete",
        seconds=seconds,
        resumed=use_resume and state == "partial",
        stats=dict(result.stats),
    )


def _skipped(item: InputItem) -> InputResult:
    from segflow.io.zarr_sink import ZarrSink

    summary = ZarrSink.open(item.output).summary or {}
    return InputResult(**item.to_dict(), status="skipped", stats=summary)


def result_from_state(state: State[Any], item: InputItem) -> InputResult:
    """The task's InputResult, or a failed one carrying an unexpected exception's reason."""
    data = report.outcome(state)
    if isinstance(data, InputResult):
        return data
    if isinstance(data, BaseException):
        reason = " ".join(f"{type(data).__name__}: {data}".split())
    else:
        reason = state.message or f"task ended in state {state.type.value}"
    return InputResult(**item.to_dict(), status="failed", reason=reason)


def run_inputs(
    items: Sequence[InputItem],
    model: ModelRef | Path,
    options: RunOptions,
    *,
    resume: bool = False,
    overwrite: bool = False,
    skip_complete: bool = False,
    concurrency: int = 1,
    weights: Sequence[float] | None = None,
) -> list[InputResult]:
    """Run the per-input task over ``items`` (``concurrency`` at a time); call inside a flow.

    ``model`` is a model file or an ensemble's member files (``weights``: one per member).
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other; pass one of them")
    width = max(1, concurrency)
    results: list[InputResult] = []
    with dask_scheduler(options) as scheduler:
        for start in range(0, len(items), width):
            window = list(items[start : start + width])
            futures = segment_input.map(
                window,
                model=unmapped(model_ref(model)),
                options=unmapped(options),
                weights=unmapped(list(weights) if weights is not None else None),
                resume=unmapped(resume),
                overwrite=unmapped(overwrite),
                skip_complete=unmapped(skip_complete),
                scheduler=unmapped(scheduler),
            )
            for item, future in zip(window, futures, strict=True):
                future.wait()
                results.append(result_from_state(future.state, item))
    return results


def run_unfinished(
    items: Sequence[InputItem],
    pipeline: Pipeline,
    *,
    concurrency: int = 1,
    model: ModelRef | None = None,
    weights: Sequence[float] | None = None,
) -> list[InputResult]:
    """The re-run policy of scheduled batches: complete stores are left alone (no model
    work), partial ones resumed, new inputs computed; call inside a flow. ``model``
    (default: the pipeline's) may be an ensemble's member files."""
    return run_inputs(
        items,
        model if model is not None else pipeline.require_model(),
        pipeline.options,
        resume=True,
        skip_complete=True,
        concurrency=concurrency,
        weights=weights,
    )


def batch_state(batch: BatchResult, what: str) -> BatchResult | State[Any]:
    """Completed with the batch, or Failed (still carrying the batch) when an input failed."""
    failed = batch.failed
    if not failed:
        return batch
    message = report.failure_message(what, len(batch.items), [(r.name, r.reason) for r in failed])
    return report.failed_state(message, batch)


# --- flows ------------------------------------------------------------------------------------


@flow(name="segment", description="Segment one GeoTIFF or NIfTI input into a Zarr store.")
def segment(
    input: str,
    output: str,
    model: str | list[str] | None = None,
    spec: str | None = None,
    options: dict[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    weights: list[float] | None = None,
) -> InputResult | State[Any]:
    """One input; ``options`` are RunOptions fields (``RunOptions.to_dict()``) over the spec.

    ``model``: a model file, or several (or a folder of them) run as an ensemble, with
    optional ``weights``, one per member.
    """
    pipeline, models = resolve_run(spec, model, options)  # parsed once, here
    items = plan_items([(None, as_location(input))], as_location(output))
    [result] = run_inputs(
        items,
        models,
        pipeline.options,
        resume=resume,
        overwrite=overwrite,
        weights=run_weights(pipeline, weights),
    )
    _publish_input(result)
    if result.status == "failed":
        return report.failed_state(result.reason or "failed", result)
    return result


def _publish_input(result: InputResult) -> None:
    """The run's artifact: where the output went, and its class pixel counts."""
    counts = result.stats.get("class_pixel_counts") or {}
    rows = [{"class": name, "pixels": pixels} for name, pixels in counts.items()]
    status = result.reason if result.status == "failed" else f"{result.seconds:.1f} s"
    title = (
        f"# segflow run\n\n`{result.input}` -> `{result.output}` ({result.status}: {status})\n\n"
    )
    body = report.markdown_table(rows, ("class", "pixels")) if rows else ""
    report.publish_artifacts(f"segment-{result.name}", title + body, rows, "segflow run")


@flow(
    name="segment-batch",
    description="Segment a folder, glob, manifest or list of inputs: one task per input.",
)
def segment_batch(
    inputs: str | list[str],
    output: str,
    model: str | list[str] | None = None,
    spec: str | None = None,
    options: dict[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    skip_complete: bool = False,
    concurrency: int = 1,
    report_path: str | None = None,
    weights: list[float] | None = None,
) -> BatchResult | State[Any]:
    """Every input to ``output/<name>.zarr``; a failing input does not stop the others.

    ``resume`` continues partial stores and leaves complete ones alone;
    ``skip_complete`` leaves complete ones alone without resuming partial ones.
    ``report_path`` (a .json file) also writes the per-input report and a CSV beside it.
    ``model`` and ``weights`` as in :func:`segment`.
    """
    started = time.time()
    pipeline, models = resolve_run(spec, model, options)  # parsed once, here
    items = plan_items(collect_inputs(inputs), as_location(output))
    get_run_logger().info("%d input(s) -> %s", len(items), output)
    results = run_inputs(
        items,
        models,
        pipeline.options,
        weights=run_weights(pipeline, weights),
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
    inputs: Sequence[str | os.PathLike[str]],
    model: ModelArg,
    output: str | os.PathLike[str],
    options: RunOptions | None = None,
    *,
    weights: Sequence[float] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: ProgressFactory | None = None,
    raise_errors: bool = False,
    client: Client | None = None,
) -> list[RunResult]:
    """Run ``segment`` (one input) or ``segment_batch`` as a recorded Prefect flow run.

    The server is :func:`flows.runtime.use_prefect_server`'s choice; a temporary one
    starts in the background while the model loads. ``client`` (a
    ``distributed.Client``) runs the chunk work instead of ``options.scheduler``;
    ``progress(label)`` returns a (done, total) callback. ``model`` is a model file, or
    several (or a folder of them) run as an ensemble with optional ``weights``.
    Configuration mistakes (members that disagree included) raise a SegflowError before
    any flow run starts; with ``raise_errors`` a single failed input raises its
    SegflowError too.
    """
    chosen = options or RunOptions()
    models = _checked_models(model)  # fail fast, before a run
    sources = [os.fspath(s) for s in inputs]
    items = plan_items(collect_inputs(sources), as_location(output))
    # a caller's client: findable by the run's tasks under its address, never closed here
    caller_client = registered(client) if client is not None else nullcontext(None)
    with prefect_api() as api_url, caller_client as address:
        if address is not None:
            chosen = chosen.replace(scheduler=address)
        load_while_server_starts(models, weights)
        with progress_hook(progress), one_off_run_settings():
            state = _start_flow(
                items,
                sources,
                output,
                models,
                chosen,
                weights=weights,
                resume=resume,
                overwrite=overwrite,
            )
        url = run_url(state) if api_url is not None else None  # a temporary server's is gone
    results = _flow_results(state)
    if raise_errors and len(results) == 1 and results[0].status == "failed":
        raise _error_for(results[0])
    return [r.to_run_result(run_url=url) for r in results]


def _checked_models(model: ModelArg) -> ModelRef:
    """The model file (resolved), or an ensemble's member files; a missing one fails now."""
    members = model_members(model)
    if len(members) > 1:
        return [str(m) for m in members]
    given = members[0] if members else None
    return str(Pipeline(model=given).require_model().resolve())


def _model_tags(model: ModelRef) -> list[str]:
    """``model:<stem>`` for the model, or for each ensemble member plus ``ensemble``."""
    if isinstance(model, str):
        return [f"model:{Path(model).stem}"]
    return ["ensemble", *(f"model:{Path(m).stem}" for m in model)]


def _start_flow(
    items: list[InputItem],
    sources: list[str],
    output: str | os.PathLike[str],
    model: ModelRef,
    options: RunOptions,
    *,
    weights: Sequence[float] | None,
    resume: bool,
    overwrite: bool,
) -> State[Any]:
    """One input: the ``segment`` flow; several: ``segment_batch`` over the sources as given
    (a manifest's ids name the outputs)."""
    params = options.to_dict()
    weight_list = list(weights) if weights is not None else None
    # runs a person can find in the UI: named after their input, tagged with the model(s)
    with tags("segflow", *_model_tags(model)):
        if len(items) == 1:
            item = items[0]
            return segment.with_options(flow_run_name=f"segment-{item.name}")(
                item.input,
                item.output,
                model=model,
                options=params,
                weights=weight_list,
                resume=resume,
                overwrite=overwrite,
                return_state=True,
            )
        return segment_batch.with_options(
            flow_run_name=f"segment-batch-{items[0].name}-and-{len(items) - 1}-more"
        )(
            sources,
            os.fspath(output),
            model=model,
            options=params,
            weights=weight_list,
            resume=resume,
            overwrite=overwrite,
            return_state=True,
        )


def run_url(state: State[Any]) -> str | None:
    """The flow run's page in the Prefect UI (None for a temporary server, gone with its run)."""
    from prefect.utilities.urls import url_for

    run_id = state.state_details.flow_run_id
    return url_for("flow-run", obj_id=run_id) if run_id is not None else None


def _flow_results(state: State[Any]) -> list[InputResult]:
    """The per-input results a ``segment`` or ``segment_batch`` run ended with; its error raised."""
    data = report.outcome(state)
    if isinstance(data, BaseException):
        raise data
    if isinstance(data, InputResult):
        return [data]
    if isinstance(data, BatchResult):
        return list(data.items)
    raise TypeError(f"unexpected flow result {type(data).__name__}")


def _error_for(result: InputResult) -> SegflowError:
    cls = getattr(errors, result.error_type or "", None)
    if not (isinstance(cls, type) and issubclass(cls, SegflowError)):
        cls = SegflowError
    return cls(result.reason or "failed")


__all__ = [
    "BatchResult",
    "InputItem",
    "InputResult",
    "exit_code",
    "is_transient_failure",
    "loaded_model",
    "output_state",
    "run_flow",
    "run_inputs",
    "run_unfinished",
    "segment",
    "segment_batch",
    "segment_input",
]
