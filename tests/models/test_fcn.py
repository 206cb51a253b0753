from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from segflow.models import create_model
from segflow.models.fcn import FCN, bilinear_kernel, bilinear_upsampler
from tests.models.tiny import ENCODER


def _fcn(arch: str, classes: int = 3) -> Any:
    model = create_model(arch, encoder=ENCODER, classes=classes, head_channels=16)
    assert isinstance(model, FCN)
    return model.eval()


def test_bilinear_kernel_is_separable_triangle() -> None:
    w = bilinear_kernel(2, 4)
    assert w.shape == (2, 2, 4, 4)
    tri = torch.tensor([0.25, 0.75, 0.75, 0.25])
    torch.testing.assert_close(w[0, 0], torch.outer(tri, tri))
    torch.testing.assert_close(w[1, 1], torch.outer(tri, tri))
    assert w[0, 1].abs().sum() == 0  # each class upsampled on its own


@pytest.mark.parametrize("factor", [2, 8, 16, 32])
def test_initial_upsampling_is_bilinear_interpolation(factor: int) -> None:
    up = bilinear_upsampler(2, factor)
    assert up.weight.requires_grad  # learnable
    x = torch.randn(1, 2, 5, 6)
    with torch.no_grad():
        got = up(x)
    assert got.shape == (1, 2, 5 * factor, 6 * factor)
    ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    # identical away from the border (the transposed convolution zero-pads outside)
    m = factor
    torch.testing.assert_close(got[..., m:-m, m:-m], ref[..., m:-m, m:-m], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("arch", "strides"),
    [("fcn32s", [32, 1]), ("fcn16s", [32, 16, 1]), ("fcn8s", [32, 16, 8, 1])],
)
def test_fusion_stages_shapes_and_strides(arch: str, strides: list[int]) -> None:
    model = _fcn(arch, classes=5)
    h, w = 96, 160
    with torch.no_grad():
        maps = model.score_maps(torch.randn(2, 3, h, w))
        out = model(torch.randn(2, 3, h, w))
    assert list(maps) == strides
    for stride, score in maps.items():
        assert score.shape == (2, 5, h // stride, w // stride), stride
    assert out.shape == (2, 5, h, w)
    assert len(model.fusions) == len(strides) - 2
    expected_up = {"fcn32s": 32, "fcn16s": 16, "fcn8s": 8}[arch]
    assert model.upsample.stride == (expected_up, expected_up)
    assert model.upsample.kernel_size == (2 * expected_up, 2 * expected_up)


def test_classifier_is_convolutional_and_skips_start_at_zero() -> None:
    model = _fcn("fcn8s")
    convs = [m for m in model.classifier if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 3 and all(c.kernel_size == (1, 1) for c in convs)
    for fusion in model.fusions:
        assert fusion.score.kernel_size == (1, 1)
        assert fusion.score.weight.abs().sum() == 0 and fusion.score.bias.abs().sum() == 0
    # the stride-16 fusion scores the stride-16 features, the next one the stride-8 features
    channels = model.encoder.out_channels
    assert model.fusions[0].score.in_channels == channels[-2]
    assert model.fusions[1].score.in_channels == channels[-3]


def test_scores_at_each_stage_combine_as_described() -> None:
    model = _fcn("fcn16s")
    with torch.no_grad():
        model.fusions[0].score.weight.normal_()
        x = torch.randn(1, 3, 64, 64)
        feats = model.encoder(x)
        s32 = model.classifier(feats[-1])
        s16 = model.fusions[0].up2(s32) + model.fusions[0].score(feats[-2])
        torch.testing.assert_close(model(x), model.upsample(s16))


def _shapes(n: int, size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ellipses and rectangles on noise; label 1 inside a shape."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        for _ in range(3):
            cy, cx = torch.randint(8, size - 8, (2,), generator=gen).tolist()
            ry, rx = torch.randint(4, 14, (2,), generator=gen).tolist()
            if torch.rand(1, generator=gen).item() < 0.5:
                inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            else:
                inside = ((yy - cy).abs() <= ry) & ((xx - cx).abs() <= rx)
            masks[i][inside] = 1
    x = masks[:, None].float().repeat(1, 3, 1, 1) * 2 - 1
    return x + 0.3 * torch.randn(n, 3, size, size, generator=gen), masks


def _boundary(masks: torch.Tensor, width: int = 2) -> torch.Tensor:
    m = masks[:, None].float()
    k = 2 * width + 1
    dilated = F.max_pool2d(m, k, 1, width)
    eroded = -F.max_pool2d(-m, k, 1, width)
    return (dilated != eroded)[:, 0]


def _train_and_score(arch: str, steps: int = 30) -> float:
    torch.manual_seed(0)
    model = create_model(arch, encoder=ENCODER, classes=2, head_channels=32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(steps):
        x, y = _shapes(8, 64, gen)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = _shapes(16, 64, torch.Generator().manual_seed(123))
    with torch.no_grad():
        pred = model.eval()(x).argmax(1)
    band = _boundary(y)
    return float((pred[band] == y[band]).float().mean())


def test_fcn8s_beats_fcn32s_on_boundaries() -> None:
    """Same data, seed, steps and optimizer: the skips buy boundary accuracy."""
    acc32 = _train_and_score("fcn32s")
    acc8 = _train_and_score("fcn8s")
    assert acc8 > acc32 + 0.05, (acc8, acc32)
