"""Synthetic land-cover scene with known truth: water, forest, field, urban.

The scene is a pure function of global pixel coordinates and the seed
(:func:`render_landcover`), so it is generated and written window by window in
bounded memory, and any window equals the same part of a whole-scene render.
The layout does not depend on the scene size: a small scene is the top-left
corner of a larger one with the same seed (only the optional nodata collar,
which follows the scene outline, differs).

Design of the look, and why:

- region layout from fractal Perlin noise: forest where a land-use field is
  high, the rest is farmland; rivers where a ridged noise crosses zero, lakes
  where another noise peaks; towns are whole street blocks whose centre lies
  where a town-potential noise is high;
- fields are rectangular parcels (irregular grid split into strips), each with
  its own crop state between bare soil and dense green crop, plus tillage rows;
- urban blocks mix light, dark and red roofs with small yards, between a grid
  of asphalt streets; forest has fine canopy texture and broadleaf/conifer
  patches; water is dark in the NIR with patches of turbidity;
- signatures overlap on purpose (green crops vs forest, bare soil vs roofs,
  urban yards vs grass), so a per-pixel threshold cannot be perfect while the
  texture and context make it learnable by a small CNN.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from segflow.errors import ConfigError, OutputError
from segflow.io.classes import ClassInfo
from segflow.io.geotiff_write import GeoTiffWriter, check_crs
from segflow.samples.textures import (
    F32,
    F64,
    check_seed,
    fbm2,
    layer_key,
    normal2,
    pixel_centres,
    smoothstep,
    uniform2,
)

BAND_NAMES: tuple[str, ...] = ("blue", "green", "red", "nir")
REFLECTANCE_SCALE = 10000  # DN = reflectance * 10000
IMAGE_NODATA = 0  # declared only when the scene has a nodata collar
TRUTH_NODATA = 255  # truth value outside the valid footprint (an ignore index)
GENERATOR_VERSION = 1

WATER, FOREST, FIELD, URBAN = 0, 1, 2, 3
_CLASSES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("water", (30, 100, 200)),
    ("forest", (20, 110, 40)),
    ("field", (225, 195, 80)),
    ("urban", (200, 60, 60)),
)

DEFAULT_ORIGIN = (399960.0, 5900040.0)  # UTM 33N, near a Sentinel-2 tile corner

# Layout scales in pixels (10 m pixels: a 2048 scene is ~20 km across).
_LANDUSE_CELL = 384.0
_FOREST_Z = 0.3  # forest where land-use fBm (unit std) exceeds this
_RIVER_CELL = 900.0
_RIVER_HALF_WIDTH = 0.07  # |river fBm| below this is river
_LAKE_CELL = 220.0
_LAKE_Z = 1.55
_TOWN_CELL = 420.0
_TOWN_Z = 0.85
_STREET_PITCH = 24  # street grid: one street per 24 px, 3 px wide, jittered per line
_STREET_WIDTH = 3
_STREET_JITTER = 6
_LOT = 7  # building lots in a block: 7 x 7 px, the last row/column a gap
_PARCEL_PITCH = 80  # field parcel grid, jittered per line, each cell cut in 1..3 strips
_PARCEL_JITTER = 28
_COLLAR_ANGLE_DEG = 8.0
_COLLAR_KEEP = 0.93  # half-extent of the rotated footprint, as a fraction of the half-size

# Reflectance signatures (blue, green, red, nir).
_SIG: dict[str, tuple[float, float, float, float]] = {
    "water": (0.055, 0.048, 0.028, 0.014),
    "turbid": (0.065, 0.072, 0.055, 0.028),
    "broadleaf": (0.032, 0.062, 0.032, 0.400),
    "conifer": (0.022, 0.040, 0.022, 0.270),
    "crop": (0.038, 0.078, 0.042, 0.380),
    "soil": (0.095, 0.125, 0.165, 0.215),
    "stubble": (0.110, 0.135, 0.160, 0.260),
    "roof_light": (0.170, 0.180, 0.190, 0.230),
    "roof_dark": (0.070, 0.075, 0.080, 0.100),
    "roof_red": (0.080, 0.090, 0.170, 0.220),
    "yard": (0.045, 0.085, 0.055, 0.300),
    "asphalt": (0.085, 0.090, 0.095, 0.110),
}


def landcover_classes() -> list[ClassInfo]:
    """Classes of the land-cover scene, in truth-value order (0 water .. 3 urban)."""
    return [ClassInfo(name=name, color=color) for name, color in _CLASSES]


@dataclass(frozen=True)
class SceneInfo:
    """What :func:`make_landcover_scene` wrote."""

    image_path: Path
    truth_path: Path
    shape_yx: tuple[int, int]
    crs: str
    transform: tuple[float, float, float, float, float, float]  # rasterio Affine a..f
    band_names: tuple[str, ...]
    classes: tuple[ClassInfo, ...]
    nodata: int | None  # image nodata (0 with a collar, else None)
    truth_nodata: int  # truth value outside the footprint
    seed: int
    class_counts: tuple[int, ...]  # valid pixels per class
    nodata_pixels: int

    @property
    def class_fractions(self) -> tuple[float, ...]:
        """Share of each class among valid pixels."""
        total = sum(self.class_counts)
        return tuple(c / total if total else 0.0 for c in self.class_counts)


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ConfigError(f"size must be (height, width), got {size!r}") from None
    if h < 1 or w < 1:
        raise ConfigError(f"size must be positive, got {size!r}")
    return h, w


def _check_bands(bands: int) -> int:
    if bands not in (3, 4):
        raise ConfigError(f"bands must be 3 (blue, green, red) or 4 (+ nir), got {bands}")
    return bands


# ---------------------------------------------------------------------------
# rendering: pure functions of global coordinates


def _jittered_grid(
    idx: npt.NDArray[np.int64], pitch: int, jitter: int, key: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Cell index and offset from the cell's line, for a grid whose lines are jittered.

    Line ``k`` sits at ``k * pitch + off(k)``, ``off`` in ``[0, jitter)``; a pixel
    belongs to the cell that starts at the last line at or before it.
    """
    k = idx // pitch
    off = np.floor(uniform2(key, 0, k) * jitter).astype(np.int64)
    local = idx - k * pitch
    before = local < off
    cell = k - before
    prev_off = np.floor(uniform2(key, 0, cell) * jitter).astype(np.int64)
    return cell, idx - (cell * pitch + prev_off)


def _footprint(rows: F64, cols: F64, size: tuple[int, int]) -> npt.NDArray[np.bool_]:
    """Valid pixels of a rotated-scene footprint inside the image rectangle."""
    h, w = size
    theta = math.radians(_COLLAR_ANGLE_DEG)
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    dy = rows[:, None] - h / 2.0
    dx = cols[None, :] - w / 2.0
    u = dx * cos_t + dy * sin_t
    v = dy * cos_t - dx * sin_t
    inside: npt.NDArray[np.bool_] = (np.abs(u) <= _COLLAR_KEEP * w / 2.0) & (
        np.abs(v) <= _COLLAR_KEEP * h / 2.0
    )
    return inside


class _Blocks(NamedTuple):
    """Street-block index and offset from the block's street, per row and per column."""

    by: npt.NDArray[np.int64]
    oy: npt.NDArray[np.int64]
    bx: npt.NDArray[np.int64]
    ox: npt.NDArray[np.int64]


def _layout(
    seed: int, r: npt.NDArray[np.int64], c: npt.NDArray[np.int64], y: F64, x: F64
) -> tuple[npt.NDArray[np.uint8], _Blocks]:
    """Class of every pixel, and the street-block grid (for the urban texture)."""
    key = functools.partial(layer_key, seed)

    landuse = fbm2(y, x, cell=_LANDUSE_CELL, key=key("landuse"), octaves=6)
    river = np.abs(fbm2(y, x, cell=_RIVER_CELL, key=key("river"), octaves=4))
    lake = fbm2(y, x, cell=_LAKE_CELL, key=key("lake"), octaves=4)
    water = (river < _RIVER_HALF_WIDTH) | (lake > _LAKE_Z)

    # towns: whole street blocks, decided by the town noise at the block centre
    by, oy = _jittered_grid(r, _STREET_PITCH, _STREET_JITTER, key("street_y"))
    bx, ox = _jittered_grid(c, _STREET_PITCH, _STREET_JITTER, key("street_x"))
    uy = np.arange(int(by.min()), int(by.max()) + 1)
    ux = np.arange(int(bx.min()), int(bx.max()) + 1)
    centre = _STREET_PITCH * 0.5 + _STREET_WIDTH + _STREET_JITTER * 0.5
    town = fbm2(
        (uy * _STREET_PITCH).astype(np.float64) + centre,
        (ux * _STREET_PITCH).astype(np.float64) + centre,
        cell=_TOWN_CELL,
        key=key("town"),
        octaves=3,
    )
    urban = (town > _TOWN_Z)[(by - uy[0])[:, None], (bx - ux[0])[None, :]]

    truth = np.full(landuse.shape, FIELD, dtype=np.uint8)
    truth[landuse > _FOREST_Z] = FOREST
    truth[urban] = URBAN
    truth[water] = WATER
    return truth, _Blocks(by, oy, bx, ox)


def _mix(a: tuple[float, ...], b: tuple[float, ...], t: F32, band: int) -> F32:
    out: F32 = np.float32(a[band]) + (np.float32(b[band] - a[band])) * t
    return out


def _spectra(
    seed: int,
    truth: npt.NDArray[np.uint8],
    blocks: _Blocks,
    r: npt.NDArray[np.int64],
    c: npt.NDArray[np.int64],
    y: F64,
    x: F64,
    bands: int,
) -> list[F32]:
    """Reflectance of every pixel per band, following the truth."""
    key = functools.partial(layer_key, seed)
    shape = truth.shape

    # water: clear to turbid patches, very smooth
    turbid = smoothstep(-0.6, 1.2, fbm2(y, x, cell=160.0, key=key("turbid"), octaves=3))

    # forest: broadleaf/conifer patches and canopy texture (crowns and gaps)
    conifer = smoothstep(-0.5, 0.5, fbm2(y, x, cell=140.0, key=key("conifer"), octaves=3))
    canopy = fbm2(y, x, cell=5.0, key=key("canopy"), octaves=2)
    canopy_gain = np.float32(1.0) + np.float32(0.18) * canopy

    # fields: parcels of an irregular grid, each cut in 1..3 strips
    py, ly = _jittered_grid(r, _PARCEL_PITCH, _PARCEL_JITTER, key("parcel_y"))
    px, lx = _jittered_grid(c, _PARCEL_PITCH, _PARCEL_JITTER, key("parcel_x"))
    cell_py, cell_px = py[:, None], px[None, :]
    split = uniform2(key("parcel_split"), cell_py, cell_px)
    vertical = split < 0.5
    n_strips = 1 + np.floor((split * 2.0 % 1.0) * 3.0).astype(np.int64)
    along = np.where(vertical, lx[None, :], ly[:, None])
    strip = np.minimum(along * n_strips // _PARCEL_PITCH, n_strips - 1)
    parcel_key = key("parcel_state")
    state = uniform2(parcel_key, cell_py * 4 + strip, cell_px).astype(np.float32)
    bright = uniform2(parcel_key ^ 0x5BD1E995, cell_py * 4 + strip, cell_px).astype(np.float32)
    green = np.clip(state * np.float32(1.5) - np.float32(0.35), 0.0, 1.0).astype(np.float32)
    harvested = state < np.float32(0.2)
    moisture = fbm2(y, x, cell=48.0, key=key("moisture"), octaves=2)
    field_gain = (
        np.float32(0.88) + np.float32(0.24) * bright + np.float32(0.05) * moisture
    ).astype(np.float32)
    # tillage rows across the strip direction, visible where the crop is sparse
    row_coord = np.where(vertical, r[:, None], c[None, :])
    rows_wave = np.abs((row_coord % 4).astype(np.float32) - np.float32(1.5)) / np.float32(1.5)
    field_gain *= np.float32(1.0) + np.float32(0.06) * (np.float32(1.0) - green) * rows_wave
    boundary = (ly[:, None] < 1) | (lx[None, :] < 1)

    # urban: each block holds lots of 7 x 7 px (light, dark or red roof, or a yard),
    # with 1 px gaps between buildings and asphalt streets around the block
    street = (blocks.oy[:, None] < _STREET_WIDTH) | (blocks.ox[None, :] < _STREET_WIDTH)
    ly_u, gy = np.divmod(blocks.oy - _STREET_WIDTH, _LOT)
    lx_u, gx = np.divmod(blocks.ox - _STREET_WIDTH, _LOT)
    gap = (gy[:, None] == _LOT - 1) | (gx[None, :] == _LOT - 1)
    lot_y = (blocks.by * 8 + ly_u)[:, None]
    lot_x = (blocks.bx * 8 + lx_u)[None, :]
    roof = np.where(gap, np.float64(1.0), uniform2(key("roof"), lot_y, lot_x))
    roof_gain = np.float32(0.85) + np.float32(0.3) * uniform2(
        key("roof_gain"), lot_y, lot_x
    ).astype(np.float32)

    # smooth illumination / haze over the whole scene
    haze = fbm2(y, x, cell=1024.0, key=key("haze"), octaves=2)
    illum = np.float32(1.0) + np.float32(0.05) * haze

    out: list[F32] = []
    for b in range(bands):
        water_b = _mix(_SIG["water"], _SIG["turbid"], turbid, b)
        forest_b = _mix(_SIG["broadleaf"], _SIG["conifer"], conifer, b) * canopy_gain
        crop_b = _mix(_SIG["soil"], _SIG["crop"], green, b)
        field_b = np.where(harvested, np.float32(_SIG["stubble"][b]), crop_b) * field_gain
        field_b = np.where(boundary, np.float32(0.5) * (field_b + _SIG["yard"][b]), field_b)
        urban_b = np.select(
            [roof < 0.35, roof < 0.6, roof < 0.8],
            [
                np.float32(_SIG["roof_light"][b]) * roof_gain,
                np.float32(_SIG["roof_dark"][b]) * roof_gain,
                np.float32(_SIG["roof_red"][b]) * roof_gain,
            ],
            default=np.float32(_SIG["yard"][b]) * roof_gain,
        )
        urban_b = np.where(street, np.float32(_SIG["asphalt"][b]), urban_b)
        refl = np.choose(truth, [water_b, forest_b, field_b, urban_b]).astype(np.float32)
        refl *= illum
        refl += np.float32(0.006) * haze * np.float32(1.0 - b / 4.0)  # path radiance, blue-ish
        sigma = np.float32(0.004) + np.float32(0.02) * refl  # sensor noise grows with signal
        refl += sigma * normal2(key(f"noise{b}"), r, c)
        out.append(refl.reshape(shape))
    return out


def render_landcover(
    rows: slice,
    cols: slice,
    *,
    size: tuple[int, int],
    seed: int = 0,
    bands: int = 4,
    nodata_collar: bool = False,
) -> tuple[npt.NDArray[np.uint16], npt.NDArray[np.uint8]]:
    """Render one window of the scene: image ``(bands, h, w)`` uint16 DN and truth ``(h, w)``.

    ``rows``/``cols`` are slices inside ``size`` (height, width). The result is
    identical to the same window of a whole-scene render.
    """
    h, w = _check_size(size)
    _check_bands(bands)
    seed = check_seed(seed)
    r0, r1, rstep = rows.indices(h)
    c0, c1, cstep = cols.indices(w)
    if rstep != 1 or cstep != 1:
        raise ConfigError(f"window slices must have step 1, got rows={rows} cols={cols}")
    if r1 <= r0 or c1 <= c0:
        raise ConfigError(f"empty window rows={rows} cols={cols} in a {h}x{w} scene")
    r = np.arange(r0, r1, dtype=np.int64)
    c = np.arange(c0, c1, dtype=np.int64)
    y, x = pixel_centres(r0, r1), pixel_centres(c0, c1)

    truth, blocks = _layout(seed, r, c, y, x)
    refl = _spectra(seed, truth, blocks, r, c, y, x, bands)
    image = np.empty((bands, *truth.shape), dtype=np.uint16)
    for b, band in enumerate(refl):
        # valid pixels are never 0, so 0 is free to mean nodata
        image[b] = np.clip(np.rint(band * np.float32(REFLECTANCE_SCALE)), 1, REFLECTANCE_SCALE)
    if nodata_collar:
        valid = _footprint(y, x, (h, w))
        image[:, ~valid] = IMAGE_NODATA
        truth[~valid] = TRUTH_NODATA
    return image, truth


# ---------------------------------------------------------------------------
# writing


def _block_side(tile: int) -> int:
    # windows of ~512 px aligned to the file's tiles: bounded memory (~40 MB), and
    # faster than bigger windows (the temporaries stay in cache)
    return max(tile, (512 // tile) * tile)


def make_landcover_scene(
    image_path: str | os.PathLike[str],
    truth_path: str | os.PathLike[str],
    *,
    size: tuple[int, int] = (2048, 2048),
    seed: int = 0,
    crs: str = "EPSG:32633",
    pixel_size: float = 10.0,
    origin: tuple[float, float] = DEFAULT_ORIGIN,
    tile: int = 256,
    bands: int = 4,
    nodata_collar: bool = False,
) -> SceneInfo:
    """Write a synthetic land-cover GeoTIFF and its truth GeoTIFF on the same grid.

    The image is uint16 DN (reflectance x 10000), bands blue/green/red[/nir],
    tiled ``tile`` x ``tile``, deflate. The truth is uint8 class ids (see
    :func:`landcover_classes`), with the class names and colours as tags and a
    colour map. ``origin`` is the (x, y) of the top-left corner in ``crs``
    units. With ``nodata_collar`` the scene is a rotated footprint: outside
    it the image is 0 (declared nodata) and the truth is 255 (declared nodata).
    Generated by windows, so memory does not grow with ``size``.
    """
    h, w = _check_size(size)
    _check_bands(bands)
    seed = check_seed(seed)
    if tile < 16 or tile % 16:
        raise ConfigError(f"tile must be a positive multiple of 16, got {tile}")
    if not (pixel_size > 0 and math.isfinite(pixel_size)):
        raise ConfigError(f"pixel_size must be a positive number, got {pixel_size}")
    check_crs(crs)
    try:
        x0, y0 = (float(v) for v in origin)
    except (TypeError, ValueError):
        raise ConfigError(f"origin must be (x, y) of the top-left corner, got {origin!r}") from None
    image_path, truth_path = Path(image_path), Path(truth_path)
    if image_path.resolve() == truth_path.resolve():
        raise ConfigError(f"image and truth paths are the same: {image_path}")

    transform = (float(pixel_size), 0.0, x0, 0.0, -float(pixel_size), y0)
    common: dict[str, Any] = {
        "shape": (h, w),
        "crs": crs,
        "transform": transform,
        "tile": tile,
        "compress": "deflate",
        "predictor": 2,
        "zlevel": 1,  # noise barely compresses; level 1 is several times faster than 6
        "num_threads": "all_cpus",
        "bigtiff": "if_safer",
    }
    names = BAND_NAMES[:bands]
    classes = landcover_classes()
    counts = np.zeros(256, dtype=np.int64)
    side = _block_side(tile)
    image_nodata = IMAGE_NODATA if nodata_collar else None
    try:
        image_path.parent.mkdir(parents=True, exist_ok=True)
        truth_path.parent.mkdir(parents=True, exist_ok=True)
        with (
            GeoTiffWriter(
                image_path,
                count=bands,
                dtype="uint16",
                nodata=image_nodata,
                interleave="pixel",
                **common,
            ) as img,
            GeoTiffWriter(truth_path, count=1, dtype="uint8", nodata=TRUTH_NODATA, **common) as tru,
        ):
            for r0 in range(0, h, side):
                for c0 in range(0, w, side):
                    rows, cols = slice(r0, min(r0 + side, h)), slice(c0, min(c0 + side, w))
                    data, truth = render_landcover(
                        rows, cols, size=(h, w), seed=seed, bands=bands, nodata_collar=nodata_collar
                    )
                    img.write(data, r0, c0)
                    tru.write(truth, r0, c0)
                    counts += np.bincount(truth.ravel(), minlength=256)
            _describe(img, tru, names, classes, seed)
    except OSError as exc:  # rasterio write errors are OSErrors
        raise OutputError(
            f"cannot write the land-cover sample to {image_path} / {truth_path}: {exc}"
        ) from exc

    return SceneInfo(
        image_path=image_path,
        truth_path=truth_path,
        shape_yx=(h, w),
        crs=crs,
        transform=transform,
        band_names=names,
        classes=tuple(classes),
        nodata=image_nodata,
        truth_nodata=TRUTH_NODATA,
        seed=seed,
        class_counts=tuple(int(n) for n in counts[: len(classes)]),
        nodata_pixels=int(counts[TRUTH_NODATA]),
    )


def _describe(
    img: GeoTiffWriter,
    tru: GeoTiffWriter,
    names: tuple[str, ...],
    classes: list[ClassInfo],
    seed: int,
) -> None:
    """Band names, provenance tags, class names and the colour map of the truth."""
    img.describe_bands(names)
    img.tag(
        {
            "SEGFLOW_SAMPLE": "landcover",
            "SEGFLOW_SEED": str(seed),
            "SEGFLOW_GENERATOR_VERSION": str(GENERATOR_VERSION),
            "REFLECTANCE_SCALE": str(REFLECTANCE_SCALE),
        }
    )
    tru.describe_bands(["class"])
    tru.tag(
        {
            "SEGFLOW_SAMPLE": "landcover_truth",
            "SEGFLOW_SEED": str(seed),
            "SEGFLOW_CLASSES": json.dumps([ci.model_dump(mode="json") for ci in classes]),
            **{f"CLASS_{i}": ci.name for i, ci in enumerate(classes)},
        }
    )
    colors = {i: (*ci.color, 255) for i, ci in enumerate(classes)}
    tru.colormap(colors | {TRUTH_NODATA: (0, 0, 0, 0)})
