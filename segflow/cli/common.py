"""Pieces shared by the ``segflow`` command modules."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

from segflow.errors import SegflowError

EXIT_ERROR = 1

_err = Console(stderr=True)


@contextmanager
def one_line_errors() -> Iterator[None]:
    """A user mistake (SegflowError) prints one line to stderr and exits 1, no traceback."""
    try:
        yield
    except SegflowError as exc:
        _err.print(
            f"[bold red]error:[/] {' '.join(str(exc).split())}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(EXIT_ERROR) from None
