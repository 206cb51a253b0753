"""Losses: cross-entropy with ignore index, Dice, class weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segflow.errors import ConfigError
from segflow.train.losses import SegmentationLoss, class_weights_from_counts, soft_dice_loss


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, generator=g)
    target = torch.randint(0, 3, (2, 8, 8), generator=g)
    target[:, :2] = 255
    return logits, target


def test_cross_entropy_matches_torch_over_valid_pixels() -> None:
    logits, target = _batch()
    loss = SegmentationLoss(3)(logits, target)
    valid = target != 255
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[valid], target[valid])
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_ignored_pixels_do_not_matter() -> None:
    logits, target = _batch()
    fn = SegmentationLoss(3, dice_weight=1.0)
    changed = logits.clone()
    changed[:, :, :2] = 100.0 * torch.randn_like(changed[:, :, :2])
    assert float(fn(logits, target)) == pytest.approx(float(fn(changed, target)), rel=1e-6)


def test_dice_is_zero_for_a_perfect_prediction_and_large_for_a_wrong_one() -> None:
    target = torch.tensor([[[0, 1], [2, 255]]])
    perfect = F.one_hot(torch.tensor([[[0, 1], [2, 0]]]), 3).permute(0, 3, 1, 2).float() * 50
    assert float(soft_dice_loss(perfect, target, ignore_index=255)) == pytest.approx(0.0, abs=1e-6)
    wrong = F.one_hot(torch.tensor([[[1, 2], [0, 0]]]), 3).permute(0, 3, 1, 2).float() * 50
    assert float(soft_dice_loss(wrong, target, ignore_index=255)) > 0.5


def test_class_weights_change_the_loss_like_torch() -> None:
    logits, target = _batch()
    weights = [1.0, 2.0, 0.5]
    loss = SegmentationLoss(3, class_weights=weights)(logits, target)
    expected = F.cross_entropy(logits, target, weight=torch.tensor(weights), ignore_index=255)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_all_ignored_batch_gives_zero_with_a_graph() -> None:
    logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    loss = SegmentationLoss(2)(logits, torch.full((1, 4, 4), 255))
    loss.backward()
    assert float(loss.detach()) == 0.0 and logits.grad is not None


def test_class_weights_from_counts() -> None:
    w = class_weights_from_counts([900, 100, 0])
    assert w[2] == 1.0  # never seen
    assert w[1] / w[0] == pytest.approx(3.0)  # sqrt(900 / 100)
    assert (w[0] + w[1]) / 2 == pytest.approx(1.0)


def test_bad_settings_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="is a class index"):
        SegmentationLoss(3, ignore_index=1)
    with pytest.raises(ConfigError, match="2 class weights for 3 classes"):
        SegmentationLoss(3, class_weights=[1.0, 2.0])
    with pytest.raises(ConfigError, match="not both 0"):
        SegmentationLoss(3, ce_weight=0.0, dice_weight=0.0)
