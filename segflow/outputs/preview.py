"""PNG quicklooks: the input with the mask overlaid in class colours, and a legend.

Rasters: one decimated view of the whole scene, at most ``max_size`` px on its longest
side. The input is read decimated by GDAL (``out_shape``), the labels from the
coarsest pyramid level that is still fine enough (level 0 when there is none), at
the same sample positions; the contrast stretch (2-98 % per band) is computed on the
decimated read. Neither is ever read whole.

Volumes: axial, coronal and sagittal slices through the centre, displayed the way
radiologists look at them (patient right on the image left; anterior up on axial,
superior up on coronal and sagittal, anterior left on sagittal), at the voxel sizes'
true aspect. The display orientation comes from the affine via nibabel; an oblique
volume is shown along its nearest axes. Only the three slices are read.

Pillow only (no matplotlib).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from segflow.errors import ConfigError, OutputError, ReaderError
from segflow.io.classes import ClassInfo
from segflow.io.cog import display_colors
from segflow.io.display import choose_bands, read_display_bands
from segflow.io.source import RasterGeometry, VolumeGeometry
from segflow.io.zarr_levels import open_level, pyramid_levels
from segflow.io.zarr_sink import ZarrSink

DEFAULT_MAX_SIZE = 1024
LEGEND_WIDTH = 220
MAX_LEGEND_ROWS = 40
BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)
GAP = 8
TITLE_HEIGHT = 30  # above the panels: the title line
CAPTIONED_TITLE_HEIGHT = 50  # the title line and the panel captions
LEGEND_ROW = 20
LEGEND_LINE = 16  # a wrapped legend entry's further lines

Region = tuple[slice, ...]


def preview(
    store: str | os.PathLike[str] | ZarrSink,
    output: str | os.PathLike[str],
    *,
    input: str | os.PathLike[str] | None = None,
    bands: Sequence[int] | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
    alpha: float = 0.5,
) -> Path:
    """Render the quicklook of ``store`` (over ``input`` when given) to a PNG file.

    ``alpha`` is the opacity of the class colours over the input; without an input the
    mask is drawn opaque.
    """
    sink = ZarrSink.open_finished(store, need_complete=False, purpose="a preview")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"overlay opacity must be between 0 and 1, got {alpha}")
    if max_size < 2 * LEGEND_WIDTH:
        raise ConfigError(f"preview size must be at least {2 * LEGEND_WIDTH} px, got {max_size}")
    if input is None:
        alpha = 1.0  # nothing to see through
    if isinstance(sink.geometry, VolumeGeometry):
        image = render_volume(sink, input, max_size=max_size, alpha=alpha)
    else:
        image = render_raster(sink, input, bands=bands, max_size=max_size, alpha=alpha)
    target = Path(output).expanduser()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target, format="PNG", optimize=True)
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from exc
    return target


# --- rasters ----------------------------------------------------------------------------------


def render_raster(
    sink: ZarrSink,
    input: str | os.PathLike[str] | None,
    *,
    bands: Sequence[int] | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
    alpha: float = 0.5,
) -> Image.Image:
    height, width = sink.layout.spatial_shape
    room_w, room_h = max_size - LEGEND_WIDTH - 2 * GAP, max_size - TITLE_HEIGHT - GAP
    scale = min(1.0, room_w / width, room_h / height)
    out_h, out_w = max(1, round(height * scale)), max(1, round(width * scale))
    labels = decimated_labels(sink, (out_h, out_w))
    if input is None:
        base = np.full((out_h, out_w, 3), 0, dtype=np.uint8)
    else:
        base = decimated_rgb(Path(input), sink, (out_h, out_w), bands)
    colors = display_colors(sink.classes)
    clear = background_classes(sink.classes, "raster")
    rgb = overlay(base, labels, colors, alpha, clear)
    title = f"{sink.path.name}  ({width} x {height} px)"
    return compose(
        [Image.fromarray(rgb)], [""], title, sink.classes, colors, labels, clear, max_size
    )


def decimated_labels(sink: ZarrSink, out_shape: tuple[int, ...]) -> npt.NDArray[np.generic]:
    """Labels sampled on an ``out_shape`` grid, from the coarsest pyramid level fine enough."""
    level, shape = 0, sink.layout.spatial_shape
    for entry in pyramid_levels(sink):
        if all(s >= o for s, o in zip(entry.shape, out_shape, strict=True)):
            level, shape = entry.level, entry.shape
    array = open_level(sink, level)
    index = tuple(_sample_positions(n, o) for n, o in zip(shape, out_shape, strict=True))
    return np.asarray(array.oindex[index])


def _sample_positions(n: int, out: int) -> npt.NDArray[np.intp]:
    """Centres of ``out`` equal cells over ``n`` pixels (GDAL's nearest decimation)."""
    return np.minimum(((np.arange(out) + 0.5) * n / out).astype(np.intp), n - 1)


def decimated_rgb(
    path: Path, sink: ZarrSink, out_shape: tuple[int, int], bands: Sequence[int] | None
) -> npt.NDArray[np.uint8]:
    """The input read decimated, three display bands stretched to 0..255 (nodata black)."""
    geometry = sink.geometry
    assert isinstance(geometry, RasterGeometry)
    values = read_display_bands(
        path,
        out_shape,
        bands,
        expect_shape=sink.layout.spatial_shape,
        expect_geometry=geometry,
        store_name=sink.path.name,
    )
    stretched = stretch(values)
    if stretched.shape[0] == 1:
        stretched = np.repeat(stretched, 3, axis=0)
    return np.ascontiguousarray(stretched.transpose(1, 2, 0))


def stretch(
    values: npt.NDArray[np.floating], low: float = 2.0, high: float = 98.0
) -> npt.NDArray[np.uint8]:
    """Per-band percentile stretch to 0..255; NaN (nodata) becomes 0."""
    out = np.zeros(values.shape, dtype=np.uint8)
    for b, band in enumerate(values):
        finite = band[np.isfinite(band)]
        if finite.size == 0:
            continue
        lo, hi = np.percentile(finite, [low, high])
        span = hi - lo if hi > lo else 1.0
        scaled = np.clip((band - lo) / span, 0.0, 1.0) * 255.0
        out[b] = np.where(np.isfinite(band), np.rint(scaled), 0).astype(np.uint8)
    return out


# --- volumes ----------------------------------------------------------------------------------

# RAS axis held fixed by each plane; the two others become (columns, rows) after the flips
PLANES: tuple[tuple[str, int, tuple[str, str, str, str]], ...] = (
    ("axial", 2, ("R", "L", "A", "P")),
    ("coronal", 1, ("R", "L", "S", "I")),
    ("sagittal", 0, ("A", "P", "S", "I")),
)


@dataclass(frozen=True)
class _Slice:
    name: str
    image: npt.NDArray[np.float64] | None  # (rows, columns) in display orientation
    labels: npt.NDArray[np.generic]
    spacing: tuple[float, float]  # mm per column, mm per row
    letters: tuple[str, str, str, str]  # left, right, top, bottom
    note: str


def render_volume(
    sink: ZarrSink,
    input: str | os.PathLike[str] | None,
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    alpha: float = 0.5,
) -> Image.Image:
    geometry = sink.geometry
    assert isinstance(geometry, VolumeGeometry)
    shape = sink.layout.spatial_shape
    source = _open_volume(Path(input), sink) if input is not None else None
    slices = [_centre_slice(sink, geometry, source, plane) for plane in PLANES]
    window = _window([s.image for s in slices if s.image is not None])
    colors = display_colors(sink.classes)
    clear = background_classes(sink.classes, "volume")
    # one scale (px per mm) for all panels, so anatomy keeps its size across them
    widths = [s.labels.shape[1] * s.spacing[0] for s in slices]
    heights = [s.labels.shape[0] * s.spacing[1] for s in slices]
    room_w = max_size - LEGEND_WIDTH - GAP * (len(slices) + 1)
    room_h = max_size - CAPTIONED_TITLE_HEIGHT - GAP
    px_per_mm = min(room_w / sum(widths), room_h / max(heights))
    panels = []
    for s, w_mm, h_mm in zip(slices, widths, heights, strict=True):
        size = (max(1, round(w_mm * px_per_mm)), max(1, round(h_mm * px_per_mm)))
        if s.image is None:
            gray = Image.new("L", size, 0)
        else:
            lo, hi = window
            scaled = np.clip((np.nan_to_num(s.image, nan=lo) - lo) / (hi - lo), 0, 1) * 255
            gray = Image.fromarray(np.rint(scaled).astype(np.uint8)).resize(
                size, Image.Resampling.BILINEAR
            )
        lab = _resize_labels(s.labels, size)
        rgb = overlay(np.stack([np.asarray(gray)] * 3, axis=-1), lab, colors, alpha, clear)
        panel = Image.fromarray(rgb)
        _orientation_letters(panel, s.letters)
        panels.append(panel)
    codes = "".join(geometry.orientation)
    oblique = " (oblique: nearest axes)" if _is_oblique(geometry.affine) else ""
    title = f"{sink.path.name}  {shape[0]}x{shape[1]}x{shape[2]} {codes}{oblique}"
    flat = np.concatenate([s.labels.ravel() for s in slices])
    captions = [f"{s.name}  {s.note}" for s in slices]
    return compose(panels, captions, title, sink.classes, colors, flat, clear, max_size)


def _centre_slice(
    sink: ZarrSink,
    geometry: VolumeGeometry,
    source: Any,
    plane: tuple[str, int, tuple[str, str, str, str]],
) -> _Slice:
    """Read the centre slice across RAS axis ``axis`` (labels, and the input when given)."""
    from segflow.io.orientation import apply_transform, orientation_transform

    name, axis, letters = plane
    shape = sink.layout.spatial_shape
    to_ras = orientation_transform(geometry.affine, "RAS")
    file_axis = to_ras.perm[axis]
    n = shape[file_axis]
    index = (n - 1 - n // 2) if to_ras.flip[axis] else n // 2
    region = tuple(
        slice(index, index + 1) if a == file_axis else slice(0, s) for a, s in enumerate(shape)
    )
    labels = _display(apply_transform(np.asarray(sink.labels_array()[region]), to_ras), axis)
    image = None
    if source is not None:
        read = source.read(region)
        data = np.where(read.valid, read.data[0].astype(np.float64), np.nan)
        image = _display(apply_transform(data, to_ras), axis)
    zooms = [geometry.zooms[p] for p in to_ras.perm]
    u, v = (a for a in range(3) if a != axis)  # u runs along the columns, v down the rows
    return _Slice(name, image, labels, (zooms[u], zooms[v]), letters, f"{'ijk'[file_axis]}={index}")


def _open_volume(path: Path, sink: ZarrSink) -> Any:
    from segflow.io.open import open_source

    params = sink.attrs.get("parameters", {})
    volume = params.get("volume") if isinstance(params, dict) else None
    try:
        source = open_source(path, volume=volume)
    except ReaderError as exc:
        if "4-D" not in str(exc):
            raise
        source = open_source(path, volume=0)  # a series: show its first volume
    if tuple(source.spatial_shape) != tuple(sink.layout.spatial_shape):
        raise ConfigError(
            f"{path} has voxel grid {tuple(source.spatial_shape)} but {sink.path.name} has "
            f"{tuple(sink.layout.spatial_shape)}; pass the volume the store was made from"
        )
    geometry = source.geometry
    assert isinstance(geometry, VolumeGeometry) and isinstance(sink.geometry, VolumeGeometry)
    if not np.allclose(geometry.affine, sink.geometry.affine, atol=1e-4):
        raise ConfigError(
            f"{path} has a different affine than {sink.path.name}; pass the volume the store "
            "was made from"
        )
    return source


def _display(ras: npt.NDArray[Any], axis: int) -> npt.NDArray[Any]:
    """RAS-ordered slab (singleton on ``axis``) -> 2-D display array (rows, columns).

    The two remaining RAS axes (u, v) are shown with u reversed along the columns (R, or
    A for sagittal, on the left) and v reversed down the rows (A or S at the top).
    """
    plane = np.take(ras, 0, axis=axis)
    return np.ascontiguousarray(plane[::-1, ::-1].T)


def _window(images: Sequence[npt.NDArray[np.float64]]) -> tuple[float, float]:
    """Display window: 1st-99th percentile of the shown voxels."""
    if not images:
        return 0.0, 1.0
    values = np.concatenate([im[np.isfinite(im)].ravel() for im in images])
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, [1.0, 99.0]))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _resize_labels(
    labels: npt.NDArray[np.generic], size: tuple[int, int]
) -> npt.NDArray[np.generic]:
    """Nearest-neighbour resize of a label slice to ``size`` (width, height)."""
    rows = _sample_positions(labels.shape[0], size[1])
    cols = _sample_positions(labels.shape[1], size[0])
    return labels[np.ix_(rows, cols)]


def _is_oblique(affine: Sequence[Sequence[float]]) -> bool:
    m = np.abs(np.asarray(affine, dtype=np.float64)[:3, :3])
    m = m / np.maximum(m.max(axis=0, keepdims=True), 1e-12)
    return bool(((m > 1e-3) & (m < 1.0 - 1e-9)).any())


def _orientation_letters(panel: Image.Image, letters: Sequence[str]) -> None:
    left, right, top, bottom = letters
    draw = ImageDraw.Draw(panel)
    font = _font(14)
    w, h = panel.size
    for text, (x, y) in (
        (left, (4, h // 2 - 7)),
        (right, (w - 14, h // 2 - 7)),
        (top, (w // 2 - 4, 2)),
        (bottom, (w // 2 - 4, h - 18)),
    ):
        draw.text(
            (x, y), text, fill=(255, 255, 0), font=font, stroke_width=1, stroke_fill=(0, 0, 0)
        )


# --- shared drawing ---------------------------------------------------------------------------


def overlay(
    base: npt.NDArray[np.uint8],
    labels: npt.NDArray[np.generic],
    colors: Sequence[tuple[int, int, int]],
    alpha: float,
    clear: Sequence[int] = (),
) -> npt.NDArray[np.uint8]:
    """Blend class colours over an RGB image; nodata and the ``clear`` classes stay untinted."""
    k = len(colors)
    lut = np.asarray(colors, dtype=np.float64).reshape(k, 3)
    lab = np.asarray(labels).astype(np.intp)
    tinted = np.ones(k + 1, dtype=bool)
    tinted[k] = False
    tinted[[c for c in clear if 0 <= c < k]] = False
    is_class = tinted[np.minimum(lab, k)]
    out = base.astype(np.float64)
    tint = lut[np.where(is_class, lab, 0)]
    out[is_class] = (1.0 - alpha) * out[is_class] + alpha * tint[is_class]
    return np.rint(out).astype(np.uint8)


def background_classes(classes: Sequence[ClassInfo], kind: str) -> list[int]:
    """Classes left untinted: those named like background; for volumes also label 0,
    the background of every medical label map (ITK-SNAP's "clear label")."""
    names = {"background", "bg", "clear", "clear label", "none", "unlabeled", "unlabelled", "void"}
    clear = [v for v, c in enumerate(classes) if c.name.strip().lower() in names]
    if kind == "volume" and 0 not in clear and len(classes) > 1:
        clear.insert(0, 0)
    return clear


def compose(
    panels: Sequence[Image.Image],
    captions: Sequence[str],
    title: str,
    classes: Sequence[ClassInfo],
    colors: Sequence[tuple[int, int, int]],
    labels: npt.NDArray[np.generic],
    clear: Sequence[int] = (),
    max_size: int = DEFAULT_MAX_SIZE,
) -> Image.Image:
    """Panels side by side under a title, a legend on the right (cut to fit ``max_size``)."""
    font, small = _font(15), _font(13)
    top = CAPTIONED_TITLE_HEIGHT if any(captions) else TITLE_HEIGHT
    width = sum(p.width for p in panels) + GAP * (len(panels) + 1) + LEGEND_WIDTH
    rows = max(1, min(MAX_LEGEND_ROWS, (max_size - 40) // LEGEND_ROW - 1))
    entries = _legend_entries(classes, labels, rows)
    wrapped = _legend_text(entries, clear, small)
    legend_h = 40 + sum(LEGEND_ROW + LEGEND_LINE * (len(w) - 1) for w in wrapped)
    height = max(max(p.height for p in panels) + top + GAP, legend_h)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((GAP, 6), _fit(title, width - LEGEND_WIDTH), fill=TEXT, font=font)
    x = GAP
    for panel, caption in zip(panels, captions, strict=True):
        if caption:
            draw.text((x, 30), caption, fill=TEXT, font=small)
        canvas.paste(panel, (x, top))
        x += panel.width + GAP
    lx = x + 4
    draw.text((lx, 6), "classes", fill=TEXT, font=font)
    y = 34
    for (value, _), lines in zip(entries, wrapped, strict=True):
        if value is not None:
            fill = None if value in clear else tuple(colors[value])
            draw.rectangle((lx, y + 1, lx + 14, y + 15), fill=fill, outline=TEXT)
        for line in lines:
            draw.text((lx + 22, y), line, fill=TEXT, font=small)
            y += LEGEND_LINE
        y += LEGEND_ROW - LEGEND_LINE
    return canvas


def _legend_text(
    entries: Sequence[tuple[int | None, str]], clear: Sequence[int], font: Any
) -> list[list[str]]:
    """Each legend entry in lines that fit the legend (wrapped at words, never cut short)."""
    texts = [
        (f"{v}  {name}" + ("  (not tinted)" if v in clear else "")) if v is not None else name
        for v, name in entries
    ]
    return [_wrap(text, font, LEGEND_WIDTH - 30) for text in texts]


def _wrap(text: str, font: Any, width_px: int, max_lines: int = 3) -> list[str]:
    """``text`` in lines of at most ``width_px`` as drawn in ``font``; a word longer than a
    line is split, and only what exceeds ``max_lines`` lines ends in an ellipsis."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength
    lines: list[str] = []
    for word in text.split(" "):
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and measure(candidate, font=font) <= width_px:
            lines[-1] = candidate
            continue
        while measure(word, font=font) > width_px and len(word) > 1:
            fits = (
                n for n in range(len(word) - 1, 0, -1) if measure(word[:n], font=font) <= width_px
            )
            cut = next(fits, 1)
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    if len(lines) > max_lines:
        lines = [*lines[: max_lines - 1], _fit(" ".join(lines[max_lines - 1 :]), width_px)]
    return lines


def _legend_entries(
    classes: Sequence[ClassInfo], labels: npt.NDArray[np.generic], rows: int = MAX_LEGEND_ROWS
) -> list[tuple[int | None, str]]:
    """Every class when there are few; else the classes present in the preview."""
    values = list(range(len(classes)))
    if len(classes) > 12:
        present = np.unique(np.asarray(labels))
        values = [int(v) for v in present if v < len(classes)] or values
    shown = values if len(values) <= rows else values[: rows - 1]
    entries: list[tuple[int | None, str]] = [(v, classes[v].name) for v in shown]
    if len(values) > len(shown):
        entries.append((None, f"... and {len(values) - len(shown)} more"))
    return entries


def _fit(text: str, width_px: int, char_px: int = 8) -> str:
    limit = max(4, width_px // char_px)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


__all__ = [
    "choose_bands",
    "decimated_labels",
    "overlay",
    "preview",
    "render_raster",
    "render_volume",
    "stretch",
]
