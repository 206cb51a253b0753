"""U-Net as in the paper (Ronneberger et al. 2015), in 2-D and 3-D (Çiçek et al. 2016).

A contracting path whose width doubles at every level, an expanding path that
halves it again through learnable up-convolutions, and skip connections that
concatenate the contracting features with the upsampled ones. Two departures
from the 2015 paper, both standard since: convolutions are padded ("same") so
the output has the input's size instead of shrinking by 184 pixels, and a
normalization layer follows each convolution (the 3-D U-Net paper's batch
norm; "none" gives the original 2015 block). Input sizes must be multiples of
``2**depth`` (the model's output stride); the predictor pads to it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

Norm = Literal["batch", "instance", "none"]

# torch.jit's checks are untyped for mypy; TorchScript resolves these aliases to the builtins
_is_scripting: Callable[[], bool] = torch.jit.is_scripting  # type: ignore[attr-defined]
_is_tracing: Callable[[], bool] = torch.jit.is_tracing  # type: ignore[attr-defined]


def _conv(spatial_dims: int) -> type[nn.Conv2d] | type[nn.Conv3d]:
    return nn.Conv3d if spatial_dims == 3 else nn.Conv2d


def _norm(kind: Norm, spatial_dims: int, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels) if spatial_dims == 3 else nn.BatchNorm2d(channels)
    if kind == "instance":
        cls = nn.InstanceNorm3d if spatial_dims == 3 else nn.InstanceNorm2d
        return cls(channels, affine=True)
    return nn.Identity()


class DoubleConv(nn.Sequential):
    """Two 3x3(x3) convolutions, each followed by normalization and ReLU."""

    def __init__(self, in_ch: int, out_ch: int, spatial_dims: int, norm: Norm) -> None:
        conv = _conv(spatial_dims)
        bias = norm == "none"  # a bias before a normalization layer is redundant
        super().__init__(
            conv(in_ch, out_ch, kernel_size=3, padding=1, bias=bias),
            _norm(norm, spatial_dims, out_ch),
            nn.ReLU(inplace=True),
            conv(out_ch, out_ch, kernel_size=3, padding=1, bias=bias),
            _norm(norm, spatial_dims, out_ch),
            nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    """2x up-convolution halving the width, concatenation with the skip, DoubleConv."""

    def __init__(self, in_ch: int, out_ch: int, spatial_dims: int, norm: Norm) -> None:
        super().__init__()
        up = nn.ConvTranspose3d if spatial_dims == 3 else nn.ConvTranspose2d
        self.up = up(in_ch, out_ch, kernel_size=2, stride=2)
        self.conv = DoubleConv(2 * out_ch, out_ch, spatial_dims, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(torch.cat([skip, self.up(x)], dim=1))
        return out


class UNet(nn.Module):
    """Paper U-Net. ``depth`` poolings; level ``i`` has ``base_channels * 2**i`` channels."""

    def __init__(
        self,
        in_channels: int = 1,
        classes: int = 2,
        *,
        spatial_dims: int = 2,
        depth: int = 4,
        base_channels: int = 64,
        norm: Norm = "batch",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        if base_channels < 1:
            raise ValueError(f"base_channels must be at least 1, got {base_channels}")
        if norm not in ("batch", "instance", "none"):
            raise ValueError(f"norm must be 'batch', 'instance' or 'none', got {norm!r}")
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.spatial_dims = spatial_dims
        self.depth = depth
        self.output_stride = 2**depth
        self.down = nn.ModuleList()
        width_in = in_channels
        for width in widths:
            self.down.append(DoubleConv(width_in, width, spatial_dims, norm))
            width_in = width
        self.pool = nn.MaxPool3d(2) if spatial_dims == 3 else nn.MaxPool2d(2)
        self.up = nn.ModuleList(
            UpBlock(widths[i + 1], widths[i], spatial_dims, norm) for i in reversed(range(depth))
        )
        self.head = _conv(spatial_dims)(widths[0], classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (_is_scripting() or _is_tracing()):
            self._check_input(x)
        skips: list[torch.Tensor] = []
        for i, block in enumerate(self.down):
            if i > 0:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        for i, up in enumerate(self.up):
            x = up(x, skips[-(i + 2)])
        out: torch.Tensor = self.head(x)
        return out

    @torch.jit.unused
    def _check_input(self, x: torch.Tensor) -> None:
        sizes = tuple(x.shape[2:])
        if len(sizes) != self.spatial_dims:
            raise ValueError(
                f"{self.spatial_dims}-D U-Net expects (N, C, {', '.join('S' * self.spatial_dims)}) "
                f"input, got shape {tuple(x.shape)}"
            )
        if any(s % self.output_stride for s in sizes):
            raise ValueError(
                f"U-Net of depth {self.depth} needs spatial sizes that are multiples of "
                f"{self.output_stride}, got {sizes}; pad the input"
            )
