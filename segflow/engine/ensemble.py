"""Several models run as one: each patch is cut once, every member predicts it, and their
softmax probabilities are averaged (optionally weighted) before the blend.

The members must agree on what the engine does once for all of them: the input
channels and how they are normalized, the classes, the spacing or resolution,
the dimensions and the orientation. The blend then sums probabilities, not
logits; labels are the argmax of the blended mean and stored probabilities are
the mean itself (no second softmax).

The softmax is written out elementwise (``softmax``) rather than calling
``torch.softmax``, whose kernel rounds a value differently depending on where
it lies in the tensor: a patch's probabilities are then the same in every
batch and region, as chunk invariance needs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import torch

from segflow.engine.blend import softmax
from segflow.errors import ConfigError
from segflow.models.files import LoadedModel, load_model
from segflow.models.members import MODEL_SUFFIXES, check_agreement, check_weights, model_files
from segflow.models.meta import ModelMeta
from segflow.models.predictor import Predictor

ModelLike = str | os.PathLike[str] | LoadedModel
Scores = Literal["logits", "probabilities"]


@dataclass(frozen=True)
class Ensemble:
    """Models whose averaged softmax probabilities are one prediction."""

    members: tuple[LoadedModel, ...]
    weights: tuple[float, ...] | None = None  # None: equal weights

    def __post_init__(self) -> None:
        if len(self.members) < 2:
            raise ConfigError("an ensemble needs at least two models")
        check_weights(self.weights, len(self.members))
        check_members(self.members)

    @cached_property
    def meta(self) -> ModelMeta:
        """The members' shared metadata (the first's), padded to every member's stride."""
        first = self.members[0].meta
        stride = math.lcm(*(m.meta.output_stride for m in self.members))
        return first.model_copy(update={"output_stride": stride})

    @property
    def path(self) -> None:
        return None

    @property
    def runtime(self) -> str:
        return "ensemble"

    @cached_property
    def sha256(self) -> str:
        """Of the members' files and the weights: what a resumed run must share."""
        payload = {"members": [m.sha256 for m in self.members], "weights": self.weights}
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()

    def member_weights(self) -> tuple[float, ...]:
        return self.weights or (1.0,) * len(self.members)

    def describe(self) -> dict[str, Any]:
        """The members (paths and sha256) and weights, for the store's provenance."""
        return {
            "members": [
                {
                    "path": str(m.path) if m.path else None,
                    "sha256": m.sha256,
                    "arch": m.meta.arch,
                    "runtime": m.runtime,
                }
                for m in self.members
            ],
            "weights": list(self.member_weights()),
        }


def _name(model: LoadedModel, index: int) -> str:
    return model.path.name if model.path is not None else f"model {index + 1}"


def check_members(members: Sequence[LoadedModel]) -> None:
    """A one-line ModelError naming the first thing two members disagree on."""
    check_agreement([(_name(m, i), m.meta) for i, m in enumerate(members)])


def _expand(model: ModelLike) -> list[ModelLike]:
    if isinstance(model, LoadedModel):
        return [model]
    path = Path(model)
    return list(model_files(path)) if path.is_dir() else [path]


def load_models(
    model: ModelLike | Ensemble | Sequence[ModelLike], weights: Sequence[float] | None = None
) -> LoadedModel | Ensemble:
    """One model, or an ensemble of several: files, folders of files or loaded models.

    A single model file (or a folder holding one) loads exactly as ``load_model``.
    """
    if isinstance(model, Ensemble):
        if weights is None:
            return model
        return Ensemble(model.members, tuple(float(w) for w in weights))
    given = [model] if isinstance(model, str | os.PathLike | LoadedModel) else list(model)
    found = [m for item in given for m in _expand(item)]
    if not found:
        raise ConfigError("no model given: pass a model file, several, or a folder of them")
    # absolute before anything leaves this process: cluster workers have other working folders
    loaded = [m if isinstance(m, LoadedModel) else load_model(Path(m).absolute()) for m in found]
    if len(loaded) == 1:
        if weights is not None:
            raise ConfigError("weights are for ensembles; give them with two or more models")
        return loaded[0]
    return Ensemble(tuple(loaded), None if weights is None else tuple(float(w) for w in weights))


class EnsemblePredictor:
    """``(N, C, *patch)`` -> the members' weighted mean probabilities ``(N, K, *patch)``."""

    def __init__(self, predictors: Sequence[Predictor], weights: Sequence[float]) -> None:
        self._predictors = list(predictors)
        self.device = self._predictors[0].device
        self._weights = [float(w) for w in weights]
        self._total = float(sum(self._weights))

    def __call__(self, batch: torch.Tensor, *, on_device: bool = False) -> torch.Tensor:
        mean: torch.Tensor | None = None
        for predictor, weight in zip(self._predictors, self._weights, strict=True):
            weighted = softmax(predictor(batch, on_device=on_device)).mul_(weight)
            mean = weighted if mean is None else mean.add_(weighted)
        assert mean is not None
        return mean.div_(self._total)

    def launch(self, batch: torch.Tensor) -> torch.Tensor:
        """The whole call (each member's output is finished before it is averaged)."""
        return self(batch, on_device=self.device.type != "cpu")

    def finish(
        self,
        scores: torch.Tensor,
        spatial: int,
        *,
        on_device: bool = False,
        contiguous: bool = True,
    ) -> torch.Tensor:
        """``launch``'s output, on the CPU unless ``on_device`` (the mean is contiguous)."""
        assert scores.ndim == spatial + 2
        return scores if on_device else scores.cpu()


__all__ = [
    "MODEL_SUFFIXES",
    "Ensemble",
    "EnsemblePredictor",
    "Scores",
    "check_members",
    "load_models",
    "model_files",
    "softmax",
]
