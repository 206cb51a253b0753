"""Per-pixel classifiers: 1x1 (or 1x1x1) convolutions, no spatial context.

A spectral baseline for multiband rasters (each pixel classified from its
band values alone), and the cheapest possible model, which makes it the
reference for measuring everything in the pipeline except the network.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

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
        with _aten_convolutions():
            out: torch.Tensor = self.net(x)
        return out


_ATEN_USERS = 0
_ATEN_LOCK = threading.Lock()
_MKLDNN_BEFORE = True


@contextlib.contextmanager
def _aten_convolutions() -> Iterator[None]:
    """Use ATen's convolution kernel instead of oneDNN's while any pixel model runs.

    oneDNN is slow for pointwise convolutions over few channels (about 30x
    here); ATen's reduces them to one matrix product per image. The switch is
    process-wide, so it is counted: a forward that ends first must not switch
    oneDNN back on under another thread's forward (that would change its
    kernel, and so its last bits, halfway). torch.backends.mkldnn.flags would
    also reset unrelated TF32 settings.
    """
    global _ATEN_USERS, _MKLDNN_BEFORE
    with _ATEN_LOCK:
        if _ATEN_USERS == 0:
            _MKLDNN_BEFORE = torch._C._get_mkldnn_enabled()
            torch._C._set_mkldnn_enabled(False)
        _ATEN_USERS += 1
    try:
        yield
    finally:
        with _ATEN_LOCK:
            _ATEN_USERS -= 1
            if _ATEN_USERS == 0:
                torch._C._set_mkldnn_enabled(_MKLDNN_BEFORE)
