"""The predictor turns patches with the same AxisTransform the readers use, and back exactly."""

from __future__ import annotations

import itertools

import numpy as np
import torch

from segflow.io.orientation import AxisTransform, apply_transform
from segflow.models.predictor import from_model_axes, to_model_axes


def test_tensor_axes_match_the_array_transform_and_invert_exactly() -> None:
    x = torch.arange(2 * 3 * 4 * 5 * 6, dtype=torch.float32).reshape(2, 3, 4, 5, 6)
    for perm in itertools.permutations(range(3)):
        for flip in itertools.product((False, True), repeat=3):
            t = AxisTransform(perm=perm, flip=flip)
            turned = to_model_axes(x, t)
            expected = apply_transform(x.numpy(), t, leading=2)
            np.testing.assert_array_equal(turned.numpy(), expected)
            assert torch.equal(from_model_axes(turned, t), x)
