"""The Prefect ``train`` flow: a recorded flow run that writes a model file."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from flows.train import config_from_params, config_to_params, train
from segflow.models import load_model
from segflow.samples import landcover_classes, make_landcover_scene
from segflow.train import AugmentConfig, TrainConfig


def _config(tmp_path: Path) -> TrainConfig:
    make_landcover_scene(tmp_path / "s.tif", tmp_path / "s_truth.tif", size=(128, 128), seed=3)
    return TrainConfig(
        images=[tmp_path / "s.tif"], masks=[tmp_path / "s_truth.tif"],
        output=tmp_path / "m.safetensors", classes=landcover_classes(), arch="unet2d",
        arch_kwargs={"depth": 2, "base_channels": 4}, patch_size=32, batch_size=2, epochs=1,
        steps_per_epoch=2, val_patches=2, stats_windows=2, threads=1, val_fraction=0.25,
        augment=AugmentConfig(rotate_axes=((0, 1),)), bands=(1, 2, 3, 4),
    )  # fmt: skip


def test_params_round_trip(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert config_from_params(config_to_params(config)) == config
    volume = replace(config, spacing=(1.5, 1.5, 3.0))  # JSON turns the tuple into a list
    assert config_from_params(json.loads(json.dumps(config_to_params(volume)))) == volume


def test_train_flow_writes_the_model(prefect_server: str, tmp_path: Path) -> None:
    config = _config(tmp_path)
    summary = train(config_to_params(config))
    assert summary["model"] == str(config.output) and summary["steps"] == 2
    meta = load_model(config.output).meta
    assert meta.num_classes == 4 and meta.resolution == 10.0
