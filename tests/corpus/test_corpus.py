"""Every bad input, option, model file, spec or output: one line, exit 1, nothing complete left.

The corpus is in tests/corpus/cases.py; each case runs the real command in a fresh
process, as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.corpus.cases import CASES, Case

SEGFLOW = str(Path(sys.executable).parent / "segflow")


def looks_complete(store: Path) -> bool:
    meta = store / "zarr.json"
    if not meta.is_file():
        return False
    try:
        return bool(json.loads(meta.read_text())["attributes"]["segflow"]["complete"])
    except (KeyError, ValueError, TypeError):
        return False


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_a_mistake_is_one_line_and_leaves_nothing_complete(case: Case, tmp_path: Path) -> None:
    if case.needs_non_root and os.geteuid() == 0:
        pytest.skip("root may write into a read-only folder; run the corpus as a user")
    args = case.make(tmp_path)
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    result = subprocess.run(
        [SEGFLOW, "run", *args], capture_output=True, text=True, timeout=120, env=env
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert case.message in lines[0], lines[0]
    assert "pickle payload ran" not in result.stdout + result.stderr
    assert not looks_complete(tmp_path / "out.zarr")


def test_the_corpus_has_sixty_cases() -> None:
    assert len(CASES) >= 60
    assert len({c.name for c in CASES}) == len(CASES)
