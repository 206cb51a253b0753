"""The training progress bar."""

from __future__ import annotations

import pytest

from segflow.train.progress import ProgressBar


def test_disabled_bar_does_nothing() -> None:
    bar = ProgressBar(False, 10, 0)
    bar.advance(1, 0.5)
    bar.close()


def test_enabled_bar_counts_steps(capsys: pytest.CaptureFixture[str]) -> None:
    bar = ProgressBar(True, 4, 1)
    for _ in range(3):
        bar.advance(1, 0.25)
    assert bar._progress.tasks[0].completed == 4
    bar.close()
    assert "epoch 1 loss 0.2500" in capsys.readouterr().err
