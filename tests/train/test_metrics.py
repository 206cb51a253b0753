"""Metrics against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from segflow.errors import ConfigError
from segflow.train.metrics import (
    ConfusionMatrix,
    confusion_matrix,
    dice_per_class,
    iou_per_class,
    mean_iou,
    overall_accuracy,
)

# truth / prediction, 3 classes, one ignored pixel (255)
TRUTH = np.array([[0, 0, 1, 1], [1, 2, 2, 255]])
PRED = np.array([[0, 1, 1, 1], [2, 2, 0, 0]])


def test_confusion_matrix_by_hand() -> None:
    cm = confusion_matrix(PRED, TRUTH, 3, ignore_index=255)
    # rows truth, columns prediction
    expected = np.array([[1, 1, 0], [0, 2, 1], [1, 0, 1]])
    np.testing.assert_array_equal(cm, expected)


def test_iou_dice_miou_accuracy_by_hand() -> None:
    cm = confusion_matrix(PRED, TRUTH, 3, ignore_index=255)
    # class 0: tp 1, fp 1 (truth 2 -> 0), fn 1 -> IoU 1/3, Dice 2/4
    # class 1: tp 2, fp 1, fn 1 -> IoU 2/4, Dice 4/6
    # class 2: tp 1, fp 1, fn 1 -> IoU 1/3, Dice 2/4
    np.testing.assert_allclose(iou_per_class(cm), [1 / 3, 2 / 4, 1 / 3])
    np.testing.assert_allclose(dice_per_class(cm), [2 / 4, 4 / 6, 2 / 4])
    assert mean_iou(cm) == pytest.approx((1 / 3 + 1 / 2 + 1 / 3) / 3)
    assert overall_accuracy(cm) == pytest.approx(4 / 7)


def test_absent_class_is_nan_and_left_out_of_the_mean() -> None:
    cm = confusion_matrix([0, 0, 1], [0, 0, 1], 3)
    iou = iou_per_class(cm)
    assert iou[0] == 1 and iou[1] == 1 and math.isnan(iou[2])
    assert mean_iou(cm) == 1.0


def test_accumulator_equals_one_shot_and_reports_json() -> None:
    acc = ConfusionMatrix(3, ignore_index=255)
    acc.update(PRED[0], TRUTH[0])
    acc.update(PRED[1], TRUTH[1])
    np.testing.assert_array_equal(acc.matrix, confusion_matrix(PRED, TRUTH, 3, ignore_index=255))
    report = acc.report(["a", "b", "c"])
    assert report["pixels"] == 7
    assert report["iou"]["b"] == pytest.approx(0.5)
    assert report["miou"] == pytest.approx(mean_iou(acc.matrix), abs=1e-6)
    empty = ConfusionMatrix(2).report()
    assert empty["miou"] is None and empty["overall_accuracy"] is None


def test_out_of_range_values_are_refused() -> None:
    with pytest.raises(ConfigError, match="truth holds value 7"):
        confusion_matrix([0], [7], 3)
    with pytest.raises(ConfigError, match="prediction holds value 5"):
        confusion_matrix([5], [0], 3)
    with pytest.raises(ConfigError, match="differ in size"):
        confusion_matrix([0, 1], [0], 3)
