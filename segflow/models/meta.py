"""Metadata carried by every segflow model file (JSON next to the weights).

This is the contract between training, model files and the engine: the engine
needs nothing but a model file to normalize inputs, size patches, name classes
and reorient volumes.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from segflow.io.classes import ClassInfo, default_colors
from segflow.io.concepts import Code, SegmentConcept
from segflow.options import did_you_mean

FORMAT_VERSION = 1

__all__ = [
    "FORMAT_VERSION",
    "ClassInfo",
    "Code",
    "ModelMeta",
    "Normalization",
    "SegmentConcept",
    "default_colors",
]


class Normalization(BaseModel):
    """Per-channel normalization: ``(x * scale + offset - mean) / std``.

    ``scale``/``offset`` bring raw values to physical units (e.g. 1/255, or
    reflectance), ``mean``/``std`` are the global training statistics.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: tuple[float, ...] | None = None
    offset: tuple[float, ...] | None = None
    clip: tuple[float, float] | None = None  # applied after scale/offset, before mean/std

    @model_validator(mode="after")
    def _lengths_match(self) -> Normalization:
        n = len(self.mean)
        for name in ("std", "scale", "offset"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"normalization.{name} has {len(value)} values, mean has {n}")
        if any(s <= 0 for s in self.std):
            raise ValueError("normalization.std must be positive")
        return self


class ModelMeta(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = FORMAT_VERSION
    arch: str  # registry name, e.g. "unet", "fcn8s", "unet3d"; "torchscript"/"onnx" for exports
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    spatial_dims: Literal[2, 3] = 2
    in_channels: int = Field(ge=1)
    band_names: tuple[str, ...] | None = None
    classes: tuple[ClassInfo, ...]
    normalization: Normalization | None = None
    output_stride: int = Field(default=32, ge=1)  # input sizes are padded to multiples of it
    patch_size: tuple[int, ...] | None = None  # hint, in model axes
    overlap: float | None = None  # hint, fraction of the patch
    orientation: str | None = None  # volumes: axis codes the model expects, e.g. "RAS"
    nodata_class: int | None = None  # class index the model uses for "no data", if any
    # the resolution the model was trained at; the engine resamples each region to it
    spacing: tuple[float, ...] | None = None  # volumes: mm per axis, in the model's axis order
    resolution: float | None = None  # rasters: ground metres per pixel
    # expected (low, high) per channel, in the units normalization's scale/offset give
    # (raw values without them): HU for CT, 0..1 for reflectance
    value_range: tuple[tuple[float, float], ...] | None = None
    # coded concepts (category and type) by class name, for DICOM SEG segments;
    # classes without one are described generically
    concepts: dict[str, SegmentConcept] | None = None
    provenance: dict[str, Any] = Field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @model_validator(mode="after")
    def _consistent(self) -> ModelMeta:
        if self.in_channels < 1:
            raise ValueError("in_channels must be at least 1")
        if len(self.classes) < 1:
            raise ValueError("a model needs at least one class")
        if self.normalization is not None and len(self.normalization.mean) != self.in_channels:
            raise ValueError(
                f"normalization has {len(self.normalization.mean)} channels, "
                f"in_channels is {self.in_channels}"
            )
        if self.band_names is not None and len(self.band_names) != self.in_channels:
            raise ValueError(
                f"band_names has {len(self.band_names)} names, in_channels is {self.in_channels}"
            )
        self._check_resolution()
        self._check_concepts()
        return self

    def _check_concepts(self) -> None:
        if not self.concepts:
            return
        names = [c.name for c in self.classes]
        for name in self.concepts:
            if name not in names:
                raise ValueError(
                    f"concepts name class {name!r}, which the model does not have"
                    f"{did_you_mean(name, names)}"
                )
            if name == names[0]:
                raise ValueError(
                    f"class {name!r} is class 0, the background, which has no segment; "
                    "give concepts for the other classes"
                )

    def concept_of(self, name: str) -> SegmentConcept | None:
        """The coded concept declared for class ``name``, if any."""
        return (self.concepts or {}).get(name)

    def _check_resolution(self) -> None:
        if self.spacing is not None:
            if len(self.spacing) != self.spatial_dims:
                raise ValueError(
                    f"spacing has {len(self.spacing)} values for a {self.spatial_dims}-D model"
                )
            if not all(0 < s < math.inf for s in self.spacing):
                raise ValueError(f"spacing must be positive, got {list(self.spacing)}")
        if self.resolution is not None and not 0 < self.resolution < math.inf:
            raise ValueError(f"resolution must be positive, got {self.resolution}")
        if self.value_range is not None:
            if len(self.value_range) != self.in_channels:
                raise ValueError(
                    f"value_range has {len(self.value_range)} ranges, "
                    f"in_channels is {self.in_channels}"
                )
            if any(not lo < hi for lo, hi in self.value_range):
                raise ValueError("each value_range is (low, high) with low < high")

    def describe_resolution(self) -> list[tuple[str, str]]:
        """(label, value) rows for the resolution and value range, where the model declares them."""
        rows = []
        if self.spacing is not None:
            rows.append(("spacing", " x ".join(f"{s:g}" for s in self.spacing) + " mm"))
        if self.resolution is not None:
            rows.append(("resolution", f"{self.resolution:g} m per pixel"))
        if self.value_range is not None:
            rows.append(
                ("value range", ", ".join(f"{lo:g}..{hi:g}" for lo, hi in self.value_range))
            )
        return rows

    def describe_concepts(self) -> list[tuple[str, str]]:
        """(label, value) rows: the coded concept of each class that declares one."""
        return [
            (f"concept {name}", concept.label()) for name, concept in (self.concepts or {}).items()
        ]
