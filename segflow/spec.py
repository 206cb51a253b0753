"""Pipeline specs: the YAML files users copy and edit (model, tiling, outputs, device, dask, input).

A spec is validated by pydantic with ``extra="forbid"``; a typo fails with one line
that names the key, where it is, and the closest valid key::

    pipelines/landcover.yaml: unknown key 'tiling.overlpa'; did you mean 'overlap'?

Relative model paths are relative to the spec file, so a folder holding a spec and
its model can be moved as a whole. Command-line options override the file through
:func:`merge_overrides`, which takes the flat option names of ``segflow run``.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from segflow.engine.blend import BlendMode
from segflow.errors import ConfigError

Size = int | tuple[int, ...]
SchedulerName = str  # "threads", "sync", "local" (a LocalCluster) or "tcp://host:port"
LOCAL_SCHEDULERS = ("threads", "sync", "local")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TilingSpec(_Section):
    """The global patch grid and how overlapping predictions are blended."""

    patch_size: Size | None = None  # None: the model's hint, else 512 (2-D) / 96 (3-D)
    overlap: float = Field(
        default=0.25, ge=0
    )  # a fraction (< 1) of the patch, or whole pixels (>= 1)
    blend: str = "gaussian"
    sigma: float = Field(default=0.125, gt=0, le=1)
    batch_size: int | None = Field(default=None, ge=1)  # None: auto (see segflow.api)

    @field_validator("blend")
    @classmethod
    def _blend_mode(cls, value: str) -> str:
        return BlendMode.parse(value).value  # ConfigError with a did-you-mean

    @field_validator("patch_size")
    @classmethod
    def _positive(cls, value: Size | None) -> Size | None:
        values = (value,) if isinstance(value, int) else value or ()
        if any(v < 1 for v in values):
            raise ValueError(f"patch sizes must be positive, got {value}")
        return value


class OutputsSpec(_Section):
    labels: bool = True
    probabilities: Literal["none", "uint8", "float16"] = "none"
    chunk_size: Size | None = None  # None: 1024 (2-D) / 128 (3-D), aligned to the file's tiles
    nifti: bool = False  # volumes: also export the label mask as NIfTI next to the Zarr


class DaskSpec(_Section):
    """Where the chunk work runs.

    ``threads`` (default) and ``sync`` run in the calling process; ``local`` starts a
    LocalCluster of ``workers`` processes for the run; an address (``tcp://host:8786``)
    uses an existing dask.distributed scheduler.
    """

    scheduler: SchedulerName = "threads"
    workers: int | None = Field(default=None, ge=1)  # threads (threaded) or processes (local)
    threads_per_worker: int = Field(default=1, ge=1)  # local cluster only
    # edge of a task's region (whole chunks); None: 2048 / 256, less for many classes
    region_size: int | None = Field(default=None, ge=1)

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, value: str) -> str:
        if "://" in value:
            return value
        lowered = value.lower()
        if lowered in LOCAL_SCHEDULERS:
            return lowered
        close = difflib.get_close_matches(lowered, LOCAL_SCHEDULERS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(
            f"scheduler must be threads, sync, local or an address like tcp://host:8786, "
            f"got '{value}'{hint}"
        )


class InputSpec(_Section):
    bands: tuple[int, ...] | None = None  # 1-based raster bands, e.g. [4, 3, 2]
    nodata: float | None = None  # overrides the file's nodata value
    volume: int | None = Field(default=None, ge=0)  # 4-D NIfTI: the volume to segment
    volumes_as_channels: bool = False
    slice_axis: Literal[0, 1, 2] | None = None  # 2-D model on a volume
    reorient: bool = True  # honour the model's canonical orientation (inverted before writing)


class PipelineSpec(_Section):
    """One segmentation pipeline: everything that is not the list of inputs."""

    name: str | None = None
    description: str | None = None
    model: Path | None = None  # relative paths: relative to the spec file
    device: str = "auto"  # auto, cpu, cuda, cuda:N or mps
    amp: bool = True
    tta: bool = False
    tiling: TilingSpec = TilingSpec()
    outputs: OutputsSpec = OutputsSpec()
    dask: DaskSpec = DaskSpec()
    input: InputSpec = InputSpec()

    def run_options(self) -> dict[str, Any]:
        """Keyword options for ``segflow.segment`` (everything that changes the output)."""
        t, o, i = self.tiling, self.outputs, self.input
        return {
            "patch_size": t.patch_size,
            "overlap": _overlap(t.overlap),
            "blend": t.blend,
            "sigma": t.sigma,
            "batch_size": t.batch_size,
            "device": self.device,
            "amp": self.amp,
            "tta": self.tta,
            "chunk_size": o.chunk_size,
            "labels": o.labels,
            "probabilities": o.probabilities,
            "bands": i.bands,
            "nodata": i.nodata,
            "volume": i.volume,
            "volumes_as_channels": i.volumes_as_channels,
            "slice_axis": i.slice_axis,
            "reorient": i.reorient,
        }

    def require_model(self) -> Path:
        """The model file, which must exist."""
        if self.model is None:
            raise ConfigError("no model given: pass --model FILE or set 'model:' in the spec")
        if not self.model.is_file():
            raise ConfigError(f"model file {self.model} not found; check the path")
        return self.model


# flat option name (as on the command line) -> (section, field); section None: top level
OVERRIDES: dict[str, tuple[str | None, str]] = {
    "model": (None, "model"),
    "device": (None, "device"),
    "amp": (None, "amp"),
    "tta": (None, "tta"),
    **{k: ("tiling", k) for k in TilingSpec.model_fields},
    **{k: ("outputs", k) for k in OutputsSpec.model_fields},
    **{k: ("dask", k) for k in DaskSpec.model_fields},
    **{k: ("input", k) for k in InputSpec.model_fields},
}


def load_spec(path: str | os.PathLike[str]) -> PipelineSpec:
    """Read and validate a pipeline YAML; relative model paths resolve against its folder."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"pipeline spec {file} not found; check the path") from None
    except OSError as exc:
        raise ConfigError(f"cannot read pipeline spec {file}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(
            f"{file}: not valid YAML{where}; check the indentation and quoting"
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{file}: a pipeline spec is a mapping of keys, got {type(data).__name__}"
        )
    spec = parse_spec(data, source=str(file))
    if spec.model is not None and not spec.model.is_absolute():
        spec = spec.model_copy(update={"model": (file.parent / spec.model).resolve()})
    return spec


def parse_spec(data: dict[str, Any], *, source: str = "pipeline spec") -> PipelineSpec:
    """Validate a spec given as a mapping; errors are one-line ConfigErrors."""
    try:
        return PipelineSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc, PipelineSpec)}") from None
    except ConfigError as exc:  # raised by a field validator (e.g. a blend mode)
        raise ConfigError(f"{source}: {exc}") from None


def merge_overrides(spec: PipelineSpec, **overrides: Any) -> PipelineSpec:
    """A new spec with command-line values applied; ``None`` means "not given".

    Keys are the flat option names of ``segflow run`` (``patch_size``, ``scheduler``,
    ``bands``...) or dotted paths (``tiling.patch_size``).
    """
    data = spec.model_dump()
    for key, value in overrides.items():
        if value is None:
            continue
        section, name = _override_target(key)
        if isinstance(value, list):
            value = tuple(value)
        if section is None:
            data[name] = value
        else:
            data[section][name] = value
    return parse_spec(data, source="options")


def _override_target(key: str) -> tuple[str | None, str]:
    if "." in key:
        section, _, name = key.partition(".")
        fields = _SECTIONS.get(section)
        if fields is not None and name in fields:
            return section, name
    elif key in OVERRIDES:
        return OVERRIDES[key]
    known = [*OVERRIDES, *(f"{s}.{f}" for s, fs in _SECTIONS.items() for f in fs)]
    raise ConfigError(f"unknown option '{key}'{_did_you_mean(key, known)}")


_SECTIONS: dict[str, tuple[str, ...]] = {
    "tiling": tuple(TilingSpec.model_fields),
    "outputs": tuple(OutputsSpec.model_fields),
    "dask": tuple(DaskSpec.model_fields),
    "input": tuple(InputSpec.model_fields),
}


def _describe(exc: ValidationError, model: type[BaseModel]) -> str:
    """The first validation error as one line: where, what, and a did-you-mean for typos."""
    error = exc.errors()[0]
    loc = [str(p) for p in error["loc"]]
    where = ".".join(loc)
    if error["type"] == "extra_forbidden":
        known = _fields_at(model, loc[:-1])
        return f"unknown key '{where}'{_did_you_mean(loc[-1], known)}"
    message = str(error["msg"]).removeprefix("Value error, ")
    given = error.get("input")
    quiet = isinstance(given, dict | list) or given is None or str(given) in message
    shown = "" if quiet else f" (got {given!r})"
    return f"{where}: {message}{shown}"


def _fields_at(model: type[BaseModel], path: list[str]) -> list[str]:
    current: type[BaseModel] = model
    for part in path:
        annotation = current.model_fields[part].annotation if part in current.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        current = annotation
    return list(current.model_fields)


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _overlap(value: float) -> float | int:
    return value if value < 1 else int(value)


__all__ = [
    "DaskSpec",
    "InputSpec",
    "OutputsSpec",
    "PipelineSpec",
    "TilingSpec",
    "load_spec",
    "merge_overrides",
    "parse_spec",
]
