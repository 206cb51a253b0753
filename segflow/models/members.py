"""The model files an ensemble names (files, or folders of fold models), and what its members
must share. No torch here, so the command and the flows check them before the heavy imports."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segflow.errors import ConfigError, ModelError
from segflow.models.meta import ModelMeta

MODEL_SUFFIXES = (".safetensors", ".pt", ".pth", ".ts", ".torchscript", ".onnx", ".ckpt")


def model_files(folder: Path) -> list[Path]:
    """The model files of a folder of fold models, by name (sidecars are not models)."""
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES and not p.name.startswith(".")
    )
    if not files:
        raise ConfigError(
            f"{folder} holds no model files ({', '.join(MODEL_SUFFIXES)}); "
            "pass model files or a folder of them"
        )
    return files


def member_files(paths: Sequence[Path]) -> list[Path]:
    """Every model file ``paths`` name, a folder expanded by name; a missing path is one line."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += model_files(path)
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"model file {path} not found; check the path")
    return files


def check_weights(weights: Sequence[float] | None, members: int) -> None:
    """One weight per member, non-negative and not all zero; a one-line ConfigError otherwise."""
    if weights is None:
        return
    if members < 2:
        raise ConfigError("weights are for ensembles; give them with two or more models")
    if len(weights) != members:
        raise ConfigError(
            f"{len(weights)} weights for {members} ensemble models; give one weight per model"
        )
    if not all(math.isfinite(w) and w >= 0 for w in weights) or not sum(weights):
        raise ConfigError(
            f"ensemble weights must be non-negative and not all zero, got {list(weights)}"
        )


def agreement(meta: ModelMeta) -> dict[str, Any]:
    """What every member of an ensemble must share, as it is shown in the error."""
    norm = meta.normalization
    return {
        "input channels": meta.in_channels,
        "band names": ", ".join(meta.band_names) if meta.band_names else None,
        "classes": ", ".join(c.name for c in meta.classes),
        "dimensions": f"{meta.spatial_dims}-D",
        "spacing": " x ".join(f"{s:g}" for s in meta.spacing) + " mm" if meta.spacing else None,
        "resolution": f"{meta.resolution:g} m" if meta.resolution else None,
        "normalization": norm.model_dump_json(exclude_none=True) if norm else None,
        "orientation": meta.orientation,
    }


def check_agreement(members: Sequence[tuple[str, ModelMeta]]) -> None:
    """A one-line ModelError naming the first thing two members (name, meta) disagree on."""
    (first_name, first_meta), rest = members[0], members[1:]
    first = agreement(first_meta)
    for name, meta in rest:
        other = agreement(meta)
        for what, value in first.items():
            if other[what] != value:
                raise ModelError(
                    f"ensemble models disagree on {what}: {first_name} has {value or 'none'} "
                    f"but {name} has {other[what] or 'none'}; ensemble only models trained "
                    "for the same task and data"
                )
