"""(h) DICOM series: peak memory does not grow with the number of slices (issue 16).

A 200-slice and a 1000-slice 512 x 512 int16 CT series (one file per slice, random file
names, written with pydicom) are each read in a fresh process, two ways:

- ``read``: through the Source, slab by slab as the engine reads regions (128 slices of
  the full in-plane size at a time);
- ``segment``: a whole ``segflow.segment`` run with a near-free 3-D model (a 1x1x1
  convolution) on the default patch, chunk and region sizes (regions of 256 voxels: the
  200-slice series is one region deep, the 1000-slice one four);
- ``segment-r128``: the same with 128-voxel regions, so that the 200-slice series already
  has two regions along the slices and a face shared between them, as the long one has.

Target: the 1000-slice peak RSS within 10 % of the 200-slice one, for each.

    uv run python -m benchmarks.bench_dicom [--slices 200 1000] [--size 512] [--modes read segment segment-r128]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    as_the_command,
    growth_check,
    near_free_model,
    peak_rss_mb,
    report,
    run_subprocess_json,
    timer,
)

TARGET_GROWTH = 0.10
SLAB = 128  # slices per read in the ``read`` mode: one 3-D region's depth
# segment modes -> region edge (None: the engine's default, 256 voxels for this model)
REGIONS: dict[str, int | None] = {"segment": None, "segment-r128": 128}
MODES = ("read", *REGIONS)


def write_series(folder: Path, slices: int, size: int, seed: int = 0) -> Path:
    """An axial CT series, one int16 slice per file, file names in random order.

    One header is filled once; each slice changes only its identity, position and pixels,
    so 1000 files take seconds. Pixel values: a body-like disc (40 HU) in air (-1000 HU)
    plus noise, stored with RescaleIntercept -1024.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.PatientName, ds.PatientID = "Bench^Patient", "SEGFLOW-BENCH"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.SeriesNumber, ds.Modality, ds.SeriesDescription = 1, "CT", f"bench {slices} slices"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 1.0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, -1024, "HU"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    y, x = np.mgrid[0:size, 0:size]
    disc = ((x - size / 2) ** 2 + (y - size / 2) ** 2) < (0.4 * size) ** 2
    stored = np.where(disc, 40 + 1024, -1000 + 1024).astype(np.int16)
    for k in rng.permutation(slices):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = int(slices - k)
        ds.ImagePositionPatient = [-180.0, -180.0, float(k)]
        ds.PixelData = (stored + rng.integers(-20, 20, size=stored.shape, dtype=np.int16)).tobytes()
        pydicom.dcmwrite(folder / f"IM{rng.integers(0, 10**9):09d}", ds, enforce_file_format=True)
    return folder


def read_run(folder: str) -> dict[str, Any]:
    """Every slab of the series through the Source, each used and let go, as regions are."""
    from segflow.io.open import open_source

    as_the_command()  # as the segflow command does
    before = peak_rss_mb()
    with timer() as t:
        source = open_source(Path(folder))
        columns, rows, depth = source.spatial_shape
        total = 0.0
        for k in range(0, depth, SLAB):
            part = source.read((slice(0, columns), slice(0, rows), slice(k, min(k + SLAB, depth))))
            total += float(part.data[0][part.valid].sum(dtype=np.float64))  # used, as a region is
            del part
    return {"seconds": t["seconds"], "peak_mb": peak_rss_mb(), "baseline_mb": before}


def segment_run(folder: str, out: str, region_size: int | None = None) -> dict[str, Any]:
    """A whole segment() run of the series with the near-free 3-D model."""
    from segflow import segment

    as_the_command()
    before = peak_rss_mb()
    with timer() as t:
        result = segment(
            Path(folder),
            near_free_model(1, 2, spatial_dims=3),
            Path(out),
            device="cpu",
            region_size=region_size,
            overwrite=True,
        )
    assert not isinstance(result, list) and result.status == "complete", result
    return {
        "seconds": t["seconds"],
        "peak_mb": peak_rss_mb(),
        "baseline_mb": before,
        "patches": result.stats.get("patches_predicted"),
    }


def measure(mode: str, folders: dict[int, Path], tmp: Path) -> dict[int, dict[str, Any]]:
    runs = {}
    for slices, folder in folders.items():
        if mode == "read":
            runs[slices] = run_subprocess_json(read_run, str(folder))
        else:
            out = str(tmp / f"{mode}{slices}.zarr")
            runs[slices] = run_subprocess_json(segment_run, str(folder), out, REGIONS[mode])
    return runs


def main() -> bool:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, nargs=2, default=[200, 1000])
    parser.add_argument("--size", type=int, default=512, help="rows = columns of each slice")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    args = parser.parse_args()
    small, large = args.slices
    figures: dict[str, Any] = {"series": f"{args.size}x{args.size} int16 CT, one file per slice"}
    checks = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folders = {}
        for n in (small, large):
            with timer() as t:
                folders[n] = write_series(tmp / f"series{n}", n, args.size, seed=n)
            figures[f"writing {n} slices"] = f"{t['seconds']:.1f} s"
        for mode in args.modes:
            runs = measure(mode, folders, tmp)
            for n, r in runs.items():
                extra = f" / {r['patches']} patches" if "patches" in r else ""
                figures[f"{mode} {n}: peak RSS / time"] = (
                    f"{r['peak_mb']:.0f} MB (+{r['peak_mb'] - r['baseline_mb']:.0f} MB)"
                    f" / {r['seconds']:.1f} s{extra}"
                )
            checks.append(
                growth_check(
                    f"{mode}: growth {small} -> {large} slices",
                    runs[small]["peak_mb"],
                    runs[large]["peak_mb"],
                    TARGET_GROWTH,
                )
            )
    return report("(h) DICOM series memory", figures, checks)


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
