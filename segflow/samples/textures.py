"""Noise and texture helpers for the built-in sample generators (numpy only).

The 2D functions are pure functions of *global* integer pixel coordinates and a
key derived from the seed: any window of a scene is bit-identical to the same
part of the whole scene. To keep that true they use integer hashing and plain
float arithmetic only (no transcendental functions per pixel, no reductions
whose order depends on the window), and they are separable, so a window of
``h x w`` pixels costs ``O(h * w)`` whatever the noise scale.

The N-D helper for volumes (:func:`smooth_field`) draws from a numpy Generator:
volumes are generated whole, only determinism per seed matters there.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from segflow.errors import ConfigError

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
U32 = npt.NDArray[np.uint32]
IntLike = int | npt.NDArray[np.integer]

_GOLDEN = 0x9E3779B9
_TWO_POW_M24 = 1.0 / (1 << 24)

# 16 unit gradient directions (cos, sin of k * 22.5 deg): a table lookup instead
# of cos/sin per lattice point keeps the noise free of libm differences.
_ANGLES = np.arange(16) * (2.0 * np.pi / 16.0)
_GRAD_X = np.cos(_ANGLES).astype(np.float32)
_GRAD_Y = np.sin(_ANGLES).astype(np.float32)

# Empirical standard deviation of one Perlin octave (2D, quintic fade): used to
# bring fBm to roughly unit standard deviation so thresholds read as z-scores.
_PERLIN_STD = 0.2175


def mix32(h: U32) -> U32:
    """Avalanche a uint32 array (Wellons' lowbias32): every input bit flips ~half the output."""
    with np.errstate(over="ignore"):  # wrap-around is the point (numpy warns on scalars)
        h = h ^ (h >> np.uint32(16))
        h = h * np.uint32(0x7FEB352D)
        h = h ^ (h >> np.uint32(15))
        h = h * np.uint32(0x846CA68B)
        return h ^ (h >> np.uint32(16))


def _as_u32(value: IntLike) -> U32:
    # int64 -> uint32 wraps modulo 2**32, which is all a hash needs (negatives included).
    return np.asarray(value, dtype=np.int64).astype(np.uint32)


def check_seed(seed: int) -> int:
    """A seed must be an integer in [0, 2**63)."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**63:
        raise ConfigError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    return int(seed)


def layer_key(seed: int, name: str) -> int:
    """A 32-bit key for one named noise layer of one seed."""
    h = mix32(np.array([(seed * _GOLDEN) & 0xFFFFFFFF], dtype=np.uint32))
    h = mix32(h ^ np.uint32(zlib.crc32(name.encode()) & 0xFFFFFFFF))
    h = mix32(h + _as_u32(seed >> 32))
    return int(h[0])


def hash2(key: int, iy: IntLike, ix: IntLike) -> U32:
    """Hash integer lattice coordinates (broadcast together) with a layer key."""
    with np.errstate(over="ignore"):
        h = mix32(np.uint32(key) ^ _as_u32(iy) * np.uint32(0x27D4EB2F))
        return mix32(h + _as_u32(ix) * np.uint32(0x165667B1))


def uniform2(key: int, iy: IntLike, ix: IntLike) -> F64:
    """Uniform values in [0, 1) at integer lattice coordinates (24-bit resolution)."""
    return (hash2(key, iy, ix) >> np.uint32(8)).astype(np.float64) * _TWO_POW_M24


@lru_cache(maxsize=1)
def _normal_table() -> F32:
    """65536 standard-normal values made once by Box-Muller from hashed uniforms."""
    idx = np.arange(1 << 16)
    u1 = (uniform2(0x5EED, idx, 1) + 0.5 * _TWO_POW_M24).clip(1e-12, 1.0)
    u2 = uniform2(0x5EED, idx, 2)
    table = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    table = (table - table.mean()) / table.std()
    out: F32 = table.astype(np.float32)
    return out


def normal2(key: int, rows: npt.NDArray[np.integer], cols: npt.NDArray[np.integer]) -> F32:
    """Per-pixel standard-normal noise at global ``rows x cols`` (1D each), shape (h, w)."""
    h = hash2(key, rows[:, None], cols[None, :])
    out: F32 = _normal_table()[h >> np.uint32(16)]
    return out


def _fade(t: F64) -> F64:
    # Perlin's quintic fade 6t^5 - 15t^4 + 10t^3: C2-continuous across lattice cells.
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def _axis(coords: F64, cell: float) -> tuple[npt.NDArray[np.int64], F64, int, int]:
    """Lattice index, fraction, and lattice range [lo, hi] covering 1D coordinates."""
    f = coords / cell
    i = np.floor(f).astype(np.int64)
    lo = int(i.min())
    hi = int(i.max()) + 1
    return i, f - i, lo, hi


def perlin2(rows: F64, cols: F64, *, cell: float, key: int) -> F32:
    """One octave of 2D gradient (Perlin) noise on the grid ``rows x cols``.

    ``rows``/``cols`` are 1D global coordinates in pixels (usually pixel
    centres); ``cell`` is the lattice spacing in pixels. Values lie in about
    [-0.7, 0.7]. Separable evaluation: first along x for every lattice row that
    the window touches, then along y.
    """
    iy, ty, ly0, ly1 = _axis(np.asarray(rows, dtype=np.float64), cell)
    ix, tx, lx0, lx1 = _axis(np.asarray(cols, dtype=np.float64), cell)
    lat_y = np.arange(ly0, ly1 + 1)
    lat_x = np.arange(lx0, lx1 + 1)
    g = hash2(key, lat_y[:, None], lat_x[None, :]) >> np.uint32(28)  # 16 directions
    gx, gy = _GRAD_X[g], _GRAD_Y[g]  # (Ly, Lx)

    jx = ix - lx0
    wx1 = _fade(tx).astype(np.float32)
    wx0 = np.float32(1.0) - wx1
    tx32 = tx.astype(np.float32)
    # along x: a = sum_b w_b * gx * (tx - b), c = sum_b w_b * gy, for every lattice row
    a = wx0 * gx[:, jx] * tx32 + wx1 * gx[:, jx + 1] * (tx32 - np.float32(1.0))
    c = wx0 * gy[:, jx] + wx1 * gy[:, jx + 1]

    jy = iy - ly0
    wy1 = _fade(ty).astype(np.float32)[:, None]
    wy0 = np.float32(1.0) - wy1
    ty32 = ty.astype(np.float32)[:, None]
    top = a[jy] + c[jy] * ty32
    bottom = a[jy + 1] + c[jy + 1] * (ty32 - np.float32(1.0))
    out: F32 = wy0 * top + wy1 * bottom
    return out


def fbm2(
    rows: F64,
    cols: F64,
    *,
    cell: float,
    key: int,
    octaves: int = 4,
    persistence: float = 0.5,
    lacunarity: float = 2.0,
) -> F32:
    """Fractal Brownian motion of Perlin octaves, scaled to about unit standard deviation.

    ``cell`` is the lattice spacing of the coarsest octave; each further octave
    is ``lacunarity`` times finer with ``persistence`` times the amplitude.
    """
    total: F32 | None = None
    amp, norm, c = 1.0, 0.0, float(cell)
    for octave in range(octaves):
        layer = perlin2(
            rows,
            cols,
            cell=c,
            key=int(mix32(np.array([(key + octave) & 0xFFFFFFFF], dtype=np.uint32))[0]),
        )
        layer *= np.float32(amp)
        total = layer if total is None else total + layer
        norm += amp * amp
        amp *= persistence
        c /= lacunarity
    assert total is not None, "octaves must be >= 1"
    total *= np.float32(1.0 / (_PERLIN_STD * np.sqrt(norm)))
    return total


def pixel_centres(start: int, stop: int) -> F64:
    """Global coordinates of pixel centres ``start + 0.5 .. stop - 0.5``."""
    return np.arange(start, stop, dtype=np.float64) + 0.5


def smoothstep(edge0: float, edge1: float, x: F32) -> F32:
    """0 below ``edge0``, 1 above ``edge1``, a smooth cubic ramp between."""
    t = np.clip((x - np.float32(edge0)) * np.float32(1.0 / (edge1 - edge0)), 0.0, 1.0)
    out: F32 = (t * t * (np.float32(3.0) - np.float32(2.0) * t)).astype(np.float32)
    return out


def smooth_field(
    shape: tuple[int, ...], cell: float, rng: np.random.Generator
) -> npt.NDArray[np.float32]:
    """A smooth random field of about unit standard deviation (N-D value noise).

    A coarse lattice of normals with spacing ``cell`` voxels, interpolated
    axis by axis with the quintic fade: cheap and C2-smooth, for volumes.
    """
    lattice_shape = tuple(int(np.ceil(n / cell)) + 2 for n in shape)
    field = rng.standard_normal(lattice_shape).astype(np.float32)
    for axis, n in enumerate(shape):
        f = (np.arange(n, dtype=np.float64) + 0.5) / cell
        i = np.floor(f).astype(np.int64)
        w1 = _fade(f - i).astype(np.float32)
        bshape = [1] * len(shape)
        bshape[axis] = n
        w1b = w1.reshape(bshape)
        lo = np.take(field, i, axis=axis)
        hi = np.take(field, i + 1, axis=axis)
        field = lo + (hi - lo) * w1b
    # interpolation shrinks the variance; rescale to ~unit std over the field
    std = float(field.std())
    return (field / np.float32(std if std > 0 else 1.0)).astype(np.float32)
