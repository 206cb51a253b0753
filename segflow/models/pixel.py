"""Per-pixel classifiers: 1x1 (or 1x1x1) convolutions, no spatial context.

A spectral baseline for multiband rasters (each pixel classified from its
band values alone), and the cheapest possible model, which makes it the
reference for measuring everything in the pipeline except the network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class PixelClassifier(nn.Module):
    """``in_channels -> hidden... -> classes`` with ReLU between pointwise convolutions."""

    def __init__(
        self,
        in_channels: int,
        classes: int,
        hidden: Sequence[int] = (),
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        layers: list[nn.Module] = []
        width = in_channels
        for h in hidden:
            layers += [conv(width, h, kernel_size=1), nn.ReLU(inplace=True)]
            width = h
        layers.append(conv(width, classes, kernel_size=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # oneDNN is slow for pointwise convolutions over few channels (about 30x here);
        # ATen's own kernel reduces them to one matrix product per image
        # (torch.backends.mkldnn.flags would also reset unrelated TF32 settings)
        enabled = torch._C._get_mkldnn_enabled()
        torch._C._set_mkldnn_enabled(False)
        try:
            return self.net(x)
        finally:
            torch._C._set_mkldnn_enabled(enabled)
