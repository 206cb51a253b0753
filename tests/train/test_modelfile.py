"""The written model file: hints, provenance, and float16 storage only when labels stay the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from segflow.models import new_model
from segflow.models.meta import Normalization
from segflow.train import TrainConfig
from segflow.train.augment import NO_AUGMENT
from segflow.train.batches import BatchMaker
from segflow.train.modelfile import build_meta, half_copy, storage_dtype
from segflow.train.sampling import PatchSampler, TrainPair, open_pair

from ..conftest import write_tif


@pytest.fixture
def maker(tmp_path: Path) -> BatchMaker:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (2, 64, 64)).astype(np.uint8)
    mask = (image[:1] > 127).astype(np.uint8)
    pair = TrainPair(write_tif(tmp_path / "a.tif", image), write_tif(tmp_path / "a_mask.tif", mask))
    sampler = PatchSampler([open_pair(pair)], 32, 2)
    return BatchMaker(sampler, Normalization(mean=(127.0, 127.0), std=(70.0, 70.0)), NO_AUGMENT)


def _config(tmp_path: Path, **kw: object) -> TrainConfig:
    return TrainConfig(images=[], masks=[], output=tmp_path / "m.safetensors", **kw)  # type: ignore[arg-type]


def test_float16_when_labels_survive_the_round_trip(maker: BatchMaker, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module, _ = new_model("unet2d", in_channels=2, classes=2, depth=1, base_channels=4)
    tiles = maker.sampler.tiles()
    dtype, agreement = storage_dtype(module.eval(), _config(tmp_path), maker, tiles)
    assert agreement is not None and 0.99 < agreement <= 1.0
    assert dtype == ("float16" if agreement >= 0.9999 else "float32")
    assert storage_dtype(module, _config(tmp_path, half=False), maker, tiles) == ("float32", None)
    half = half_copy(module)
    assert next(half.parameters()).dtype == torch.float16
    assert next(module.parameters()).dtype == torch.float32


def test_float32_when_half_precision_changes_labels(maker: BatchMaker, tmp_path: Path) -> None:
    class Fragile(torch.nn.Module):
        """Two classes whose scores differ by less than float16 can resolve."""

        def __init__(self) -> None:
            super().__init__()
            self.offset = torch.nn.Parameter(torch.tensor(1000.3))  # float16: 1000.5

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.offset + 1e-3 * x[:, :1]
            return torch.cat([a, torch.full_like(a, 1000.3)], dim=1)

    dtype, agreement = storage_dtype(Fragile(), _config(tmp_path), maker, maker.sampler.tiles())
    assert dtype == "float32" and agreement is not None and agreement < 0.9999


def test_build_meta_hints_and_provenance(maker: BatchMaker, tmp_path: Path) -> None:
    _, meta = new_model("unet2d", in_channels=2, classes=["a", "b"], depth=1, base_channels=4)
    norm = Normalization(mean=(1.0, 2.0), std=(1.0, 1.0))
    best = {"miou": 0.5, "epoch": 1, "metrics": {"miou": 0.5}}
    pairs = maker.sampler.pairs
    out = build_meta(meta, _config(tmp_path, seed=7), norm, (32, 32), 2, None, best, [], 10,
                     "epochs", pairs)  # fmt: skip
    assert out.patch_size == (512, 512) and out.overlap == 0.25 and out.normalization == norm
    prov = out.provenance
    assert prov["seed"] == 7 and prov["steps"] == 10 and prov["validation"] == {"miou": 0.5}
    assert prov["data"][0]["image_sha256"] == pairs[0].image.checksum()
    assert prov["config"]["output"].endswith("m.safetensors")
    three_d = build_meta(meta, _config(tmp_path, infer_patch=96), norm, (32, 32), 2, None, best,
                         [], 10, "epochs", pairs)  # fmt: skip
    assert three_d.patch_size == (96, 96)
