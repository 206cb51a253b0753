"""Outputs stay bit-identical to stores made before a change (tests/fixtures/golden).

The fixtures were written by ``tests/fixtures/make_golden.py`` from the small
built-in samples and the bundled models; this test makes the same stores anew
and compares every array and the geometry metadata with them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "golden"
# attributes that name the run, not its result
RUN_SPECIFIC = {
    "created",
    "path",
    "segflow_version",
    "seconds",
    "input_sha256",
    "sha256",
    "fingerprint",
}


def _stable(value: object) -> object:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in RUN_SPECIFIC}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _arrays(store: Path) -> dict[str, zarr.Array]:
    group = zarr.open_group(store, mode="r")
    found: dict[str, zarr.Array] = {}
    for name, member in group.members(max_depth=None):
        if isinstance(member, zarr.Array):
            found[name] = member
    return found


@pytest.fixture(scope="module")
def remade(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("golden")
    subprocess.run(
        [sys.executable, str(FIXTURES / "make_golden.py"), str(out / "stores"), str(out / "in")],
        check=True,
    )
    return out / "stores"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["landcover.zarr", "phantom.zarr"])
def test_outputs_are_bit_identical_to_the_golden_stores(remade: Path, name: str) -> None:
    golden, fresh = _arrays(GOLDEN / name), _arrays(remade / name)
    assert sorted(golden) == sorted(fresh)
    for key, array in golden.items():
        assert fresh[key].dtype == array.dtype, key
        assert fresh[key].shape == array.shape, key
        np.testing.assert_array_equal(fresh[key][...], array[...], err_msg=key)
        assert _stable(dict(fresh[key].attrs)) == _stable(dict(array.attrs)), key


@pytest.mark.slow
@pytest.mark.parametrize("name", ["landcover.zarr", "phantom.zarr"])
def test_store_metadata_matches_the_golden_stores(remade: Path, name: str) -> None:
    golden = json.loads((GOLDEN / name / "zarr.json").read_text())
    fresh = json.loads((remade / name / "zarr.json").read_text())
    assert _stable(fresh["attributes"]) == _stable(golden["attributes"])
