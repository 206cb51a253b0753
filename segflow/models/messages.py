"""Foreign exceptions (torch, smp, onnxruntime) shortened to one line for a ModelError."""

from __future__ import annotations


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of ``exc`` (quotes of a KeyError dropped), at most ``limit``."""
    lines = [ln.strip() for ln in str(exc).strip().strip('"').splitlines() if ln.strip()]
    line = lines[0] if lines else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
