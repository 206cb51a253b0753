"""The training loop: the loss falls, the model file loads and runs through the engine,
resuming continues exactly, volumes train in 3-D and as slices, encoders freeze and transfer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from segflow import segment
from segflow.errors import ConfigError
from segflow.io.zarr_sink import ZarrSink
from segflow.models import load_model, new_model
from segflow.samples import landcover_classes, make_landcover_scene
from segflow.train import AugmentConfig, TrainConfig, train
from segflow.train.augment import NO_AUGMENT
from segflow.train.batches import BatchMaker
from segflow.train.losses import SegmentationLoss
from segflow.train.sampling import PatchSampler, TrainPair, open_pair
from segflow.train.stats import compute_normalization

from ..conftest import write_nifti

TINY_UNET = {"depth": 2, "base_channels": 4}


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("scene")
    make_landcover_scene(d / "s.tif", d / "s_truth.tif", size=(192, 160), seed=5)
    return d / "s.tif", d / "s_truth.tif"


def _config(scene: tuple[Path, Path], out: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = dict(
        images=[scene[0]], masks=[scene[1]], output=out, classes=landcover_classes(),
        arch="unet2d", arch_kwargs=TINY_UNET, patch_size=32, batch_size=2, epochs=2,
        steps_per_epoch=2, val_patches=4, stats_windows=4, threads=1, val_fraction=0.2,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_two_training_steps_lower_the_loss(scene: tuple[Path, Path]) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    pair = open_pair(TrainPair(*scene))
    sampler = PatchSampler([pair], 64, 4)
    norm = compute_normalization([pair.image], windows=4)
    x, y = BatchMaker(sampler, norm, NO_AUGMENT).random(np.random.default_rng(0), 4)
    module, _ = new_model("unet2d", in_channels=4, classes=4, **TINY_UNET)
    loss_fn = SegmentationLoss(4, dice_weight=0.5)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-2)
    losses = []
    for _ in range(3):
        loss = loss_fn(module(x), y)
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[2] < losses[1] < losses[0]


def test_trained_model_file_runs_through_the_engine(
    scene: tuple[Path, Path], tmp_path: Path
) -> None:
    epochs: list[int] = []
    result = train(
        _config(scene, tmp_path / "m.safetensors"), on_epoch=lambda r: epochs.append(r.epoch)
    )
    assert epochs == [1, 2] and result.steps == 4 and result.stopped == "epochs"
    loaded = load_model(result.model_path)
    meta = loaded.meta
    assert [c.name for c in meta.classes] == ["water", "forest", "field", "urban"]
    assert meta.classes[0].color == (30, 100, 200)
    assert meta.normalization is not None and len(meta.normalization.mean) == 4
    assert meta.band_names == ("blue", "green", "red", "nir")
    assert meta.patch_size == (512, 512)
    prov = meta.provenance
    assert prov["seed"] == 0 and prov["epochs"] == 2 and prov["steps"] == 4
    assert prov["data"][0]["image"].endswith("s.tif") and "miou" in prov["validation"]
    assert prov["weights_dtype"] in ("float16", "float32")
    out = segment(scene[0], loaded, tmp_path / "out.zarr", patch_size=64, workers=1)
    assert not isinstance(out, list) and out.status == "complete"
    labels = ZarrSink.open(tmp_path / "out.zarr").read_labels()
    assert labels.shape == (192, 160) and int(labels.max()) < 4


def test_resume_continues_exactly(scene: tuple[Path, Path], tmp_path: Path) -> None:
    whole = train(_config(scene, tmp_path / "a.safetensors", half=False))
    first = train(_config(scene, tmp_path / "b.safetensors", epochs=1, half=False))
    assert first.epochs == 1
    resumed = train(_config(scene, tmp_path / "b.safetensors", resume=True, half=False))
    assert resumed.epochs == 2 and resumed.steps == whole.steps
    a = load_model(whole.model_path).module.state_dict()
    b = load_model(resumed.model_path).module.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="other data or settings"):
        train(_config(scene, tmp_path / "b.safetensors", resume=True, batch_size=3))


def test_early_stopping_and_time_limit(scene: tuple[Path, Path], tmp_path: Path) -> None:
    out = train(_config(scene, tmp_path / "t.safetensors", epochs=5, time_limit_s=1e-3))
    assert out.stopped == "time_limit" and out.epochs == 1 and out.steps == 1
    stopped = train(
        _config(scene, tmp_path / "e.safetensors", epochs=6, patience=1, min_delta=10.0, lr=1e-9)
    )
    assert stopped.stopped == "early_stopping" and stopped.epochs == 2


def test_frozen_encoder_warm_up(scene: tuple[Path, Path], tmp_path: Path) -> None:
    from segflow.train.checkpoint import LAST, model_state, read_tensors

    config = _config(scene, tmp_path / "f.safetensors", freeze_encoder_epochs=1, epochs=2,
                     checkpoint_dir=tmp_path / "ck", half=False)  # fmt: skip
    snapshots: list[dict[str, torch.Tensor]] = []

    def grab(_: object) -> None:  # runs before the epoch's own checkpoint: sees the one before
        if (tmp_path / "ck" / LAST).exists():
            snapshots.append(model_state(read_tensors(tmp_path / "ck" / LAST)))

    result = train(config, on_epoch=grab)
    assert result.history[0].frozen_encoder and not result.history[1].frozen_encoder
    torch.manual_seed(config.seed)  # the same initial weights as the run
    init, _ = new_model("unet2d", in_channels=4, classes=4, **TINY_UNET)
    start = init.state_dict()
    after_frozen = snapshots[0]
    encoder = [k for k in start if k.startswith("down.")]
    decoder = [k for k in start if k.startswith(("up.", "head.")) and k.endswith("weight")]
    assert all(torch.equal(after_frozen[k], start[k]) for k in encoder)  # incl. BN statistics
    assert any(not torch.equal(after_frozen[k], start[k]) for k in decoder)
    last = model_state(read_tensors(tmp_path / "ck" / LAST))  # after the unfrozen epoch
    assert not torch.equal(last["down.0.0.weight"], start["down.0.0.weight"])


def test_volumes_in_3d_and_as_slices(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = np.zeros((24, 24, 16), dtype=np.uint8)
    labels[6:18, 6:18, 4:12] = 1
    image = (labels.astype(np.int16) * 300 + rng.normal(0, 20, labels.shape)).astype(np.int16)
    lps = np.diag([-2.0, -2.0, 2.0, 1.0])
    img = write_nifti(tmp_path / "ct.nii.gz", image, lps)
    lab = write_nifti(tmp_path / "ct_label.nii.gz", labels, lps)
    common = dict(images=[img], masks=[lab], classes=None, epochs=1, steps_per_epoch=2,
                  batch_size=2, val_fraction=0.25, stats_windows=2, threads=1)  # fmt: skip
    three_d = train(TrainConfig(output=tmp_path / "v3.safetensors", arch="unet3d",
                                arch_kwargs={"depth": 1, "base_channels": 4}, patch_size=16,
                                **common))  # type: ignore[arg-type]  # fmt: skip
    meta3 = load_model(three_d.model_path).meta
    assert meta3.spatial_dims == 3 and meta3.orientation == "LPS" and meta3.num_classes == 2
    assert meta3.band_names is None
    out3 = segment(img, three_d.model_path, tmp_path / "v3.zarr", workers=1)
    assert not isinstance(out3, list) and out3.status == "complete"

    slices = train(TrainConfig(output=tmp_path / "v2.safetensors", arch="unet2d",
                               arch_kwargs=TINY_UNET, patch_size=24, slice_axis=2,
                               **common))  # type: ignore[arg-type]  # fmt: skip
    meta2 = load_model(slices.model_path).meta
    assert meta2.spatial_dims == 2 and meta2.provenance["slice_axis"] == 2
    out2 = segment(img, slices.model_path, tmp_path / "v2.zarr", slice_axis=2, workers=1)
    assert not isinstance(out2, list) and out2.status == "complete"
    assert ZarrSink.open(tmp_path / "v2.zarr").read_labels().shape == (24, 24, 16)


def test_transfer_learning_from_local_encoder_weights(
    scene: tuple[Path, Path], tmp_path: Path
) -> None:
    kwargs = {"encoder_depth": 3, "decoder_channels": [16, 8, 4]}
    donor, _ = new_model("unet", encoder="resnet18", in_channels=3, classes=2, **kwargs)
    weights = tmp_path / "resnet18_rgb.safetensors"
    save_file({k: v.contiguous() for k, v in donor.encoder.state_dict().items()}, str(weights))
    logs: list[str] = []
    result = train(
        _config(scene, tmp_path / "tl.safetensors", arch="unet", encoder="resnet18",
                arch_kwargs=kwargs, encoder_weights=weights, freeze_encoder_epochs=1,
                epochs=1, steps_per_epoch=1, augment=AugmentConfig(rotate90=False)),
        log=logs.append,
    )  # fmt: skip
    assert any("matched" in line and "adapted" in line for line in logs)  # 3 -> 4 bands
    assert load_model(result.model_path).meta.arch == "unet"
    with pytest.raises(ConfigError, match="no encoder to freeze"):
        train(_config(scene, tmp_path / "x.safetensors", arch="pixel", arch_kwargs={},
                      freeze_encoder_epochs=1))  # fmt: skip
