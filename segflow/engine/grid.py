"""Pure integer geometry of patches, chunks and regions; no I/O, no torch.

One global patch grid covers the whole image. Everything else (which
patches a chunk needs, where a patch lands inside a chunk) is derived from
it, which is why the output cannot depend on how the work is chunked.

Along one axis of length ``L`` with patch ``P`` and stride ``S`` the patch
starts are ``0, S, 2S, ...`` and a last patch aligned to the end at ``L - P``,
so no patch hangs over the far edge. Only an axis shorter than the patch has a
patch reaching past the image; that part is padded.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from segflow.errors import ConfigError

Index = tuple[int, ...]
Region = tuple[slice, ...]


def coerce_shape(value: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    """Turn a scalar or a sequence into a per-axis tuple of positive ints."""
    values = (value,) * ndim if isinstance(value, int) else tuple(int(v) for v in value)
    if len(values) != ndim:
        raise ConfigError(f"{name} needs {ndim} values, got {len(values)}: {tuple(values)}")
    if any(v < 1 for v in values):
        raise ConfigError(f"{name} must be positive, got {values}")
    return values


def coerce_overlap(
    overlap: float | int | Sequence[float | int], patch: tuple[int, ...]
) -> tuple[int, ...]:
    """Overlap in pixels per axis; a float in [0, 1) is a fraction of the patch."""
    values = (overlap,) * len(patch) if isinstance(overlap, int | float) else tuple(overlap)
    if len(values) != len(patch):
        raise ConfigError(f"overlap needs {len(patch)} values, got {len(values)}")
    pixels = []
    for v, p in zip(values, patch, strict=True):
        if isinstance(v, float) and v < 1.0:
            if v < 0.0:
                raise ConfigError(f"overlap fraction must be in [0, 1), got {v}")
            px = round(v * p)
        elif float(v).is_integer():
            px = int(v)
        else:
            raise ConfigError(f"overlap must be a fraction below 1 or whole pixels, got {v}")
        if not 0 <= px < p:
            raise ConfigError(f"overlap of {px} px does not fit a patch of {p} px")
        pixels.append(px)
    return tuple(pixels)


def axis_starts(length: int, patch: int, stride: int) -> tuple[int, ...]:
    """Patch starts along one axis, the last one aligned to the end."""
    if length <= patch:
        return (0,)
    starts = list(range(0, length - patch, stride))
    starts.append(length - patch)
    return tuple(starts)


def axis_cuts(starts: tuple[int, ...], patch: int) -> tuple[int, ...]:
    """Boundaries between neighbouring patches' "valid" cores (middle of each overlap)."""
    return tuple((a + patch + b) // 2 for a, b in itertools.pairwise(starts))


@dataclass(frozen=True)
class PatchGrid:
    """The global patch grid of one image."""

    shape: tuple[int, ...]
    patch: tuple[int, ...]
    starts: tuple[tuple[int, ...], ...]  # per axis

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.starts)

    def __len__(self) -> int:
        n = 1
        for c in self.counts:
            n *= c
        return n

    def origin(self, index: Index) -> tuple[int, ...]:
        return tuple(s[i] for s, i in zip(self.starts, index, strict=True))

    def extent(self, index: Index) -> Region:
        """The patch's extent in image coordinates (may pass the far edge on short axes)."""
        return tuple(slice(o, o + p) for o, p in zip(self.origin(index), self.patch, strict=True))

    def indices(self) -> Iterator[Index]:
        return itertools.product(*(range(c) for c in self.counts))

    def touching(self, region: Region) -> list[Index]:
        """Indices of the patches that overlap ``region``, in global (row-major) order."""
        per_axis = []
        for starts, p, sl in zip(self.starts, self.patch, region, strict=True):
            # start < stop and start + p > begin
            lo = bisect_right(starts, sl.start - p)
            hi = bisect_left(starts, sl.stop)
            per_axis.append(range(lo, hi))
        return list(itertools.product(*per_axis))

    def core(self, index: Index) -> Region:
        """The part of the image this patch alone is responsible for (center-crop blending).

        Cores tile the image exactly: each pixel belongs to the patch whose
        centre is nearest along every axis.
        """
        bounds = []
        for axis, i in enumerate(index):
            starts, p = self.starts[axis], self.patch[axis]
            cuts = axis_cuts(starts, p)
            lo = 0 if i == 0 else cuts[i - 1]
            hi = self.shape[axis] if i == len(starts) - 1 else cuts[i]
            bounds.append(slice(lo, hi))
        return tuple(bounds)


def make_grid(
    shape: Sequence[int],
    patch: int | Sequence[int],
    overlap: float | int | Sequence[float | int],
) -> PatchGrid:
    shape_t = coerce_shape(tuple(shape), len(shape), "image shape")
    patch_t = coerce_shape(patch, len(shape_t), "patch size")
    overlap_px = coerce_overlap(overlap, patch_t)
    starts = tuple(
        axis_starts(n, p, p - o) for n, p, o in zip(shape_t, patch_t, overlap_px, strict=True)
    )
    return PatchGrid(shape=shape_t, patch=patch_t, starts=starts)


def chunk_grid_shape(shape: Sequence[int], chunk: Sequence[int]) -> tuple[int, ...]:
    return tuple(-(-n // c) for n, c in zip(shape, chunk, strict=True))


def chunk_region(index: Index, shape: Sequence[int], chunk: Sequence[int]) -> Region:
    """Chunk ``index`` of a regular chunking, clipped at the image edge."""
    return tuple(
        slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, chunk, shape, strict=True)
    )


def iter_chunks(shape: Sequence[int], chunk: Sequence[int]) -> Iterator[Index]:
    return itertools.product(*(range(n) for n in chunk_grid_shape(shape, chunk)))


def intersect(a: Region, b: Region) -> Region | None:
    """Overlap of two regions, or None when they do not meet."""
    out = []
    for x, y in zip(a, b, strict=True):
        lo, hi = max(x.start, y.start), min(x.stop, y.stop)
        if lo >= hi:
            return None
        out.append(slice(lo, hi))
    return tuple(out)


def shift(region: Region, origin: Sequence[int]) -> Region:
    """Express ``region`` relative to ``origin``."""
    return tuple(slice(s.start - o, s.stop - o) for s, o in zip(region, origin, strict=True))


def union(regions: Sequence[Region]) -> Region:
    """Bounding box of several regions."""
    return tuple(
        slice(min(r[a].start for r in regions), max(r[a].stop for r in regions))
        for a in range(len(regions[0]))
    )


def clip(region: Region, shape: Sequence[int]) -> Region:
    return tuple(slice(max(s.start, 0), min(s.stop, n)) for s, n in zip(region, shape, strict=True))


def region_shape(region: Region) -> tuple[int, ...]:
    return tuple(s.stop - s.start for s in region)


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
