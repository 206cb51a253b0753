"""A rich progress bar over the training steps, or nothing when output is not a terminal."""

from __future__ import annotations

from typing import Any


class ProgressBar:
    """A rich progress bar over all steps (loss in the description), or nothing."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self._progress: Any = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._progress.start()
        self._task = self._progress.add_task("training", total=total, completed=done)

    def advance(self, epoch: int, loss: float) -> None:
        if self._progress is not None:
            self._progress.update(
                self._task, advance=1, description=f"epoch {epoch} loss {loss:.4f}"
            )

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
