"""Pipeline specs: the YAML files users copy and edit, read once into a :class:`Pipeline`.

A spec has sections (``tiling``, ``outputs``, ``dask``, ``input``) so it reads
well; pydantic checks its shape with ``extra="forbid"``, so a typo fails with one
line that names the key, where it is, and the closest valid key::

    pipelines/landcover.yaml: unknown key 'tiling.overlpa'; did you mean 'overlap'?

The values themselves are checked once, by :class:`~segflow.options.RunOptions`
(the one place every option is parsed), and a mistake names its key in the file.
Relative model paths are relative to the spec file, so a folder holding a spec and
its model can be moved as a whole; a model URI (``s3://...``) stays a URI until
:meth:`Pipeline.require_model` copies it once into the local cache, as ``-m`` does. Command-line options are applied with
:meth:`Pipeline.with_overrides`, which takes the flat option names of ``segflow run``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from segflow.errors import ConfigError, one_line
from segflow.io.documents import DocumentError, read_document
from segflow.io.uris import ObjectPath, as_location
from segflow.options import RunOptions, did_you_mean

Size = int | tuple[int, ...]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TilingSpec(_Section):
    """The global patch grid and how overlapping predictions are blended."""

    patch_size: Size | None = None
    overlap: float | None = None  # a fraction (< 1) of the patch, or whole pixels (>= 1)
    blend: str | None = None
    sigma: float | None = None
    batch_size: int | None = None


class OutputsSpec(_Section):
    labels: bool | None = None
    probabilities: str | None = None
    chunk_size: Size | None = None
    nifti: bool | None = None  # volumes: also export the label mask as NIfTI next to the Zarr
    zarr_format: int | None = None  # 2: raster stores GDAL and QGIS open; 3 (default): Zarr v3


class DaskSpec(_Section):
    """Where the chunk work runs: threads, sync, local (a LocalCluster) or an address."""

    scheduler: str | None = None
    workers: int | None = None
    threads_per_worker: int | None = None
    devices: str | list[str | int] | None = None  # one local worker per device: [cuda:0, cuda:1]
    region_size: int | None = None


class InputSpec(_Section):
    bands: tuple[int, ...] | None = None  # 1-based raster bands, e.g. [4, 3, 2]
    nodata: float | None = None
    volume: int | None = None
    volumes_as_channels: bool | None = None
    slice_axis: int | None = None
    reorient: bool | None = None
    spacing: float | tuple[float, ...] | None = None  # mm per model axis; overrides the model's
    resolution: float | None = None  # metres per pixel; overrides the model's
    resample: bool | None = None  # resample to the model's spacing/resolution (default: on)
    series: str | None = None  # DICOM: the SeriesInstanceUID, where a folder holds several


class PostprocessSpec(_Section):
    """Cleaning each finished store into ``<name>_clean.zarr``."""

    keep_largest: tuple[str | int, ...] | None = None  # class names or values
    keep_top: int | None = None
    min_size: int | float | str | None = None  # pixels, or "5mL", "0.5ha"
    sieve: int | float | str | None = None
    fill: str | int | None = None
    connectivity: str | None = None


class PipelineSpec(_Section):
    """The shape of a spec file: everything that is not the list of inputs."""

    name: str | None = None
    description: str | None = None
    model: str | None = None  # a path (relative to the spec) or a URI
    device: str | None = None
    amp: bool | None = None
    tta: bool | None = None
    tiling: TilingSpec = TilingSpec()
    outputs: OutputsSpec = OutputsSpec()
    dask: DaskSpec = DaskSpec()
    input: InputSpec = InputSpec()
    postprocess: PostprocessSpec = PostprocessSpec()


_SECTIONS: dict[str, type[_Section]] = {
    "tiling": TilingSpec,
    "outputs": OutputsSpec,
    "dask": DaskSpec,
    "input": InputSpec,
    "postprocess": PostprocessSpec,
}


@dataclass(frozen=True)
class Pipeline:
    """A spec read and checked: the model file and the options of its runs."""

    options: RunOptions = field(default_factory=RunOptions)
    model: Path | ObjectPath | None = None
    name: str | None = None
    description: str | None = None

    def with_overrides(
        self, *, model: str | os.PathLike[str] | None = None, **options: Any
    ) -> Pipeline:
        """A copy with command-line values applied; ``None`` means "not given"."""
        return Pipeline(
            options=self.options.replace(**options),
            model=as_location(model) if model is not None else self.model,
            name=self.name,
            description=self.description,
        )

    def require_model(self) -> Path:
        """The model file, which must exist; a URI's local copy (made once, then reused)."""
        if self.model is None:
            raise ConfigError("no model given: pass --model FILE or set 'model:' in the spec")
        if isinstance(self.model, ObjectPath):
            from segflow.io.remote import local_copy

            return local_copy(str(self.model))
        if not self.model.is_file():
            raise ConfigError(f"model file {self.model} not found; check the path")
        return self.model


def load_spec(path: str | os.PathLike[str]) -> Pipeline:
    """Read and check a pipeline YAML; relative model paths resolve against its folder."""
    file = Path(path).expanduser()
    pipeline = parse_spec(_read_yaml(file), source=str(file))
    if isinstance(pipeline.model, Path) and not pipeline.model.is_absolute():
        pipeline = Pipeline(
            pipeline.options,
            (file.parent / pipeline.model).resolve(),
            pipeline.name,
            pipeline.description,
        )
    return pipeline


def parse_spec(data: dict[str, Any], *, source: str = "pipeline spec") -> Pipeline:
    """Check a spec given as a mapping; errors are one-line ConfigErrors naming the key."""
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from None
    options = RunOptions()
    for key, value in _flat_options(spec):
        try:
            options = options.replace(**{key.rpartition(".")[2]: value})
        except ConfigError as exc:
            raise ConfigError(f"{source}: {key}: {one_line(exc)}") from None
    model = as_location(spec.model) if spec.model is not None else None
    return Pipeline(options, model, spec.name, spec.description)


def _read_yaml(file: Path) -> dict[str, Any]:
    try:
        data = read_document(file)
    except FileNotFoundError:
        raise ConfigError(f"pipeline spec {file} not found; check the path") from None
    except OSError as exc:
        raise ConfigError(f"cannot read pipeline spec {file}: {exc.strerror or exc}") from None
    except DocumentError as exc:
        raise ConfigError(f"{file}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{file}: a pipeline spec is a mapping of keys, got {type(data).__name__}"
        )
    return data


def _flat_options(spec: PipelineSpec) -> list[tuple[str, Any]]:
    """``(dotted key, value)`` for every option the spec sets, in file order."""
    found = [
        (k, getattr(spec, k)) for k in ("device", "amp", "tta") if getattr(spec, k) is not None
    ]
    for section in _SECTIONS:
        values = getattr(spec, section).model_dump(exclude_none=True)
        found += [(f"{section}.{k}", v) for k, v in values.items()]
    return found


def _describe(exc: ValidationError) -> str:
    """The first validation error as one line: where, what, and a did-you-mean for typos."""
    error = exc.errors()[0]
    loc = [str(p) for p in error["loc"]]
    where = ".".join(loc)
    if error["type"] == "extra_forbidden":
        known = _fields_at(loc[:-1])
        return f"unknown key '{where}'{did_you_mean(loc[-1], known)}"
    message = str(error["msg"]).removeprefix("Value error, ")
    given = error.get("input")
    quiet = isinstance(given, dict | list) or given is None or str(given) in message
    shown = "" if quiet else f" (got {given!r})"
    return f"{where}: {message}{shown}"


def _fields_at(path: list[str]) -> list[str]:
    if not path:
        return list(PipelineSpec.model_fields)
    section = _SECTIONS.get(path[0])
    return list(section.model_fields) if section is not None and len(path) == 1 else []


__all__ = [
    "DaskSpec",
    "InputSpec",
    "OutputsSpec",
    "Pipeline",
    "PipelineSpec",
    "PostprocessSpec",
    "TilingSpec",
    "load_spec",
    "parse_spec",
]
