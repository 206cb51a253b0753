"""Object storage: a COG read from a loopback S3 server against the local file system, and a
whole segflow run s3:// in and out against the same run on local files.

uv run python -m benchmarks.bench_s3 [--size 8192]

The server is moto's (the test suite's, on 127.0.0.1), a single Python process: a real
object store serves ranges faster, so these ratios are an upper bound on the overhead.
``--bucket NAME`` measures a real store instead (the one AWS_* / AWS_ENDPOINT_URL name).
Both sides use the same threads and the same tile-aligned regions; the best of two
interleaved runs of each side is taken.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import rasterio.shutil

from benchmarks.common import Check, best_of_interleaved, near_free_model, report, write_geotiff
from segflow.io.geotiff import GeoTiffSource

TARGET_RUN_RATIO = 1.3
REGION = 1024
THREADS = 4


def write_cog(folder: Path, size: int) -> Path:
    tiled = write_geotiff(folder / "tiled.tif", size)
    cog = folder / "scene.tif"
    rasterio.shutil.copy(tiled, cog, driver="COG", BLOCKSIZE=512, COMPRESS="DEFLATE")
    tiled.unlink()
    return cog


def read_seconds(location: str, size: int) -> float:
    """Read the whole image region by region on a thread pool; fresh handles each time."""
    source = GeoTiffSource(location)
    regions = [
        (slice(y, min(y + REGION, size)), slice(x, min(x + REGION, size)))
        for y in range(0, size, REGION)
        for x in range(0, size, REGION)
    ]
    started = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(source.read, regions))
    seconds = time.perf_counter() - started
    source.close()
    return seconds


def run_seconds(source: str, output: str) -> float:
    from segflow import segment

    started = time.perf_counter()
    result = segment(source, near_free_model(), output, device="cpu", workers=2, overwrite=True)
    assert not isinstance(result, list) and result.status == "complete", result
    return time.perf_counter() - started


@contextmanager
def object_store(bucket: str | None) -> Iterator[str]:
    """A bucket: the given one of the configured store, or a new one on a loopback server."""
    if bucket:
        yield bucket
        return
    from tests.io.s3server import s3_server

    with s3_server(enforce_credentials=False) as server:
        os.environ.update(server.env)
        yield server.new_bucket()


def main() -> bool:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--size", type=int, default=2048, help="edge of the COG (8192 in the issue)"
    )
    parser.add_argument(
        "--bucket",
        help="use this bucket of the store the environment points at (AWS_* and "
        "AWS_ENDPOINT_URL) instead of starting the loopback server",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, object_store(args.bucket) as bucket:
        cog = write_cog(Path(tmp), args.size)
        import s3fs

        s3fs.S3FileSystem().put_file(str(cog), f"{bucket}/scene.tif")
        remote = f"s3://{bucket}/scene.tif"
        megabytes = cog.stat().st_size / 1e6
        local_read, s3_read = best_of_interleaved(
            2,
            lambda _: read_seconds(str(cog), args.size),
            lambda _: read_seconds(remote, args.size),
        )

        def local_run(i: int) -> float:
            out = Path(tmp) / f"local{i}.zarr"
            seconds = run_seconds(str(cog), str(out))
            shutil.rmtree(out)
            return seconds

        def s3_run(i: int) -> float:
            return run_seconds(remote, f"s3://{bucket}/out{i}.zarr")

        run_seconds(str(cog), str(Path(tmp) / "warm.zarr"))  # imports and model load, once
        local_s, s3_s = best_of_interleaved(2, local_run, s3_run)
    pixels = args.size * args.size / 1e6
    ratio = s3_s / local_s
    figures = {
        "COG": f"{args.size}x{args.size}x3 uint8, 512 tiles, deflate, {megabytes:.1f} MB",
        "read local (MB/s of file)": f"{megabytes / local_read:.1f} ({local_read:.2f} s)",
        "read loopback S3 (MB/s of file)": f"{megabytes / s3_read:.1f} ({s3_read:.2f} s)",
        "read S3 / local": f"{s3_read / local_read:.2f}x",
        "run local -> local": f"{local_s:.2f} s ({pixels / local_s:.1f} Mpx/s)",
        "run s3 -> s3": f"{s3_s:.2f} s ({pixels / s3_s:.1f} Mpx/s)",
    }
    checks = [
        Check(
            "run over S3 / local", ratio, "x", f"<= {TARGET_RUN_RATIO}", ratio <= TARGET_RUN_RATIO
        )
    ]
    return report("object storage (loopback S3) against local files", figures, checks)


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
