"""Fully convolutional networks (Long, Shelhamer & Darrell 2015) on any smp encoder.

* The classifier is convolutionalized: fully connected layers become 1x1
  convolutions, so any input size works and the output is a score map.
* Upsampling is learnable transposed convolution initialised to bilinear
  interpolation (kernel ``2f``, stride ``f``, padding ``f/2``: exact ``f``-times
  sizes, no cropping).
* The skip architecture: FCN-16s upsamples the stride-32 scores 2x and adds
  the scores of the stride-16 features before the final 16x upsampling; FCN-8s
  does the same once more with the stride-8 features. Skip scorers start at
  zero (as in the paper), so a fresh FCN-8s starts as its FCN-32s.

Input sizes must be multiples of 32 (the output stride); the predictor pads.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Variant = Literal["32s", "16s", "8s"]
_SKIPS: dict[str, int] = {"32s": 0, "16s": 1, "8s": 2}


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """``(C, C, k, k)`` weights of a transposed convolution that upsamples each channel bilinearly."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    grid = torch.arange(kernel_size, dtype=torch.float64)
    filt1d = 1 - (grid - center).abs() / factor
    filt = torch.outer(filt1d, filt1d).to(torch.float32)
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    for c in range(channels):
        weight[c, c] = filt
    return weight


def bilinear_upsampler(channels: int, factor: int) -> nn.ConvTranspose2d:
    """Learnable ``factor``-times upsampling, initialised to bilinear interpolation."""
    up = nn.ConvTranspose2d(
        channels, channels, kernel_size=2 * factor, stride=factor, padding=factor // 2, bias=False
    )
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, 2 * factor))
    return up


class SkipFusion(nn.Module):
    """Upsample coarser scores 2x and add the scores of a finer feature map."""

    def __init__(self, feature_channels: int, classes: int) -> None:
        super().__init__()
        self.up2 = bilinear_upsampler(classes, 2)
        self.score = nn.Conv2d(feature_channels, classes, kernel_size=1)
        with torch.no_grad():
            for param in self.score.parameters():
                param.zero_()

    def forward(self, coarse: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.up2(coarse) + self.score(feature)
        return out


class FCN(nn.Module):
    """FCN-32s / FCN-16s / FCN-8s; ``encoder`` is any smp encoder name (or ``tu-`` timm name)."""

    output_stride = 32

    def __init__(
        self,
        encoder: str = "resnet34",
        in_channels: int = 3,
        classes: int = 2,
        *,
        variant: Variant = "8s",
        head_channels: int = 512,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        from segmentation_models_pytorch.encoders import get_encoder

        if variant not in _SKIPS:
            raise ValueError(f"FCN variant must be one of 32s, 16s, 8s, got {variant!r}")
        self.variant = variant
        self.encoder = get_encoder(encoder, in_channels=in_channels, depth=5, weights=None)
        channels = list(self.encoder.out_channels)  # strides 1, 2, 4, 8, 16, 32
        # the paper's fc6/fc7 become 1x1 convolutions; score_fr gives per-class scores
        self.classifier = nn.Sequential(
            nn.Conv2d(channels[-1], head_channels, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(head_channels, head_channels, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(head_channels, classes, kernel_size=1),
        )
        n_skips = _SKIPS[variant]
        # fusion i adds the features of stride 32 / 2**(i+1): index -2 is stride 16, -3 stride 8
        self.fusions = nn.ModuleList(
            SkipFusion(channels[-(i + 2)], classes) for i in range(n_skips)
        )
        self.upsample = bilinear_upsampler(classes, 32 // 2**n_skips)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        score = self.classifier(features[-1])
        for i, fusion in enumerate(self.fusions):
            score = fusion(score, features[-(i + 2)])
        out: torch.Tensor = self.upsample(score)
        return out

    @torch.jit.unused
    def score_maps(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """Score maps keyed by their stride: 32, then each fused stage (16, 8), then 1 (output)."""
        features = self.encoder(x)
        score = self.classifier(features[-1])
        maps = {32: score}
        for i, fusion in enumerate(self.fusions):
            score = fusion(score, features[-(i + 2)])
            maps[32 // 2 ** (i + 1)] = score
        maps[1] = self.upsample(score)
        return maps
