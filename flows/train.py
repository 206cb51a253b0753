"""The ``train`` flow: one recorded Prefect flow run per training, a thin wrapper over segflow.train.

The whole training is one Prefect task (per-step tasks would flood the server);
each epoch is logged through Prefect's logger, and the final validation
scores are published as a markdown artifact. Parameters are a plain dict of
:class:`segflow.train.TrainConfig` fields (paths as strings), so a deployment
can carry them as JSON.
"""

from __future__ import annotations

import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # offline: no analytics calls

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from segflow.errors import ConfigError
from segflow.models.meta import ClassInfo
from segflow.train.augment import AugmentConfig
from segflow.train.config import TrainConfig

_PATH_LISTS = ("images", "masks", "val_images", "val_masks")
_PATHS = ("output", "encoder_weights", "checkpoint_dir")
_TUPLES = ("bands", "scale", "offset", "clip_percentiles", "spacing")


def config_to_params(config: TrainConfig) -> dict[str, Any]:
    """A JSON-able dict of the config (what the flow run records as its parameters)."""
    data = asdict(config)
    for key in _PATH_LISTS:
        data[key] = [str(p) for p in data[key]]
    for key in _PATHS:
        data[key] = None if data[key] is None else str(data[key])
    if config.classes is not None:
        data["classes"] = [c.model_dump(mode="json") for c in config.classes]
    return data


def config_from_params(params: dict[str, Any]) -> TrainConfig:
    """Rebuild a TrainConfig from :func:`config_to_params` output; unknown keys are refused."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"unknown training parameters: {', '.join(unknown)}")
    data = dict(params)
    for key in _PATH_LISTS:
        if key in data:
            data[key] = [Path(p) for p in data[key]]
    for key in _PATHS:
        if data.get(key) is not None:
            data[key] = Path(data[key])
    for key in _TUPLES:
        if data.get(key) is not None:
            data[key] = tuple(data[key])
    if isinstance(data.get("augment"), dict):
        aug = dict(data["augment"])
        if aug.get("rotate_axes") is not None:
            aug["rotate_axes"] = tuple(tuple(p) for p in aug["rotate_axes"])
        data["augment"] = AugmentConfig(**aug)
    if data.get("classes") is not None:
        data["classes"] = [
            c if isinstance(c, ClassInfo) else ClassInfo.model_validate(c) for c in data["classes"]
        ]
    return TrainConfig(**data)


@task(name="train-model", cache_policy=NO_CACHE, persist_result=False)
def train_model(params: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`segflow.train.train`; returns a JSON-able summary."""
    from segflow.train.loop import train

    logger = get_run_logger()
    config = config_from_params(params)
    return train(config, log=logger.info).summary()


def _markdown(summary: dict[str, Any]) -> str:
    metrics = summary.get("metrics") or {}
    lines = [
        f"# Trained {Path(summary['model']).name}",
        "",
        f"{summary['epochs']} epochs, {summary['steps']} steps, best epoch "
        f"{summary['best_epoch']}, stopped by {summary['stopped']}, {summary['seconds']:.0f} s",
        "",
        "| class | IoU | Dice |",
        "|---|---|---|",
    ]
    for name, iou in (metrics.get("iou") or {}).items():
        dice = (metrics.get("dice") or {}).get(name)
        lines.append(f"| {name} | {iou} | {dice} |")
    lines += ["", f"mIoU {metrics.get('miou')}, overall accuracy {metrics.get('overall_accuracy')}"]
    return "\n".join(lines)


@flow(name="train", description="Train a segmentation model and write a segflow model file.",
      validate_parameters=False)  # fmt: skip
def train(params: dict[str, Any]) -> dict[str, Any]:
    """Train from a dict of TrainConfig fields; publishes the validation scores as an artifact."""
    summary = train_model(params)
    create_markdown_artifact(
        markdown=_markdown(summary), key="segflow-training", description="validation scores"
    )
    return summary


def train_flow(config: TrainConfig) -> dict[str, Any]:
    """Run the ``train`` flow for ``config`` (what ``segflow train --flow`` calls)."""
    return train(config_to_params(config))
