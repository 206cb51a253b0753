"""Pieces shared by the ``segflow`` command modules."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

from segflow.errors import SegflowError, one_line

EXIT_ERROR = 1
EXIT_PARTIAL = 3  # a batch where some inputs failed and others finished

err = Console(stderr=True)
out = Console()


def print_error(message: str) -> None:
    """One red ``error:`` line on stderr."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


@contextmanager
def one_line_errors() -> Iterator[None]:
    """A user mistake (SegflowError) prints one line to stderr and exits 1, no traceback."""
    try:
        yield
    except SegflowError as exc:
        print_error(one_line(exc))
        raise typer.Exit(EXIT_ERROR) from None
