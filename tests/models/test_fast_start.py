"""Fast start: only the architectures that need torchvision, timm or smp import them.

Each check runs in a fresh interpreter, since this test session has long
imported everything.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from segflow.models import export_model

HEAVY = ("torchvision", "timm", "segmentation_models_pytorch")


def _imported_after(code: str, *args: str) -> set[str]:
    """The heavy modules (and torch) present in ``sys.modules`` after running ``code``."""
    probe = (
        f"{code}\nimport sys\nprint(' '.join(m for m in {(*HEAVY, 'torch')!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, *args], capture_output=True, text=True, check=True
    )
    return set(done.stdout.split())


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_loading_plain_and_exported_models_imports_no_architecture_library(
    tiny_file: Callable[[str], Path], tmp_path: Path
) -> None:
    native = tiny_file("unet2d")
    files = [native, export_model(native, "torchscript", tmp_path / "m.ts").path]
    try:
        import onnxruntime  # noqa: F401

        files.append(export_model(native, "onnx", tmp_path / "m.onnx").path)
    except ImportError:
        pass
    code = (
        "import sys\nfrom segflow.models import load_model\n"
        "for path in sys.argv[1:]:\n    load_model(path)"
    )
    loaded = _imported_after(code, *map(str, files))
    assert "torch" in loaded and not loaded & set(HEAVY)


def test_importing_models_and_listing_architectures_imports_no_torch() -> None:
    code = (
        "import segflow.models, segflow.train\n"
        "from typer.testing import CliRunner\n"
        "from segflow.cli.model import model_app\n"
        "assert 'unet3d' in CliRunner().invoke(model_app, ['list']).output"
    )
    assert _imported_after(code) == set()
