from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from segflow.models import create_model, output_stride_of
from segflow.models.unet import DoubleConv, UNet, UpBlock


def _convs(block: nn.Module) -> list[nn.Module]:
    return [m for m in block.modules() if isinstance(m, nn.Conv2d | nn.Conv3d)]


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_paper_structure_doubles_then_halves_widths(spatial_dims: int) -> None:
    model = UNet(1, 2, spatial_dims=spatial_dims, depth=3, base_channels=4)
    downs = [_convs(b)[-1].out_channels for b in model.down]
    assert downs == [4, 8, 16, 32]  # contracting path: doubling per level
    ups: list[Any] = list(model.up)
    assert all(isinstance(u, UpBlock) for u in ups)
    assert [u.up.out_channels for u in ups] == [16, 8, 4]  # expanding path: halving
    # concatenation skips: each decoder block sees twice the width it outputs
    assert [_convs(u.conv)[0].in_channels for u in ups] == [32, 16, 8]
    assert model.head.kernel_size == (1,) * spatial_dims
    assert all(isinstance(b, DoubleConv) and len(_convs(b)) == 2 for b in model.down)
    up_type = nn.ConvTranspose3d if spatial_dims == 3 else nn.ConvTranspose2d
    assert all(isinstance(u.up, up_type) and u.up.stride == (2,) * spatial_dims for u in ups)


@pytest.mark.parametrize(("spatial_dims", "shape"), [(2, (24, 40)), (3, (8, 16, 24))])
@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_output_has_input_size(spatial_dims: int, shape: tuple[int, ...], norm: str) -> None:
    model = UNet(2, 5, spatial_dims=spatial_dims, depth=3, base_channels=2, norm=norm).eval()  # type: ignore[arg-type]
    assert model.output_stride == 8
    with torch.no_grad():
        out = model(torch.randn(2, 2, *shape))
    assert out.shape == (2, 5, *shape)


def test_sizes_must_be_multiples_of_the_stride() -> None:
    model = UNet(1, 2, depth=2, base_channels=2)
    with pytest.raises(ValueError, match="multiples of 4"):
        model(torch.randn(1, 1, 30, 32))
    with pytest.raises(ValueError, match="2-D U-Net"):
        model(torch.randn(1, 1, 8, 8, 8))


def test_skip_connections_carry_fine_detail() -> None:
    """A depth-1 U-Net's output at a pixel depends on the input there through the skip."""
    torch.manual_seed(0)
    model = UNet(1, 1, depth=1, base_channels=4, norm="none").eval()
    x = torch.randn(1, 1, 8, 8).requires_grad_(True)
    model(x)[0, 0, 3, 3].backward()
    assert x.grad is not None and x.grad[0, 0, 3, 3] != 0


def test_registry_defaults() -> None:
    unet3d = create_model("unet3d", in_channels=1, classes=2, base_channels=2)
    assert isinstance(unet3d, UNet) and unet3d.spatial_dims == 3
    assert unet3d.depth == 3 and output_stride_of(unet3d) == 8
    unet2d = create_model("unet2d", in_channels=1, classes=2, base_channels=2)
    assert isinstance(unet2d, UNet) and unet2d.depth == 4 and output_stride_of(unet2d) == 16


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"depth": 0}, "depth"),
        ({"base_channels": 0}, "base_channels"),
        ({"norm": "group"}, "norm"),
        ({"spatial_dims": 4}, "spatial_dims"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        UNet(1, 2, **kwargs)  # type: ignore[arg-type]


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_scriptable() -> None:
    model = UNet(1, 2, spatial_dims=3, depth=2, base_channels=2).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(1, 1, 8, 12, 16)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))
