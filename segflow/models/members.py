"""The model files an ensemble names: files, or folders of fold models. No torch here, so
the command and the flows check them before the heavy imports."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from segflow.errors import ConfigError

MODEL_SUFFIXES = (".safetensors", ".pt", ".pth", ".ts", ".torchscript", ".onnx", ".ckpt")


def model_files(folder: Path) -> list[Path]:
    """The model files of a folder of fold models, by name (sidecars are not models)."""
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES and not p.name.startswith(".")
    )
    if not files:
        raise ConfigError(
            f"{folder} holds no model files ({', '.join(MODEL_SUFFIXES)}); "
            "pass model files or a folder of them"
        )
    return files


def member_files(paths: Sequence[Path]) -> list[Path]:
    """Every model file ``paths`` name, a folder expanded by name; a missing path is one line."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += model_files(path)
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"model file {path} not found; check the path")
    return files
