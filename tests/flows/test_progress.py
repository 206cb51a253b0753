"""flows.progress: the command line's bars are fed inside the hook, and the log gets a percentage."""

from __future__ import annotations

import logging

from flows.progress import progress_hook, progress_logged


def test_the_innermost_bar_is_fed_and_the_end_is_logged(caplog):
    seen: list[tuple[str, int, int]] = []
    factory = lambda label: lambda done, total: seen.append((label, done, total))  # noqa: E731
    logger = logging.getLogger("segflow-test-progress")
    with caplog.at_level(logging.INFO, logger=logger.name):
        with progress_hook(factory):
            update = progress_logged(logger, "scene")
            update(3, 12)
            update(12, 12)
        quiet = progress_logged(logger, "after")  # outside the hook: logged only
        quiet(1, 1)
    assert seen == [("scene", 3, 12), ("scene", 12, 12)]
    assert "scene: 100 % done" in caplog.text and "after: 100 % done" in caplog.text


def test_no_factory_no_hook():
    with progress_hook(None):
        progress_logged(logging.getLogger("x"), "scene")(0, 4)  # nothing to feed, no error
