"""Time to fail: every case of the bad-input corpus (tests/corpus) through the real command.

Each case writes its files into a fresh folder, then ``segflow run ...`` runs in a fresh
process, timed from launch to exit. Printed: the slowest cases next to the target, how
many miss it, and for those whether torch was imported before the error (a second,
profiled run with ``-X importtime``); for reference, in the same run, the bare start of
the command (``segflow --help``) and ``python -c "import torch"``.

Target (issue 18): every case that does not need to read the data fails in < 4 s on the
2-core development machine, with one line and exit code 1.

    uv run python -m benchmarks.bench_corpus [--slowest 10] [--only NAME_PART]
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import Check, report

REPO = Path(__file__).resolve().parents[1]
SEGFLOW = str(Path(sys.executable).with_name("segflow"))
TARGET_S = 4.0
# cases that must read (or decode) the data before they can tell what is wrong with it
READS_DATA = {"all-nan raster", "truncated nifti"}


@dataclass
class Outcome:
    name: str
    seconds: float
    returncode: int
    lines: int
    torch: bool | None = None  # imported before the error (profiled only where slow)


def _env() -> dict[str, str]:
    return {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "COLUMNS": "200"}


def _timed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, Any]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    return time.perf_counter() - started, done


def _imports_torch(args: list[str], cwd: Path) -> bool:
    """Whether the command imported torch before failing (``-X importtime`` lists it)."""
    code = "import sys; from segflow.cli.main import main; sys.argv[0] = 'segflow'; main()"
    command = [sys.executable, "-X", "importtime", "-c", code, "run", *args]
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=_env())
    return any(line.split("|")[-1].strip() == "torch" for line in done.stderr.splitlines())


def run_case(case: Any, profile_over: float) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="bench-corpus-") as folder:
        root = Path(folder)
        args = case.make(root)
        seconds, done = _timed([SEGFLOW, "run", *args], root, _env())
        outcome = Outcome(
            case.name, seconds, done.returncode, len(done.stderr.strip().splitlines())
        )
        if seconds > profile_over:
            outcome.torch = _imports_torch(args, root)
    return outcome


def baselines() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        here = Path(folder)
        help_s = min(_timed([SEGFLOW, "--help"], here, _env())[0] for _ in range(2))
        torch_s = _timed([sys.executable, "-c", "import torch"], here, _env())[0]
    return {"segflow --help": help_s, "python -c 'import torch'": torch_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slowest", type=int, default=10)
    parser.add_argument("--only", default="", help="time only cases whose name has this")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    cases = importlib.import_module("tests.corpus.cases").CASES
    # a permission root ignores: as root those cases run (and succeed), so leave them out
    as_root = os.geteuid() == 0
    cases = [c for c in cases if args.only in c.name and not (as_root and c.needs_non_root)]

    base = baselines()
    outcomes = [run_case(case, profile_over=TARGET_S / 2) for case in cases]
    ranked = sorted(outcomes, key=lambda o: o.seconds, reverse=True)
    print(f"\n{'case':<40} {'seconds':>8}  exit  lines  torch imported")
    for o in ranked[: args.slowest]:
        torch = "-" if o.torch is None else ("yes" if o.torch else "no")
        print(f"{o.name:<40} {o.seconds:8.2f}  {o.returncode:>4}  {o.lines:>5}  {torch}")

    checked = [o for o in outcomes if o.name not in READS_DATA]
    slow = [o for o in checked if o.seconds >= TARGET_S]
    wrong = [o for o in outcomes if o.returncode != 1 or o.lines != 1]
    seconds = sorted(o.seconds for o in outcomes)
    figures = {
        "cases": len(outcomes),
        "median seconds": f"{seconds[len(seconds) // 2]:.2f}",
        **{f"baseline: {k}": f"{v:.2f} s" for k, v in base.items()},
        "cases that read the data (not held to it)": ", ".join(sorted(READS_DATA)),
        "over the target": ", ".join(o.name for o in slow) or "none",
    }
    checks = [
        Check(
            "slowest case without reading data",
            max(o.seconds for o in checked),
            "s",
            f"< {TARGET_S:.0f}",
            not slow,
        ),
        Check("cases not exit 1 with one line", len(wrong), "cases", "0", not wrong),
    ]
    return 0 if report("corpus: time to fail", figures, checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
