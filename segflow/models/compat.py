"""An input checked against a model's metadata: dimensions and channels, without torch.

The run checks them in ``plan.check_fit``; the command checks them before torch is
imported, so a raster given to a 3-D model, or a wrong band count, fails in a second.
"""

from __future__ import annotations

import re

from segflow.errors import ConfigError, ModelError
from segflow.io.source import Source
from segflow.models.meta import ModelMeta
from segflow.options import RunOptions

_DEFAULT_NAME = re.compile(r"^(band|volume)_\d+$")  # what readers call unnamed bands


def squeeze_axis(source: Source, meta: ModelMeta, options: RunOptions) -> int | None:
    """The axis a 2-D model slices a volume along; a 3-D model on a raster is refused."""
    ndim = len(source.spatial_shape)
    if meta.spatial_dims == 3 and ndim == 2:
        raise ModelError(f"the model is 3-D but {source.path} is a 2-D raster; use a 2-D model")
    if meta.spatial_dims == 2 and ndim == 3:
        return 2 if options.slice_axis is None else options.slice_axis
    return None


def check_channels(source: Source, meta: ModelMeta, options: RunOptions) -> None:
    """A one-line ModelError when the channel count differs, naming missing bands."""
    if source.channels == meta.in_channels:
        return
    found = (
        f"{source.path} has {source.channels} channel(s) but the model expects {meta.in_channels}"
    )
    expected, given = meta.band_names, named_bands(source)
    if expected is not None and given is not None:
        missing = [name for name in expected if name not in given]
        found += f" ({', '.join(expected)}; missing {', '.join(missing) or 'none'})"
        if not missing:
            raise ModelError(
                f"{found}; select them with --bands {band_numbers(source, meta, options)}"
            )
    raise ModelError(f"{found}; {_channel_hint(source, meta.in_channels)}")


def _channel_hint(source: Source, wanted: int) -> str:
    """The fix for a channel count: which bands to pick, or that none can be picked."""
    if source.kind != "raster":
        return "choose --volume N or --volumes-as-channels"
    if source.channels > wanted:
        bands = ",".join(str(b) for b in range(1, wanted + 1))
        return f"select {wanted} of its bands with --bands, e.g. --bands {bands}"
    return (
        f"--bands cannot add bands: use an input with {wanted} bands or a model "
        f"made for {source.channels}"
    )


def check_shape_fit(source: Source, meta: ModelMeta, options: RunOptions) -> None:
    """Dimensions and channels: the checks that need only the header and the metadata."""
    check_channels(source, meta, options)  # in the order plan.check_fit checks them
    squeeze_axis(source, meta, options)
    patch = options.patch_size
    if patch is not None and not isinstance(patch, int) and len(patch) != meta.spatial_dims:
        # as the planned grid says it (engine.grid.coerce_shape), before torch is imported
        raise ConfigError(
            f"patch size needs {meta.spatial_dims} values, got {len(patch)}: {tuple(patch)}"
        )


def named_bands(source: Source) -> tuple[str, ...] | None:
    """The input's band names, or None where the reader only numbered them."""
    names = tuple(source.band_names)
    if not names or all(_DEFAULT_NAME.match(n) for n in names):
        return None
    return names


def band_numbers(source: Source, meta: ModelMeta, options: RunOptions) -> str:
    """The --bands value that reads the model's bands in its order from this input."""
    assert meta.band_names is not None
    given = list(source.band_names)
    read = options.bands or tuple(range(1, len(given) + 1))
    return ",".join(str(read[given.index(name)]) for name in meta.band_names)
