"""Export a raster store's labels as a Cloud Optimized GeoTIFF, and check COG layout.

The labels are copied window by window (tile-aligned, each window a few store chunks)
into a tiled temporary GeoTIFF beside the output; GDAL's COG driver then copies that
into the final file, building the internal overviews (mode or nearest, nodata ignored)
through its block cache. Neither step holds the raster in memory: peak memory is a
few windows plus GDAL's cache (``GDAL_CACHEMAX``, set here).

The COG keeps the store's CRS (its WKT, unchanged) and transform, the label nodata,
a colour table (class colours; nodata transparent), the band description and the
class names as tags (``CLASS_<value>`` on the band, ``SEGFLOW_CLASSES`` as JSON).

:func:`check_cog` reads the TIFF structure itself (IFDs, tile offsets, GDAL's ghost
header) and applies the rules of GDAL's ``validate_cloud_optimized_geotiff.py``.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
import rasterio
import rasterio.shutil
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.transform import Affine
from rasterio.windows import Window

from segflow.classes import ClassInfo, default_colors
from segflow.errors import ConfigError, OutputError
from segflow.io.export_common import open_exportable, prepare_target
from segflow.io.source import RasterGeometry
from segflow.io.zarr_sink import ZarrSink
from segflow.options import Resampling
from segflow.version import __version__

DEFAULT_BLOCKSIZE = 512
CACHE_MB = 256  # GDAL block cache while writing: bounds memory whatever the raster size
COMPRESSIONS = ("deflate", "lzw", "zstd", "none")


# --- export -----------------------------------------------------------------------------------


def export_cog(
    store: str | os.PathLike[str] | ZarrSink,
    output: str | os.PathLike[str],
    *,
    resampling: str | Resampling = Resampling.MODE,
    compress: str = "deflate",
    blocksize: int = DEFAULT_BLOCKSIZE,
    overwrite: bool = False,
    workers: int | None = None,
) -> Path:
    """Write the labels of a complete raster store to ``output`` as a COG; returns its path."""
    method = Resampling.parse(resampling)
    sink, geometry = open_exportable(
        store, RasterGeometry, "is a volume output; export it with --to nifti"
    )
    if compress.lower() not in COMPRESSIONS:
        raise ConfigError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compress!r}")
    if blocksize < 16 or blocksize % 16:
        raise ConfigError(f"COG block size must be a multiple of 16, got {blocksize}")
    target = Path(output).expanduser()
    prepare_target(target, overwrite, ".tif")

    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".tmp.tif", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    part = target.with_name(f".{target.name}.part")
    threads = workers or min(4, os.cpu_count() or 1)
    try:
        with rasterio.Env(GDAL_CACHEMAX=CACHE_MB), warnings.catch_warnings():
            # a store without georeferencing gives a COG without it, on purpose
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            _write_tiled(sink, geometry, tmp, blocksize, threads)
            rasterio.shutil.copy(
                tmp,
                part,
                driver="COG",
                BLOCKSIZE=blocksize,
                COMPRESS=compress.upper(),
                OVERVIEW_RESAMPLING=method.value.upper(),
                BIGTIFF="IF_SAFER",
                NUM_THREADS=str(threads),
            )
        os.replace(part, target)
    except (RasterioError, OSError) as exc:
        part.unlink(missing_ok=True)
        raise OutputError(f"cannot write {target}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return target


def display_colors(classes: Sequence[ClassInfo]) -> list[tuple[int, int, int]]:
    """The classes' colours; the default palette when none was set (all black)."""
    colors = [tuple(int(v) for v in c.color) for c in classes]
    if all(c == (0, 0, 0) for c in colors):
        return default_colors(len(classes))
    return [(c[0], c[1], c[2]) for c in colors]


def cog_tags(sink: ZarrSink) -> tuple[dict[str, str], dict[str, str]]:
    """Dataset tags and band tags that name the classes and where the labels came from."""
    classes = [
        {"value": v, "name": c.name, "color": list(rgb)}
        for v, (c, rgb) in enumerate(zip(sink.classes, display_colors(sink.classes), strict=True))
    ]
    provenance = sink.attrs
    source = provenance.get("input", {}) if isinstance(provenance.get("input"), dict) else {}
    model = provenance.get("model", {}) if isinstance(provenance.get("model"), dict) else {}
    dataset = {
        "SEGFLOW_CLASSES": json.dumps(classes),
        "SEGFLOW_NODATA": str(sink.label_nodata),
        "SEGFLOW_VERSION": __version__,
        "SEGFLOW_STORE": str(sink.path),
    }
    if source.get("path"):
        dataset["SEGFLOW_INPUT"] = str(source["path"])
    if model.get("sha256"):
        dataset["SEGFLOW_MODEL_SHA256"] = str(model["sha256"])
    band = {f"CLASS_{v}": c.name for v, c in enumerate(sink.classes)}
    return dataset, band


def colormap(sink: ZarrSink) -> dict[int, tuple[int, int, int, int]]:
    """Class colours, opaque; the nodata label transparent."""
    table = {v: (r, g, b, 255) for v, (r, g, b) in enumerate(display_colors(sink.classes))}
    table[sink.label_nodata] = (0, 0, 0, 0)
    return table


def _write_tiled(
    sink: ZarrSink, geometry: RasterGeometry, path: Path, blocksize: int, threads: int
) -> None:
    height, width = sink.layout.spatial_shape
    profile: dict[str, Any] = dict(
        driver="GTiff",
        width=width,
        height=height,
        count=1,
        dtype=sink.label_dtype.name,
        nodata=sink.label_nodata,
        tiled=True,
        blockxsize=blocksize,
        blockysize=blocksize,
        compress="DEFLATE",
        zlevel=1,
        BIGTIFF="IF_SAFER",  # a scratch copy: fast, small
    )
    if geometry.crs_wkt is not None:
        profile["crs"] = rasterio.crs.CRS.from_wkt(geometry.crs_wkt)
    if geometry.georeferenced:
        profile["transform"] = Affine(*geometry.transform)
    dataset_tags, band_tags = cog_tags(sink)
    array = sink.labels_array()
    with rasterio.open(path, "w", **profile) as dst:
        dst.write_colormap(1, colormap(sink))
        dst.set_band_description(1, "class label")
        dst.update_tags(**dataset_tags)
        dst.update_tags(1, **band_tags)
        for window, block in _prefetch(array, _windows(sink, blocksize), threads):
            dst.write(block, 1, window=window)


def _windows(sink: ZarrSink, blocksize: int) -> list[Window]:
    """Tile-aligned windows of about one store chunk, so every tile is written once."""
    height, width = sink.layout.spatial_shape
    ch, cw = sink.layout.chunk_shape
    sy = max(blocksize, -(-ch // blocksize) * blocksize)
    sx = max(blocksize, -(-cw // blocksize) * blocksize)
    return [
        Window(c, r, min(sx, width - c), min(sy, height - r))
        for r in range(0, height, sy)
        for c in range(0, width, sx)
    ]


def _prefetch(
    array: Any, windows: list[Window], threads: int
) -> Iterator[tuple[Window, npt.NDArray[np.generic]]]:
    """Read windows from the store on threads, at most ``2 * threads`` ahead of the writer."""

    def read(w: Window) -> npt.NDArray[np.generic]:
        return np.asarray(array[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width])

    pending: deque[tuple[Window, Future[npt.NDArray[np.generic]]]] = deque()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        it = iter(windows)
        for w in it:
            pending.append((w, pool.submit(read, w)))
            if len(pending) >= 2 * threads:
                break
        while pending:
            w, job = pending.popleft()
            yield w, job.result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(read, nxt)))


# --- checking ---------------------------------------------------------------------------------


@dataclass
class TiffImage:
    """One IFD of a TIFF file, as much as COG checks need."""

    ifd_offset: int
    width: int
    height: int
    subfile_type: int  # bit 0: reduced resolution (overview); bit 2: transparency mask
    tiled: bool
    block_width: int
    block_height: int
    offsets: list[int] = field(default_factory=list)
    byte_counts: list[int] = field(default_factory=list)

    @property
    def is_overview(self) -> bool:
        return bool(self.subfile_type & 1) and not self.subfile_type & 4

    @property
    def is_mask(self) -> bool:
        return bool(self.subfile_type & 4)


@dataclass
class CogReport:
    errors: list[str]
    warnings: list[str]
    details: dict[str, Any]

    @property
    def valid(self) -> bool:
        return not self.errors


_TYPE_SIZES = {
    1: 1,
    2: 1,
    3: 2,
    4: 4,
    5: 8,
    6: 1,
    7: 1,
    8: 2,
    9: 4,
    10: 8,
    11: 4,
    12: 8,
    16: 8,
    17: 8,
    18: 8,
}
_TYPE_CODES = {1: "B", 3: "H", 4: "I", 8: "h", 9: "i", 16: "Q", 17: "q", 18: "Q"}
_GHOST = "GDAL_STRUCTURAL_METADATA_SIZE="


def read_tiff_structure(path: str | os.PathLike[str]) -> tuple[bool, str, list[TiffImage]]:
    """(bigtiff, ghost metadata text, images in IFD order) read straight from the file."""
    with open(path, "rb") as f:
        head = f.read(16)
        if head[:2] not in (b"II", b"MM"):
            raise OutputError(f"{path} is not a TIFF file")
        order = "<" if head[:2] == b"II" else ">"
        version = struct.unpack(order + "H", head[2:4])[0]
        if version == 42:
            big, first = False, struct.unpack(order + "I", head[4:8])[0]
        elif version == 43:
            big, first = True, struct.unpack(order + "Q", head[8:16])[0]
        else:
            raise OutputError(f"{path} is not a TIFF file (version {version})")
        f.seek(16 if big else 8)
        ghost_head = f.read(len(_GHOST) + 13).decode("latin-1")
        ghost = ""
        if ghost_head.startswith(_GHOST):
            size = int(ghost_head[len(_GHOST) : len(_GHOST) + 6])
            ghost = ghost_head + f.read(size).decode("latin-1")
        images: list[TiffImage] = []
        offset, seen = first, set()
        while offset and offset not in seen:
            seen.add(offset)
            here = offset
            tags, offset = _read_ifd(f, order, big, offset)
            tiled = 322 in tags
            width, height = int(tags[256][0]), int(tags[257][0])
            images.append(
                TiffImage(
                    ifd_offset=here,
                    width=width,
                    height=height,
                    subfile_type=int(tags.get(254, [0])[0]),
                    tiled=tiled,
                    block_width=int(tags[322][0]) if tiled else width,
                    block_height=int(tags[323][0]) if tiled else int(tags.get(278, [height])[0]),
                    offsets=[int(v) for v in tags.get(324 if tiled else 273, [])],
                    byte_counts=[int(v) for v in tags.get(325 if tiled else 279, [])],
                )
            )
    return big, ghost, images


def _read_ifd(f: BinaryIO, order: str, big: bool, offset: int) -> tuple[dict[int, list[int]], int]:
    f.seek(offset)
    count_fmt, entry_size, value_size = ("Q", 20, 8) if big else ("H", 12, 4)
    (count,) = struct.unpack(order + count_fmt, f.read(8 if big else 2))
    raw = f.read(count * entry_size)
    (next_offset,) = struct.unpack(order + ("Q" if big else "I"), f.read(value_size))
    wanted = {254, 256, 257, 273, 278, 279, 322, 323, 324, 325}
    tags: dict[int, list[int]] = {}
    for n in range(count):
        entry = raw[n * entry_size : (n + 1) * entry_size]
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag not in wanted or kind not in _TYPE_CODES:
            continue
        (n_values,) = struct.unpack(order + ("Q" if big else "I"), entry[4 : 4 + value_size])
        size = _TYPE_SIZES[kind] * n_values
        payload = entry[4 + value_size :]
        if size > value_size:
            (where,) = struct.unpack(order + ("Q" if big else "I"), payload)
            here = f.tell()
            f.seek(where)
            payload = f.read(size)
            f.seek(here)
        tags[tag] = list(struct.unpack(order + _TYPE_CODES[kind] * n_values, payload[:size]))
    return tags, int(next_offset)


def check_cog(path: str | os.PathLike[str], *, full_check: bool = True) -> CogReport:
    """Check ``path`` against GDAL's COG rules; ``report.valid`` is True when no errors.

    Errors: not tiled when larger than 512 px, overviews not by decreasing size or not
    tiled, main IFD not at the start (after GDAL's ghost header), IFDs not in level order
    or not all before the image data, image data not ordered smallest overview first and
    full resolution last, and (``full_check``) blocks out of the row-major order or with
    leader/trailer bytes that do not match what the ghost header declares. Warnings: no
    overviews on an image larger than 512 px.
    """
    errors: list[str] = []
    warnings: list[str] = []
    big, ghost, images = read_tiff_structure(path)
    main = images[0]
    overviews = [im for im in images if im.is_overview]
    if main.width > 512 or main.height > 512:
        if not main.tiled:
            errors.append("the image is larger than 512 px but not tiled")
        if not overviews:
            warnings.append("the image is larger than 512 px but has no internal overviews")
    if "KNOWN_INCOMPATIBLE_EDITION=YES" in ghost:
        errors.append("the file declares KNOWN_INCOMPATIBLE_EDITION=YES (edited after creation)")
    expected = 16 if big else 8
    if ghost:
        expected += len(ghost)
        expected += expected % 2  # IFDs start on a word boundary
    if main.ifd_offset != expected:
        errors.append(f"the main IFD is at byte {main.ifd_offset}, expected {expected}")
    previous = main
    for n, ovr in enumerate(overviews):
        if ovr.width > previous.width or ovr.height > previous.height:
            errors.append(f"overview {n} is larger than the level before it")
        if not ovr.tiled and ovr.width > 1024:
            errors.append(f"overview {n} is not tiled")
        if ovr.ifd_offset < previous.ifd_offset:
            errors.append(f"the IFD of overview {n} comes before the one of the level above it")
        previous = ovr
    levels = [main, *overviews]
    first_blocks = [min((o for o in im.offsets if o), default=0) for im in levels]
    data_start = min((o for im in images for o in im.offsets if o), default=0)
    if data_start and max(im.ifd_offset for im in images) > data_start:
        errors.append("not all IFDs come before the image data")
    for n in range(len(levels) - 1, 0, -1):
        if first_blocks[n - 1] < first_blocks[n]:
            which = "the full-resolution image" if n == 1 else f"overview {n - 2}"
            errors.append(f"the data of {which} comes before the data of overview {n - 1}")
    if full_check and ghost:
        errors += _check_blocks(path, levels, ghost)
    details = {
        "bigtiff": big,
        "ghost_header": ghost.strip().splitlines(),
        "size": [main.height, main.width],
        "block": [main.block_height, main.block_width],
        "overviews": [[o.height, o.width] for o in overviews],
        "ifd_offsets": [im.ifd_offset for im in levels],
        "first_block_offsets": first_blocks,
    }
    return CogReport(errors, warnings, details)


def _check_blocks(path: str | os.PathLike[str], levels: list[TiffImage], ghost: str) -> list[str]:
    row_major = "BLOCK_ORDER=ROW_MAJOR" in ghost
    leader = "BLOCK_LEADER=SIZE_AS_UINT4" in ghost
    trailer = "BLOCK_TRAILER=LAST_4_BYTES_REPEATED" in ghost
    errors: list[str] = []
    with open(path, "rb") as f:
        for n, im in enumerate(levels):
            name = "full resolution" if n == 0 else f"overview {n - 1}"
            last = 0
            for b, (offset, count) in enumerate(zip(im.offsets, im.byte_counts, strict=False)):
                if offset == 0:
                    continue  # sparse block
                if row_major and offset < last:
                    errors.append(f"{name}: block {b} is stored before the block preceding it")
                    break
                last = offset
                if leader:
                    f.seek(offset - 4)
                    if struct.unpack("<I", f.read(4))[0] != count:
                        errors.append(f"{name}: block {b} leader does not hold its size")
                        break
                if trailer and count >= 4:
                    f.seek(offset + count - 4)
                    tail = f.read(8)
                    if tail[:4] != tail[4:8]:
                        errors.append(f"{name}: block {b} trailer bytes are wrong")
                        break
    return errors
