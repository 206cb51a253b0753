"""Every option of a run, parsed once at the edge into one frozen value.

The command line, YAML pipeline specs, Prefect flow parameters and
``segflow.segment`` keywords all end here: :class:`RunOptions` checks and
normalizes its fields when it is built (a ``"512,512"`` string, a list or a
tuple all become ``(512, 512)``; ``"Gaussian"`` becomes ``BlendMode.GAUSSIAN``),
and nothing downstream checks them again. Mistakes are one-line
:class:`~segflow.errors.ConfigError` s that name the option and, for a typo, the
closest valid name or choice.

This module imports nothing heavy: the command checks options here before torch
is imported.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, TypeVar

from segflow.errors import ConfigError

E = TypeVar("E", bound=StrEnum)

Size = int | tuple[int, ...]


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def parse_choice(enum: type[E], value: str | E, what: str) -> E:
    """``enum(value)`` case-insensitively, or a one-line ConfigError naming the choices."""
    try:
        return enum(str(value).lower())
    except ValueError:
        names = [m.value for m in enum]
        hint = did_you_mean(str(value).lower(), names)
        raise ConfigError(
            f"unknown {what} '{value}' (choose from {', '.join(names)}){hint}"
        ) from None


def parse_list(value: str | Iterable[str] | None) -> list[str] | None:
    """``"a, b,c"`` (or an iterable of strings) as ``["a", "b", "c"]``; None stays None."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    return [item.strip() for item in items if item.strip()]


def parse_numbers(value: str | float | Iterable[Any] | None, what: str) -> tuple[float, ...] | None:
    """``"0.5,1"``, a number or a sequence of numbers as a tuple of finite floats."""
    if value is None:
        return None
    items: Iterable[Any] = parse_list(value) or [] if isinstance(value, str) else _as_items(value)
    try:
        numbers = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} takes numbers like 0.5 or 0.5,1, got '{value}'") from None
    if not all(math.isfinite(n) for n in numbers):
        raise ConfigError(f"{what} must be finite numbers, got '{value}'")
    return numbers


def parse_ints(value: str | int | Iterable[Any] | None, what: str) -> tuple[int, ...] | None:
    """``"512"``, ``"96,96,96"``, ``"512x512"``, an int or a sequence as a tuple of ints."""
    if value is None:
        return None
    if isinstance(value, str):
        items: Iterable[Any] = parse_list(value.replace("x", ",")) or []
    else:
        items = _as_items(value)
    try:
        numbers = tuple(_whole(v) for v in items)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{what} takes whole numbers like 512 or 512,512, got '{_shown(value)}'"
        ) from None
    if not numbers:
        raise ConfigError(f"{what} takes whole numbers like 512 or 512,512, got nothing")
    return numbers


def parse_size(value: str | int | Iterable[Any] | None, what: str) -> Size | None:
    """A size for every axis (one int) or per axis (a tuple), each at least 1."""
    numbers = parse_ints(value, what)
    if numbers is None:
        return None
    if any(n < 1 for n in numbers):
        raise ConfigError(f"{what} must be at least 1, got {_shown(value)}")
    return numbers[0] if len(numbers) == 1 else numbers


def _as_items(value: Any) -> Iterable[Any]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, Iterable):
        return value
    raise TypeError(value)


def _whole(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(value)
    if isinstance(value, int):
        return value
    number = float(value)
    if not number.is_integer():
        raise ValueError(value)
    return int(number)


def _shown(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


class BlendMode(StrEnum):
    """How overlapping patch predictions are weighted."""

    GAUSSIAN = "gaussian"
    HANN = "hann"
    SPLINE = "spline"
    LINEAR = "linear"
    CONSTANT = "constant"
    CENTER = "center"  # "valid only": each pixel from the patch whose centre is nearest

    @classmethod
    def parse(cls, value: str | BlendMode) -> BlendMode:
        return parse_choice(cls, value, "blend mode")


class ProbabilityMode(StrEnum):
    """Whether class probabilities are stored, and how."""

    NONE = "none"
    UINT8 = "uint8"
    FLOAT16 = "float16"

    @classmethod
    def parse(cls, value: str | ProbabilityMode) -> ProbabilityMode:
        return parse_choice(cls, value, "probabilities")


class Resampling(StrEnum):
    """How a block of labels becomes one label of a coarser level."""

    MODE = "mode"  # most frequent valid label; ties: the first to reach that count (as GDAL)
    NEAREST = "nearest"  # the label at the block centre (GDAL's choice for a factor of 2)

    @classmethod
    def parse(cls, value: str | Resampling) -> Resampling:
        return parse_choice(cls, value, "resampling for labels")


LOCAL_SCHEDULERS = ("threads", "sync", "local")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def parse_scheduler(value: str) -> str:
    """threads, sync, local (a LocalCluster for the run) or a scheduler address."""
    text = str(value).strip()
    if "://" in text:
        return text
    lowered = text.lower()
    if lowered == "synchronous":
        return "sync"
    if lowered in LOCAL_SCHEDULERS:
        return lowered
    raise ConfigError(
        "scheduler must be threads, sync, local or an address like tcp://host:8786, "
        f"got '{value}'{did_you_mean(lowered, LOCAL_SCHEDULERS)}"
    )


def parse_device(value: str) -> str:
    """auto, cpu, cuda, cuda:N or mps; ``gpu`` / ``gpu:N`` (nnU-Net's word) mean cuda(:N)."""
    text = str(value).strip().lower()
    if text == "gpu" or text.startswith("gpu:"):
        text = "cuda" + text[3:]
    if not _DEVICE.match(text):
        hint = did_you_mean(text, ("auto", "cpu", "cuda", "mps"))
        raise ConfigError(
            f"device must be auto, cpu, cuda (gpu), cuda:N or mps, got '{value}'{hint}"
        )
    return text


ALL_DEVICES = "all"


def parse_devices(value: str | int | Iterable[Any] | None) -> tuple[str, ...] | None:
    """One worker's device each: ``"cuda:0,cuda:1"``, ``"0,1"``, ``"all"`` (every visible CUDA
    device, counted when the run starts) or ``"cpu,cpu"`` (CPU worker processes)."""
    if value is None:
        return None
    items = parse_list(value) if isinstance(value, str) else list(_as_items(value))
    names = tuple(_worker_device(item) for item in items or [])
    twice = [n for n in names if n.startswith("cuda") and names.count(n) > 1]
    mixed = "cpu" in names and set(names) != {"cpu"}
    if not names or mixed or (ALL_DEVICES in names and len(names) > 1):
        raise ConfigError(
            "devices takes cuda:0,cuda:1 (or 0,1), all, or cpu,cpu (CUDA devices and cpu "
            f"never mixed), got '{_shown(value)}'"
        )
    if twice:  # two model tasks on one GPU run it out of memory
        raise ConfigError(f"device {twice[0]} is named twice in devices; one worker per device")
    return names


def _worker_device(item: Any) -> str:
    text = str(item).strip().lower()
    if text.isdigit():
        return f"cuda:{int(text)}"
    device = parse_device(text) if _DEVICE.match(text.replace("gpu", "cuda")) else text
    if device not in (ALL_DEVICES, "cpu") and not re.fullmatch(r"cuda:\d+", device):
        raise ConfigError(
            f"devices takes CUDA devices (cuda:0,cuda:1, 0,1 or all) or cpu,cpu, got '{item}'"
        )
    return device


def _device_layout(o: RunOptions) -> dict[str, str]:
    """With ``devices``: the scheduler (a local cluster) and the device a worker's task names.

    Each worker sees only its own GPU, so inside it the device is plain ``cuda``.
    Options that say otherwise contradict ``devices`` and fail.
    """
    if not o.devices:
        return {}
    shown = ",".join(o.devices)
    if o.scheduler not in ("threads", "local"):  # threads: the default, unless the command says
        raise ConfigError(
            f"devices start one local worker per device; scheduler '{o.scheduler}' "
            f"contradicts devices {shown} (drop one of them)"
        )
    if o.workers is not None and o.devices != (ALL_DEVICES,) and o.workers != len(o.devices):
        raise ConfigError(
            f"workers {o.workers} contradicts devices {shown} (one worker per device); drop workers"
        )
    if o.threads_per_worker != 1:
        raise ConfigError(
            f"devices run one thread per device worker; drop threads per worker "
            f"({o.threads_per_worker})"
        )
    kind = "cpu" if o.devices[0] == "cpu" else "cuda"
    if o.device not in ("auto", kind):
        raise ConfigError(
            f"device '{o.device}' contradicts devices {shown}: each worker uses its own; "
            "drop device"
        )
    return {"scheduler": "local", "device": kind}


def parse_overlap(value: str | float) -> float | int:
    """A fraction of the patch (0 <= x < 1) or whole pixels (>= 1)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"overlap is a fraction below 1 (0.25) or whole pixels (64), got '{value}'"
        ) from None
    if not math.isfinite(number) or number < 0:
        raise ConfigError(f"overlap must be a finite number of at least 0, got '{value}'")
    if number < 1:
        return number
    if not number.is_integer():
        raise ConfigError(f"an overlap of 1 or more is whole pixels, got {value}")
    return int(number)


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in (
        "true",
        "yes",
        "on",
        "1",
        "false",
        "no",
        "off",
        "0",
    ):
        return value.lower() in ("true", "yes", "on", "1")
    raise ConfigError(f"{name} is true or false, got '{value}'")


def _number(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} takes a number, got '{value}'") from None
    return number


def _count(value: Any, name: str, minimum: int) -> int:
    """A whole number of at least ``minimum``."""
    try:
        number = _whole(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} takes a whole number, got '{value}'") from None
    if number < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {number}")
    return number


# options that change the output: recorded in the store's provenance and fingerprint
OUTPUT_OPTIONS = (
    "patch_size",
    "overlap",
    "blend",
    "sigma",
    "batch_size",
    "device",
    "amp",
    "tta",
    "chunk_size",
    "labels",
    "probabilities",
    "bands",
    "nodata",
    "volume",
    "volumes_as_channels",
    "slice_axis",
    "reorient",
)
# output options recorded only when set, so runs that never use them record what they did before
RECORDED_WHEN_SET = ("spacing", "resolution", "resample", "series", "uncertainty")
ZARR_FORMATS = (2, 3)


@dataclass(frozen=True)
class RunOptions:
    """Every option of a run, checked and normalized when built.

    The first group changes the output (and is recorded with it); the second
    says where and how the work runs, and never changes a bit of the output.
    """

    patch_size: Size | None = None  # None: the model's hint, else 512 (2-D) / 96 (3-D)
    overlap: float | int = 0.25  # a fraction (< 1) of the patch, or whole pixels (>= 1)
    blend: BlendMode = BlendMode.GAUSSIAN
    sigma: float = 0.125  # gaussian sigma, a fraction of the patch
    batch_size: int | None = None  # None: as many patches as fit the device's sweet spot
    device: str = "auto"
    amp: bool = True
    tta: bool = False
    chunk_size: Size | None = None  # None: 1024 (2-D) / 128 (3-D), aligned to the file's tiles
    labels: bool = True
    probabilities: ProbabilityMode = ProbabilityMode.NONE
    bands: tuple[int, ...] | None = None  # 1-based raster bands
    nodata: float | None = None  # overrides the file's nodata value
    volume: int | None = None  # 4-D NIfTI: the volume to segment
    volumes_as_channels: bool = False
    slice_axis: int | None = None  # 2-D model on a volume: the axis to slice along
    reorient: bool = True  # honour a model's canonical orientation (inverted before writing)
    spacing: tuple[float, ...] | None = None  # mm per model axis: overrides the model's spacing
    resolution: float | None = None  # metres per pixel: overrides the model's resolution
    resample: bool = True  # resample each region to the model's spacing/resolution
    series: str | None = None  # DICOM: the SeriesInstanceUID, where a folder holds several
    uncertainty: bool = False  # a uint8 array of the blend's normalized entropy
    # 2: raster stores GDAL (and so QGIS) opens; 3: Zarr v3 (OME-Zarr 0.5). Not in the
    # fingerprint: the store's layout records it, and a resume names a different one
    zarr_format: int = 3

    region_size: int | None = None  # edge of a task's region, in whole chunks
    scheduler: str = "threads"  # threads, sync, local or tcp://host:port
    workers: int | None = None  # threads (threaded) or processes (local)
    threads_per_worker: int = 1  # local cluster only
    # a local cluster of one worker process per device (cuda:0,cuda:1, all, or cpu,cpu)
    devices: tuple[str, ...] | None = None
    nifti: bool = False  # volumes: also export the labels as NIfTI next to the store

    # post-processing of each finished store into <name>_clean.zarr (see outputs.postprocess)
    keep_largest: tuple[str, ...] | None = None  # classes (names or values) to keep one of
    keep_top: int = 1  # keep this many of the largest components of those classes
    min_size: str | None = None  # smaller components become background: 100, 5mL, 0.5ha
    sieve: str | None = None  # smaller components merge into their neighbour
    fill: str = "0"  # the class removed components become
    connectivity: str = "full"  # full (8 / 26 neighbours) or face (4 / 6)

    def __post_init__(self) -> None:
        for name, value in _parsed(self).items():
            object.__setattr__(self, name, value)
        for name, value in _device_layout(self).items():
            object.__setattr__(self, name, value)
        if not (self.labels or self.uncertainty) and self.probabilities is ProbabilityMode.NONE:
            raise ConfigError("nothing to write: enable labels, probabilities or uncertainty")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, where: str = "") -> RunOptions:
        """Options from a mapping of option names; unknown names fail with a did-you-mean.

        ``None`` values mean "not given" and keep the default.
        """
        return cls().replace(where=where, **data)

    def replace(self, *, where: str = "", **changes: Any) -> RunOptions:
        """A copy with ``changes`` applied (``None`` keeps the current value)."""
        check_names(changes, OPTION_NAMES, where=where)
        given = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **given) if given else self

    def output_options(self) -> dict[str, Any]:
        """The options that change the output, JSON-friendly (provenance, fingerprint)."""
        recorded = {name: _plain(getattr(self, name)) for name in OUTPUT_OPTIONS}
        for name in RECORDED_WHEN_SET:
            value = getattr(self, name)
            if value != _DEFAULTS[name]:
                recorded[name] = _plain(value)
        return recorded

    def to_dict(self) -> dict[str, Any]:
        """Every option, JSON-friendly (flow parameters); ``from_mapping`` reads it back."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    @property
    def writes_probabilities(self) -> bool:
        return self.probabilities is not ProbabilityMode.NONE

    def postprocess_options(self) -> dict[str, Any] | None:
        """Keywords for ``outputs.postprocess.postprocess``, or None when nothing is asked."""
        if self.keep_largest is None and self.min_size is None and self.sieve is None:
            return None
        return {
            "keep_largest": list(self.keep_largest) if self.keep_largest else None,
            "keep_top": self.keep_top,
            "min_size": self.min_size,
            "sieve": self.sieve,
            "fill": self.fill,
            "connectivity": self.connectivity,
        }


OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in fields(RunOptions))
_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(RunOptions)}


def check_names(given: Iterable[str], known: Sequence[str], *, where: str = "") -> None:
    """A one-line ConfigError for the first name in ``given`` that is not ``known``."""
    for name in given:
        if name not in known:
            prefix = f"{where}: " if where else ""
            raise ConfigError(f"{prefix}unknown option '{name}'{did_you_mean(name, known)}")


def _parsed(options: RunOptions) -> dict[str, Any]:
    """Each field checked and in its one normal form."""
    o = options
    sigma = _number(o.sigma, "sigma")
    if not 0.0 < sigma <= 1.0:
        raise ConfigError(f"sigma is a fraction of the patch in (0, 1], got {o.sigma}")
    nodata = None if o.nodata is None else _number(o.nodata, "nodata")
    bands = parse_ints(o.bands, "bands")
    if bands is not None and any(b < 1 for b in bands):
        raise ConfigError(f"bands are numbered from 1, got {_shown(o.bands)}")
    slice_axis = None if o.slice_axis is None else _count(o.slice_axis, "slice axis", 0)
    if slice_axis is not None and slice_axis > 2:
        raise ConfigError(f"slice axis must be 0, 1 or 2, got {slice_axis}")
    return {
        "patch_size": parse_size(o.patch_size, "patch size"),
        "overlap": parse_overlap(o.overlap),
        "blend": BlendMode.parse(o.blend),
        "sigma": sigma,
        "batch_size": _optional_count(o.batch_size, "batch size", 1),
        "device": parse_device(o.device),
        "amp": _bool(o.amp, "amp"),
        "tta": _bool(o.tta, "tta"),
        "chunk_size": parse_size(o.chunk_size, "chunk size"),
        "labels": _bool(o.labels, "labels"),
        "probabilities": ProbabilityMode.parse(o.probabilities),
        "bands": bands,
        "nodata": nodata,
        "volume": _optional_count(o.volume, "volume", 0),
        "volumes_as_channels": _bool(o.volumes_as_channels, "volumes as channels"),
        "slice_axis": slice_axis,
        "reorient": _bool(o.reorient, "reorient"),
        "spacing": _sizes(o.spacing, "spacing"),
        "resolution": _positive(o.resolution, "resolution"),
        "resample": _bool(o.resample, "resample"),
        "series": None if o.series is None else _series_uid(o.series),
        "uncertainty": _bool(o.uncertainty, "uncertainty"),
        "zarr_format": parse_zarr_format(o.zarr_format),
        "region_size": _optional_count(o.region_size, "region size", 1),
        "scheduler": parse_scheduler(o.scheduler),
        "workers": _optional_count(o.workers, "workers", 1),
        "threads_per_worker": _count(o.threads_per_worker, "threads per worker", 1),
        "devices": parse_devices(o.devices),
        "nifti": _bool(o.nifti, "nifti"),
        **_postprocess_fields(o),
    }


def _sizes(value: Any, name: str) -> tuple[float, ...] | None:
    """Positive lengths (spacing in mm), one for every axis or one per axis."""
    numbers = parse_numbers(value, name)
    if numbers is not None and (not numbers or any(n <= 0 for n in numbers)):
        raise ConfigError(
            f"{name} takes positive numbers like 1.5 or 1.5,1.5,3, got '{_shown(value)}'"
        )
    return numbers


def parse_zarr_format(value: Any) -> int:
    """2 or 3 (also "v2", "v3")."""
    text = str(value).strip().lower().removeprefix("v")
    if text not in {str(f) for f in ZARR_FORMATS}:
        raise ConfigError(f"zarr format must be 2 (GDAL, QGIS) or 3 (the default), got '{value}'")
    return int(text)


def _positive(value: Any, name: str) -> float | None:
    if value is None:
        return None
    number = _number(value, name)
    if not 0 < number < math.inf:
        raise ConfigError(f"{name} must be a positive number, got '{value}'")
    return number


def _series_uid(value: Any) -> str:
    text = str(value).strip()
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)*", text) or len(text) > 64:
        raise ConfigError(f"series is a SeriesInstanceUID like 1.2.840.113619.2.55, got '{value}'")
    return text


CONNECTIVITIES = ("full", "face")


def _texts(value: Any) -> str | list[str]:
    return value if isinstance(value, str) else [str(v) for v in value]


def _postprocess_fields(o: RunOptions) -> dict[str, Any]:
    """The post-processing options in normal form (sizes and classes are checked against
    the store they apply to, by outputs.postprocess)."""
    connectivity = str(o.connectivity).strip().lower()
    if connectivity not in CONNECTIVITIES:
        raise ConfigError(
            f"connectivity must be full or face, got '{o.connectivity}'"
            f"{did_you_mean(connectivity, CONNECTIVITIES)}"
        )
    keep = None if o.keep_largest is None else tuple(parse_list(_texts(o.keep_largest)) or ())
    return {
        "keep_largest": keep or None,
        "keep_top": _count(o.keep_top, "keep top", 1),
        "min_size": None if o.min_size is None else str(o.min_size).strip(),
        "sieve": None if o.sieve is None else str(o.sieve).strip(),
        "fill": str(o.fill).strip(),
        "connectivity": connectivity,
    }


def _optional_count(value: Any, name: str, minimum: int) -> int | None:
    return None if value is None else _count(value, name, minimum)


def _plain(value: Any) -> Any:
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value


__all__ = [
    "ALL_DEVICES",
    "LOCAL_SCHEDULERS",
    "OPTION_NAMES",
    "OUTPUT_OPTIONS",
    "RECORDED_WHEN_SET",
    "BlendMode",
    "ProbabilityMode",
    "Resampling",
    "RunOptions",
    "Size",
    "check_names",
    "did_you_mean",
    "parse_choice",
    "parse_device",
    "parse_devices",
    "parse_ints",
    "parse_list",
    "parse_numbers",
    "parse_overlap",
    "parse_scheduler",
    "parse_size",
    "parse_zarr_format",
]
