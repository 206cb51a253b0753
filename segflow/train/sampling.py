"""Random training patches read straight from large inputs, through the lazy readers.

An image and its mask (GeoTIFF pair on one grid, or NIfTI image/label pair)
are opened as two :class:`~segflow.io.source.Source` objects; each patch is
one windowed read of each, so memory is bounded by the patch, never by the
scene. Pixels that must not train are set to the ignore index: mask nodata,
image nodata / NaN, and padding where a patch overhangs a small input.
Class-balanced sampling draws a target class first and then looks (reading
only the cheap mask) for a window that holds it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from segflow.errors import ConfigError
from segflow.io.open import RASTER_SUFFIXES, VOLUME_SUFFIXES, open_source, source_kind
from segflow.io.orientation import AxisTransform, apply_transform, orientation_transform
from segflow.io.source import RasterGeometry, Region, Source, VolumeGeometry

MASK_SUFFIXES = ("_mask", "_masks", "_label", "_labels", "_truth", "_seg", "_gt")
_BALANCE_GIVE_UP = 6  # failed searches in a row before a class counts as absent
_EMPTY_RETRIES = 20  # redraws of a patch without a single trainable pixel


@dataclass(frozen=True)
class TrainPair:
    """Paths of one training image and its mask / label volume."""

    image: Path
    mask: Path


@dataclass
class OpenPair:
    """An opened image/mask pair on one grid.

    ``transform`` turns file voxel order into the model's orientation (volumes
    only); ``bounds`` limits where patches may come from (a hold-out split).
    """

    image: Source
    mask: Source
    transform: AxisTransform | None = None
    bounds: tuple[slice, ...] | None = None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.image.spatial_shape)

    def extent(self) -> tuple[slice, ...]:
        return self.bounds or tuple(slice(0, n) for n in self.spatial_shape)


@dataclass
class Sample:
    """One training patch: raw image ``(C, *patch)``, labels ``(*patch)`` int64, validity."""

    image: npt.NDArray[np.float32]
    mask: npt.NDArray[np.int64]
    valid: npt.NDArray[np.bool_]
    pair: int
    region: Region = field(default=())


# ---------------------------------------------------------------------------
# finding and opening pairs


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (*VOLUME_SUFFIXES, *RASTER_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and source_kind(p) is not None)


def _is_mask_name(path: Path) -> bool:
    return _stem(path).lower().endswith(MASK_SUFFIXES)


def _find_mask(image: Path, candidates: Sequence[Path]) -> Path | None:
    stem = _stem(image).lower()
    by_stem = {_stem(p).lower(): p for p in candidates if p != image}
    for name in (stem, *(stem + s for s in MASK_SUFFIXES)):
        if name in by_stem and source_kind(by_stem[name]) == source_kind(image):
            return by_stem[name]
    return None


def find_pairs(
    images: Sequence[str | os.PathLike[str]], masks: Sequence[str | os.PathLike[str]]
) -> list[TrainPair]:
    """Pairs from files given one to one, or from folders matched by file name.

    In a folder, the mask of ``scene.tif`` is ``scene.tif`` in the mask folder
    or ``scene_mask.tif`` (also ``_label``, ``_labels``, ``_truth``, ``_seg``,
    ``_gt``); images and masks may share one folder.
    """
    image_paths = [Path(p) for p in images]
    mask_paths = [Path(p) for p in masks]
    if not image_paths:
        raise ConfigError("no training images given")
    if not mask_paths:
        raise ConfigError("no masks given; pass one mask per image, or a folder of masks")
    if all(p.is_file() for p in (*image_paths, *mask_paths)):
        return _one_to_one(image_paths, mask_paths)
    for p in (*image_paths, *mask_paths):
        if not p.exists():
            raise ConfigError(f"training input not found: {p}")
    pairs = _matched_by_name(_expand(image_paths), _expand(mask_paths))
    if not pairs:
        raise ConfigError(f"no training images found in {', '.join(map(str, image_paths))}")
    return pairs


def _one_to_one(images: Sequence[Path], masks: Sequence[Path]) -> list[TrainPair]:
    if len(images) != len(masks):
        raise ConfigError(f"{len(images)} images but {len(masks)} masks; give one mask per image")
    return [TrainPair(i, m) for i, m in zip(images, masks, strict=True)]


def _expand(paths: Sequence[Path]) -> list[Path]:
    """Files as given, folders as the image files they hold."""
    files: list[Path] = []
    for p in paths:
        files.extend(_image_files(p) if p.is_dir() else [p])
    return files


def _matched_by_name(images: Sequence[Path], candidates: Sequence[Path]) -> list[TrainPair]:
    mask_set = set(candidates)
    pairs = []
    for image in images:
        if image in mask_set and _is_mask_name(image):
            continue  # a mask in a shared folder
        mask = _find_mask(image, candidates)
        if mask is None:
            raise ConfigError(
                f"no mask found for {image.name}; name it {_stem(image)}_mask"
                f"{image.name[len(_stem(image)) :]} (or the same name in the mask folder)"
            )
        pairs.append(TrainPair(image, mask))
    return pairs


def _same_crs(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return True
    if " ".join(a.split()) == " ".join(b.split()):
        return True
    from pyproj import CRS  # rasterio's WKT of one CRS can differ in form, not meaning

    try:
        return bool(CRS.from_wkt(a) == CRS.from_wkt(b))
    except Exception:
        return False


def check_same_grid(image: Source, mask: Source) -> None:
    """ConfigError (one line) unless image and mask cover the same pixels."""
    if image.kind != mask.kind:
        raise ConfigError(
            f"{image.path.name} is a {image.kind} but {mask.path.name} is a {mask.kind}"
        )
    if tuple(image.spatial_shape) != tuple(mask.spatial_shape):
        raise ConfigError(
            f"{mask.path.name} is {'x'.join(map(str, mask.spatial_shape))} but "
            f"{image.path.name} is {'x'.join(map(str, image.spatial_shape))}; "
            "image and mask must be on the same grid (resample the mask to the image)"
        )
    if mask.channels != 1:
        raise ConfigError(
            f"{mask.path.name} has {mask.channels} bands; a mask has one band of class ids"
        )
    gi, gm = image.geometry, mask.geometry
    if isinstance(gi, RasterGeometry) and isinstance(gm, RasterGeometry):
        if not (gi.georeferenced and gm.georeferenced):
            return  # a plain label TIFF matches by pixel grid alone
        pixel = max(abs(gi.transform[0]), abs(gi.transform[4]), 1e-12)
        if not np.allclose(gi.transform, gm.transform, rtol=0, atol=1e-6 * pixel + 1e-9):
            raise ConfigError(
                f"{mask.path.name} and {image.path.name} have different geotransforms "
                f"({gm.transform} vs {gi.transform}); image and mask must be on the same grid"
            )
        if not _same_crs(gi.crs_wkt, gm.crs_wkt):
            raise ConfigError(
                f"{mask.path.name} and {image.path.name} have different CRSs; "
                "reproject the mask onto the image grid"
            )
    elif (
        isinstance(gi, VolumeGeometry)
        and isinstance(gm, VolumeGeometry)
        and not np.allclose(gi.affine, gm.affine, rtol=0, atol=1e-3)
    ):
        raise ConfigError(
            f"{mask.path.name} and {image.path.name} have different affines; the label "
            "volume must be on the image's voxel grid"
        )


def open_pair(
    pair: TrainPair,
    *,
    bands: Sequence[int] | None = None,
    nodata: float | None = None,
    orientation: str | None = None,
) -> OpenPair:
    """Open image and mask lazily and check that they share one grid.

    ``orientation`` (volumes): axis codes the model wants, e.g. ``"RAS"``;
    patches are turned into it exactly (transposes and flips only).
    """
    image = open_source(pair.image, bands=bands, nodata=nodata)
    mask = open_source(pair.mask)
    check_same_grid(image, mask)
    if mask.dtype.kind not in "iub" and mask.dtype.kind != "f":
        raise ConfigError(f"{pair.mask.name} holds {mask.dtype} values, not class ids")
    transform = None
    if orientation is not None and isinstance(image.geometry, VolumeGeometry):
        t = orientation_transform(image.geometry.affine, orientation)
        transform = None if t.is_identity else t
    return OpenPair(image=image, mask=mask, transform=transform)


def split_holdout(pair: OpenPair, fraction: float) -> tuple[OpenPair, OpenPair]:
    """(train, validation) views of one pair: the last ``fraction`` of axis 0 is held out."""
    if not 0 < fraction < 1:
        raise ConfigError(f"validation fraction must be between 0 and 1, got {fraction}")
    n = pair.spatial_shape[0]
    cut = n - max(1, round(n * fraction))
    if cut < 1:
        raise ConfigError(
            f"{pair.image.path.name} is too small ({n} along axis 0) to hold out a validation part"
        )
    rest = tuple(slice(0, m) for m in pair.spatial_shape[1:])
    train = OpenPair(pair.image, pair.mask, pair.transform, (slice(0, cut), *rest))
    val = OpenPair(pair.image, pair.mask, pair.transform, (slice(cut, n), *rest))
    return train, val


# ---------------------------------------------------------------------------
# reading patches


def coerce_patch(patch: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    sizes = (int(patch),) * ndim if isinstance(patch, int) else tuple(int(v) for v in patch)
    if len(sizes) != ndim or any(s < 1 for s in sizes):
        raise ConfigError(f"patch size must be positive for each of {ndim} axes, got {patch!r}")
    return sizes


def file_patch(patch: tuple[int, ...], transform: AxisTransform | None) -> tuple[int, ...]:
    """Patch size in file voxel order for a patch given in model axes."""
    if transform is None:
        return patch
    out = [0] * len(patch)
    for d, p in enumerate(transform.perm):
        out[p] = patch[d]
    return tuple(out)


def read_patch(
    pair: OpenPair,
    region: Region,
    patch: tuple[int, ...],
    *,
    num_classes: int,
    ignore_index: int,
    pair_index: int = 0,
) -> Sample:
    """Read one region of image and mask, mask what must not train, pad to ``patch``.

    ``patch`` is in model axes (after the pair's orientation transform).
    """
    img = pair.image.read(region)
    lab = pair.mask.read(region)
    data = img.data.astype(np.float32)
    labels = lab.data[0]
    if labels.dtype.kind == "f":
        finite = np.isfinite(labels)
        labels = np.where(finite, np.rint(np.nan_to_num(labels)), ignore_index)
    labels = labels.astype(np.int64)
    trainable = img.valid & lab.valid & (labels != ignore_index)
    outside = trainable & ((labels < 0) | (labels >= num_classes))
    if outside.any():
        value = int(labels[outside][0])
        where = ", ".join(f"{s.start}:{s.stop}" for s in region)
        raise ConfigError(
            f"{pair.mask.path.name} holds class id {value} (in [{where}]) but the model has "
            f"{num_classes} classes (0..{num_classes - 1}); set --ignore-index {value} if it "
            "means 'unlabeled', or give the full class list"
        )
    labels[~trainable] = ignore_index
    valid = img.valid
    if pair.transform is not None:
        data = np.asarray(apply_transform(data, pair.transform, leading=1), dtype=np.float32)
        labels = np.asarray(apply_transform(labels, pair.transform), dtype=np.int64)
        valid = np.asarray(apply_transform(valid, pair.transform), dtype=bool)
    if tuple(labels.shape) != patch:
        data, labels, valid = _pad(data, labels, valid, patch, ignore_index)
    return Sample(data, labels, valid, pair_index, region)


def _pad(
    data: npt.NDArray[np.float32],
    labels: npt.NDArray[np.int64],
    valid: npt.NDArray[np.bool_],
    patch: tuple[int, ...],
    ignore_index: int,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    widths = [(0, max(0, p - n)) for p, n in zip(patch, labels.shape, strict=True)]
    data = np.pad(data, [(0, 0), *widths])
    labels = np.pad(labels, widths, constant_values=ignore_index)
    valid = np.pad(valid, widths, constant_values=False)
    return data, labels, valid


def random_region_in(
    extent: tuple[slice, ...], size: tuple[int, ...], rng: np.random.Generator
) -> Region:
    """A window of ``size`` placed uniformly inside ``extent`` (clipped when it is larger)."""
    region = []
    for sl, s in zip(extent, size, strict=True):
        n = sl.stop - sl.start
        s = min(s, n)
        start = sl.start + int(rng.integers(0, n - s + 1))
        region.append(slice(start, start + s))
    return tuple(region)


def tile_regions(extent: tuple[slice, ...], size: tuple[int, ...]) -> list[Region]:
    """Non-overlapping windows of ``size`` covering ``extent`` (the last ones may be smaller)."""
    axes = [
        [slice(a, min(a + s, sl.stop)) for a in range(sl.start, sl.stop, s)]
        for sl, s in zip(extent, size, strict=True)
    ]
    regions: list[Region] = [()]
    for choices in axes:
        regions = [(*r, c) for r in regions for c in choices]
    return regions


class PatchSampler:
    """Draws random training patches from a set of opened pairs.

    ``patch`` is in model axes (a ``1`` along a volume's slice axis trains a
    2-D model on slices). Pairs are chosen in proportion to their area.
    ``balance`` draws the target class uniformly, then searches up to
    ``balance_tries`` windows (mask reads only) for one that holds it.
    """

    def __init__(
        self,
        pairs: Sequence[OpenPair],
        patch: int | Sequence[int],
        num_classes: int,
        *,
        ignore_index: int = 255,
        balance: bool = False,
        balance_tries: int = 8,
    ) -> None:
        if not pairs:
            raise ConfigError("no training pairs to sample from")
        ndim = len(pairs[0].spatial_shape)
        if any(len(p.spatial_shape) != ndim for p in pairs):
            raise ConfigError("training inputs mix 2-D rasters and 3-D volumes; train them apart")
        channels = pairs[0].image.channels
        if any(p.image.channels != channels for p in pairs):
            found = sorted({p.image.channels for p in pairs})
            raise ConfigError(
                f"training images differ in channel count {found}; select the same bands"
            )
        self.pairs = list(pairs)
        self.patch = coerce_patch(patch, ndim)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.balance = balance
        self.balance_tries = max(1, balance_tries)
        self.channels = channels
        sizes = np.array(
            [math.prod(sl.stop - sl.start for sl in p.extent()) for p in self.pairs], float
        )
        self._weights = sizes / sizes.sum()
        self._misses = np.zeros(num_classes, dtype=np.int64)

    def reset(self) -> None:
        """Forget which classes looked absent (each epoch starts alike, so resuming is exact)."""
        self._misses[:] = 0

    def _draw_region(self, rng: np.random.Generator) -> tuple[int, Region]:
        index = int(rng.choice(len(self.pairs), p=self._weights))
        pair = self.pairs[index]
        return index, random_region_in(pair.extent(), file_patch(self.patch, pair.transform), rng)

    def _balanced_region(self, rng: np.random.Generator) -> tuple[int, Region]:
        present = np.flatnonzero(self._misses < _BALANCE_GIVE_UP)
        if present.size == 0:
            self._misses[:] = 0  # every class looked absent: start over rather than stop
            present = np.arange(self.num_classes)
        target = int(rng.choice(present))
        index, region = self._draw_region(rng)
        for _ in range(self.balance_tries):
            labels = self.pairs[index].mask.read(region)
            if bool((labels.data[0][labels.valid] == target).any()):
                self._misses[target] = 0
                return index, region
            index, region = self._draw_region(rng)
        self._misses[target] += 1
        return index, region

    def sample(self, rng: np.random.Generator) -> Sample:
        """One random patch with at least one trainable pixel (when the data has any)."""
        sample: Sample | None = None
        for _ in range(_EMPTY_RETRIES):
            index, region = self._balanced_region(rng) if self.balance else self._draw_region(rng)
            sample = self.read(index, region)
            if bool((sample.mask != self.ignore_index).any()):
                return sample
        assert sample is not None
        return sample

    def read(self, index: int, region: Region) -> Sample:
        return read_patch(
            self.pairs[index],
            region,
            self.patch,
            num_classes=self.num_classes,
            ignore_index=self.ignore_index,
            pair_index=index,
        )

    def tiles(self, limit: int | None = None, seed: int = 0) -> list[tuple[int, Region]]:
        """Windows tiling every pair's extent (for validation); a seeded subset above ``limit``."""
        out = [
            (i, r)
            for i, p in enumerate(self.pairs)
            for r in tile_regions(p.extent(), file_patch(self.patch, p.transform))
        ]
        if limit is not None and len(out) > limit:
            rng = np.random.default_rng(seed)
            keep = sorted(rng.choice(len(out), size=limit, replace=False).tolist())
            out = [out[k] for k in keep]
        return out
