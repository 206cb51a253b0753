"""Run every benchmark and print their figures next to their targets.

uv run python benchmarks/run_all.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = [
    "bench_throughput",
    "bench_unet_overhead",
    "bench_memory",
    "bench_volume",
    "bench_prefect",
    "bench_startup",
    "bench_postprocess",
    "bench_dicom",
    "bench_resample",
    "bench_uncertainty",
    "bench_training",
    "bench_soak",
    "bench_corpus",
]


def main() -> int:
    root = Path(__file__).resolve().parents[1]
    failed = []
    for name in BENCHMARKS:
        code = subprocess.call([sys.executable, "-m", f"benchmarks.{name}"], cwd=root)
        if code != 0:
            failed.append(name)
    print("\nbenchmarks missing their targets:", ", ".join(failed) if failed else "none")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
