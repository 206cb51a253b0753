"""Pipeline specs: the YAML files users copy and edit, read once into a :class:`Pipeline`.

A spec has sections (``tiling``, ``outputs``, ``dask``, ``input``) so it reads
well; pydantic checks its shape with ``extra="forbid"``, so a typo fails with one
line that names the key, where it is, and the closest valid key::

    pipelines/landcover.yaml: unknown key 'tiling.overlpa'; did you mean 'overlap'?

The values themselves are checked once, by :class:`~segflow.options.RunOptions`
(the one place every option is parsed), and a mistake names its key in the file.
Relative model paths are relative to the spec file, so a folder holding a spec and
its model can be moved as a whole; ``model:`` may also be a list of files or a folder of
fold models (an ensemble, with optional ``weights:``, one per model); a model URI (``s3://...``) stays a URI until
:meth:`Pipeline.require_model` copies it once into the local cache, as ``-m`` does. Command-line options are applied with
:meth:`Pipeline.with_overrides`, which takes the flat option names of ``segflow run``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from segflow.errors import ConfigError, one_line
from segflow.io.documents import DocumentError, read_document
from segflow.io.uris import ObjectPath, as_location
from segflow.models.members import check_weights, member_files
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
    uncertainty: bool | None = None  # the blend's normalized entropy as a uint8 array
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
    # a path (relative to the spec) or a URI; a folder of fold models or a list of files
    # is an ensemble, whose averaged probabilities may be weighted (one weight per model)
    model: str | list[str] | None = None
    weights: list[float] | None = None
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


Location = Path | ObjectPath


@dataclass(frozen=True)
class Pipeline:
    """A spec read and checked: the model file(s) and the options of its runs."""

    options: RunOptions = field(default_factory=RunOptions)
    model: Location | None = None  # the model file or a folder of fold models; else ensemble[0]
    name: str | None = None
    description: str | None = None
    ensemble: tuple[Location, ...] = ()  # every entry of a spec whose ``model:`` is a list
    weights: tuple[float, ...] | None = None  # one per ensemble member

    def with_overrides(
        self,
        *,
        model: str | os.PathLike[str] | None = None,
        weights: Sequence[float] | None = None,
        **options: Any,
    ) -> Pipeline:
        """A copy with command-line values applied; ``None`` means "not given".

        A model given here replaces the spec's, ensemble and weights included.
        """
        chosen = self.options.replace(**options)
        given = None if weights is None else tuple(float(w) for w in weights)
        if model is not None:
            return Pipeline(chosen, as_location(model), self.name, self.description, (), given)
        return dataclasses.replace(
            self, options=chosen, weights=given if given is not None else self.weights
        )

    def model_files(self) -> list[Path]:
        """Every model file the pipeline names, local: one, or an ensemble's members (a
        folder listed by name; a URI's local copy, made once). Missing files and weights
        that do not fit the members are one-line ConfigErrors; no torch is imported."""
        entries = self.ensemble or ((self.model,) if self.model is not None else ())
        if not entries:
            raise ConfigError("no model given: pass --model FILE or set 'model:' in the spec")
        files = member_files([_local(entry) for entry in entries])
        check_weights(self.weights, len(files))
        return files

    def ensemble_files(self) -> list[Path]:
        """The members when the pipeline names an ensemble (two or more files), else []."""
        files = self.model_files()
        return files if len(files) > 1 else []

    def require_model(self) -> Path:
        """The model file, which must exist (an ensemble's first member); a URI's local
        copy (made once, then reused)."""
        return self.model_files()[0]


def _local(entry: Location) -> Path:
    if isinstance(entry, ObjectPath):
        from segflow.io.remote import local_copy

        return local_copy(str(entry))
    return entry


def load_spec(path: str | os.PathLike[str]) -> Pipeline:
    """Read and check a pipeline YAML; relative model paths resolve against its folder."""
    file = Path(path).expanduser()
    pipeline = parse_spec(_read_yaml(file), source=str(file))
    return dataclasses.replace(
        pipeline,
        model=None if pipeline.model is None else _beside(file, pipeline.model),
        ensemble=tuple(_beside(file, entry) for entry in pipeline.ensemble),
    )


def _beside(file: Path, entry: Location) -> Location:
    """A relative model path as a path from the spec's folder (URIs stay as they are)."""
    if isinstance(entry, Path) and not entry.is_absolute():
        return (file.parent / entry).resolve()
    return entry


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
    entries = _model_entries(spec, source)
    weights = None if spec.weights is None else tuple(spec.weights)
    ensemble = entries if isinstance(spec.model, list) and len(entries) > 1 else ()
    model = entries[0] if entries else None
    return Pipeline(options, model, spec.name, spec.description, ensemble, weights)


def _model_entries(spec: PipelineSpec, source: str) -> tuple[Location, ...]:
    """The spec's model entries as locations; weights need the models they weigh."""
    given = spec.model if isinstance(spec.model, list) else [spec.model] if spec.model else []
    if isinstance(spec.model, list) and not spec.model:
        raise ConfigError(f"{source}: model: give a model file, a list of them or a folder")
    if spec.weights is not None and not given:
        raise ConfigError(f"{source}: weights: name the ensemble's models in 'model:' too")
    return tuple(as_location(entry) for entry in given)


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
