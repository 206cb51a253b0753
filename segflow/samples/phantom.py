"""Synthetic abdominal phantom: a CT- or MR-like NIfTI volume with known labels.

A body ellipsoid (subcutaneous fat shell, soft tissue, visceral fat, bowel
gas, aorta and vena cava) holds deformed-ellipsoid organs: liver, two kidneys
(cortex and medulla), spleen and a segmented spine. Intensities are HU-like
for CT (or T1-like for MR), with partial-volume blur, a smooth bias and noise.

Labels follow voxel space: the phantom is laid out on the voxel axes (i, j, k)
and the affine only sets its geometry, so any affine (RAS, LPS, oblique) gives
the same arrays. With the default RAS affine the anatomy is where it belongs
(liver on the patient's right, spine posterior, head towards +k).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from segflow.errors import ConfigError, OutputError
from segflow.io.classes import ClassInfo
from segflow.io.nib import aff2axcodes, save_volume
from segflow.options import did_you_mean
from segflow.samples.textures import check_seed, smooth_field

BACKGROUND, BODY, LIVER, KIDNEY, SPLEEN, BONE = 0, 1, 2, 3, 4, 5
_CLASSES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("background", (0, 0, 0)),
    ("body", (205, 170, 140)),
    ("liver", (150, 60, 40)),
    ("kidney", (240, 150, 20)),
    ("spleen", (130, 50, 160)),
    ("bone", (240, 240, 225)),
)
MODALITIES = ("ct", "mr")
DEFAULT_SHAPE = (160, 160, 96)
DEFAULT_SPACING_MM = 1.5

# Tissues: the label each one belongs to, and its CT (HU) and T1-like MR value.
_TISSUES: tuple[tuple[str, int, float, float], ...] = (
    ("air", BACKGROUND, -1000.0, 0.0),
    ("fat", BODY, -95.0, 1000.0),
    ("soft", BODY, 35.0, 380.0),
    ("muscle", BODY, 52.0, 300.0),
    ("gas", BODY, -850.0, 0.0),
    ("aorta", BODY, 175.0, 150.0),
    ("cava", BODY, 130.0, 200.0),
    ("disc", BODY, 85.0, 250.0),
    ("liver", LIVER, 62.0, 540.0),
    ("liver_vessel", LIVER, 140.0, 320.0),
    ("spleen", SPLEEN, 47.0, 420.0),
    ("cortex", KIDNEY, 165.0, 480.0),
    ("medulla", KIDNEY, 95.0, 260.0),
    ("cancellous", BONE, 260.0, 700.0),
    ("cortical", BONE, 850.0, 40.0),
)
_T = {name: i for i, (name, *_rest) in enumerate(_TISSUES)}


def phantom_classes() -> list[ClassInfo]:
    """Classes of the phantom labels, in label-value order (0 background .. 5 bone)."""
    return [ClassInfo(name=name, color=color) for name, color in _CLASSES]


@dataclass(frozen=True)
class VolumeInfo:
    """What :func:`make_phantom_volume` wrote."""

    image_path: Path
    label_path: Path
    shape_ijk: tuple[int, int, int]
    affine: tuple[tuple[float, ...], ...]  # 4x4, voxel -> world RAS+ mm
    orientation: tuple[str, str, str]
    zooms: tuple[float, float, float]
    modality: str
    classes: tuple[ClassInfo, ...]
    label_counts: tuple[int, ...]  # voxels per label value
    seed: int


def default_affine(
    shape: tuple[int, int, int], spacing: float = DEFAULT_SPACING_MM
) -> npt.NDArray[np.float64]:
    """RAS affine with isotropic ``spacing`` mm, the volume centred on the world origin."""
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = [-(n - 1) * spacing / 2.0 for n in shape]
    return affine


def _check_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    try:
        dims = tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        raise ConfigError(f"shape must be three integers (i, j, k), got {shape!r}") from None
    if len(dims) != 3 or min(dims) < 16:
        raise ConfigError(f"shape must be three integers >= 16 (i, j, k), got {shape!r}")
    return dims[0], dims[1], dims[2]


def _check_affine(
    affine: npt.ArrayLike | None, shape: tuple[int, int, int]
) -> npt.NDArray[np.float64]:
    if affine is None:
        return default_affine(shape)
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.isfinite(a).all():
        raise ConfigError(f"affine must be a finite 4x4 matrix, got shape {a.shape}")
    if not np.allclose(a[3], [0.0, 0.0, 0.0, 1.0]):
        raise ConfigError(f"affine's last row must be [0, 0, 0, 1], got {a[3].tolist()}")
    if abs(np.linalg.det(a[:3, :3])) < 1e-9:
        raise ConfigError("affine is singular (zero voxel size or collapsed axes)")
    return a


def _check_modality(modality: str) -> str:
    m = str(modality).lower()
    if m not in MODALITIES:
        hint = did_you_mean(m, MODALITIES)
        raise ConfigError(
            f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}{hint}"
        )
    return m


# ---------------------------------------------------------------------------
# layout


class _Space:
    """Normalized voxel coordinates in [-1, 1] per axis and a seeded generator."""

    def __init__(self, shape: tuple[int, int, int], rng: np.random.Generator) -> None:
        self.shape = shape
        self.rng = rng
        self.u, self.v, self.w = (
            ((np.arange(n, dtype=np.float32) + np.float32(0.5)) / np.float32(n / 2) - 1).reshape(
                [n if a == ax else 1 for a in range(3)]
            )
            for ax, n in enumerate(shape)
        )
        self.cell = max(4.0, min(shape) / 5.0)  # deformation wavelength, in voxels

    def jitter(self, value: float, spread: float) -> np.float32:
        return np.float32(value + self.rng.uniform(-spread, spread))

    def radius(
        self, centre: tuple[float, float, float], radii: tuple[float, float, float], deform: float
    ) -> npt.NDArray[np.float32]:
        """Deformed ellipsoid radius (< 1 inside), centre and radii jittered by the seed."""
        cu, cv, cw = (self.jitter(c, 0.025) for c in centre)
        ru, rv, rw = (np.float32(r * self.rng.uniform(0.92, 1.08)) for r in radii)
        q = ((self.u - cu) / ru) ** 2 + ((self.v - cv) / rv) ** 2 + ((self.w - cw) / rw) ** 2
        wobble = np.float32(1.0) + np.float32(deform) * smooth_field(
            self.shape, self.cell, self.rng
        )
        out: npt.NDArray[np.float32] = np.sqrt(q) / wobble
        return out

    def tube(
        self, centre_uv: tuple[float, float], radii_uv: tuple[float, float]
    ) -> npt.NDArray[np.bool_]:
        """A cylinder along k (vessels, spine), its centre drifting slowly with k."""
        drift = np.float32(0.02) * np.sin(
            self.w * np.float32(np.pi) + np.float32(self.rng.uniform(0, 2 * np.pi))
        )
        cu, cv = self.jitter(centre_uv[0], 0.01), self.jitter(centre_uv[1], 0.01)
        q = ((self.u - cu - drift) / np.float32(radii_uv[0])) ** 2 + (
            (self.v - cv) / np.float32(radii_uv[1])
        ) ** 2
        out: npt.NDArray[np.bool_] = np.broadcast_to(q < 1, self.shape)
        return out


def _tissues(shape: tuple[int, int, int], rng: np.random.Generator) -> npt.NDArray[np.uint8]:
    """Tissue index of every voxel (see ``_TISSUES``)."""
    s = _Space(shape, rng)
    t = np.full(shape, _T["air"], dtype=np.uint8)

    body_r = s.radius((0.0, 0.02, 0.0), (0.88, 0.62, 1.7), deform=0.03)
    body = body_r < 1
    t[body] = _T["soft"]
    t[body & (body_r > 0.88)] = _T["fat"]  # subcutaneous fat shell
    inner = body & (body_r <= 0.88)
    visceral = smooth_field(shape, s.cell / 2, rng) > 1.1
    t[inner & visceral] = _T["fat"]
    gas = (smooth_field(shape, s.cell / 3, rng) > 1.9) & (s.v > 0)  # bowel gas, anterior
    t[inner & gas] = _T["gas"]
    for side in (-1.0, 1.0):  # paraspinal muscles
        t[inner & s.tube((0.17 * side, -0.5), (0.1, 0.09))] = _T["muscle"]
    t[inner & s.tube((-0.07, -0.22), (0.055, 0.055))] = _T["aorta"]
    t[inner & s.tube((0.1, -0.2), (0.06, 0.05))] = _T["cava"]

    liver_r = s.radius((0.4, 0.1, 0.35), (0.42, 0.42, 0.5), deform=0.12)
    liver = inner & (liver_r < 1)
    t[liver] = _T["liver"]
    vessels = np.abs(smooth_field(shape, s.cell / 2, rng)) < 0.06
    t[liver & vessels & (liver_r < 0.85)] = _T["liver_vessel"]

    spleen = inner & (s.radius((-0.52, -0.12, 0.4), (0.16, 0.24, 0.3), deform=0.12) < 1)
    t[spleen & ~liver] = _T["spleen"]

    for side in (-1.0, 1.0):
        kid_r = s.radius((0.36 * side, -0.3, -0.15), (0.13, 0.14, 0.32), deform=0.08)
        t[inner & (kid_r < 1)] = _T["cortex"]
        t[inner & (kid_r < 0.62)] = _T["medulla"]

    # spine: vertebral bodies with discs between them, and a spinous process
    period = max(6.0, shape[2] / 6.0)
    k = np.arange(shape[2], dtype=np.float32).reshape(1, 1, -1)
    phase = ((k + np.float32(rng.uniform(0, period))) / np.float32(period)) % 1
    disc = np.broadcast_to(phase < 0.2, shape)
    column = s.tube((0.0, -0.42), (0.13, 0.12))
    shell = column & ~s.tube((0.0, -0.42), (0.1, 0.09))
    spinous = s.tube((0.0, -0.58), (0.035, 0.07)) & ~disc
    t[inner & column] = _T["cancellous"]
    t[inner & shell] = _T["cortical"]
    t[inner & column & disc] = _T["disc"]
    t[inner & spinous] = _T["cortical"]
    return t


def _blur3(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """[1, 2, 1] / 4 along each axis: a partial-volume edge of about one voxel."""
    for axis in range(3):
        p = np.pad(x, [(1, 1) if a == axis else (0, 0) for a in range(3)], mode="edge")
        n = x.shape[axis]
        lo = np.take(p, np.arange(0, n), axis=axis)
        mid = np.take(p, np.arange(1, n + 1), axis=axis)
        hi = np.take(p, np.arange(2, n + 2), axis=axis)
        x = (lo + 2 * mid + hi) * np.float32(0.25)
    return x


def render_phantom(
    shape: tuple[int, int, int] = DEFAULT_SHAPE, *, seed: int = 0, modality: str = "ct"
) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.uint8]]:
    """Image (int16, HU for CT) and labels (uint8) of the phantom, in voxel order (i, j, k)."""
    dims = _check_shape(shape)
    mod = _check_modality(modality)
    rng = np.random.default_rng(check_seed(seed))
    tissue = _tissues(dims, rng)

    to_label = np.array([label for _, label, _, _ in _TISSUES], dtype=np.uint8)
    column = 2 if mod == "ct" else 3
    to_value = np.array([row[column] for row in _TISSUES], dtype=np.float32)
    labels = to_label[tissue]
    image = _blur3(to_value[tissue])

    in_body = labels > 0
    texture = smooth_field(dims, 3.0, rng)  # fine parenchymal texture
    bias = smooth_field(dims, max(8.0, min(dims) / 3.0), rng)
    noise = rng.standard_normal(dims, dtype=np.float32)
    if mod == "ct":
        image += np.where(in_body, np.float32(6.0) * texture + np.float32(8.0) * bias, 0)
        image += np.float32(12.0) * noise
        image = np.clip(np.rint(image), -1024, 3071)
    else:
        image += np.where(in_body, np.float32(15.0) * texture, 0)
        image *= np.float32(1.0) + np.float32(0.15) * bias  # coil sensitivity
        # Rician magnitude noise: never negative, biased up in the dark
        noise2 = rng.standard_normal(dims, dtype=np.float32)
        sigma = np.float32(15.0)
        image = np.sqrt((image + sigma * noise) ** 2 + (sigma * noise2) ** 2)
        image = np.clip(np.rint(image), 0, 4095)
    return image.astype(np.int16), labels


def make_phantom_volume(
    image_path: str | os.PathLike[str],
    label_path: str | os.PathLike[str],
    *,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    seed: int = 0,
    affine: npt.ArrayLike | None = None,
    modality: str = "ct",
) -> VolumeInfo:
    """Write a phantom image (int16 NIfTI) and its labels (uint8 NIfTI) on the same grid.

    ``affine`` (4x4, voxel -> world RAS+ mm) defaults to 1.5 mm isotropic RAS
    centred on the origin; it is written as both sform and qform (code 1,
    scanner). Labels: see :func:`phantom_classes`.
    """
    dims = _check_shape(shape)
    mod = _check_modality(modality)
    seed = check_seed(seed)
    aff = _check_affine(affine, dims)
    image_path, label_path = Path(image_path), Path(label_path)
    if image_path.resolve() == label_path.resolve():
        raise ConfigError(f"image and label paths are the same: {image_path}")

    image, labels = render_phantom(dims, seed=seed, modality=mod)
    try:
        image_path.parent.mkdir(parents=True, exist_ok=True)
        label_path.parent.mkdir(parents=True, exist_ok=True)
        save_volume(
            image_path,
            image,
            aff,
            descrip=f"segflow phantom {mod} seed={seed}",
            disk_dtype=np.int16,
            slope_inter=(1.0, 0.0),
        )
        save_volume(
            label_path,
            labels,
            aff,
            descrip="segflow phantom labels",
            disk_dtype=np.uint8,
            intent="label",
        )
    except OSError as exc:
        raise OutputError(
            f"cannot write the phantom to {image_path} / {label_path}: {exc}"
        ) from exc

    counts = np.bincount(labels.ravel(), minlength=len(_CLASSES))
    zooms = np.sqrt((aff[:3, :3] ** 2).sum(axis=0))
    axcodes = aff2axcodes(aff)
    return VolumeInfo(
        image_path=image_path,
        label_path=label_path,
        shape_ijk=dims,
        affine=tuple(tuple(float(v) for v in row) for row in aff),
        orientation=(str(axcodes[0]), str(axcodes[1]), str(axcodes[2])),
        zooms=(float(zooms[0]), float(zooms[1]), float(zooms[2])),
        modality=mod,
        classes=tuple(phantom_classes()),
        label_counts=tuple(int(n) for n in counts),
        seed=seed,
    )
