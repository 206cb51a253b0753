"""String options as enums, with a "did you mean" error for typos."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from enum import StrEnum
from typing import TypeVar

from segflow.errors import ConfigError

E = TypeVar("E", bound=StrEnum)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def parse_choice(enum: type[E], value: str | E, what: str) -> E:
    """``enum(value)`` case-insensitively, or a one-line ConfigError naming the choices."""
    try:
        return enum(str(value).lower())
    except ValueError:
        names = [m.value for m in enum]
        hint = did_you_mean(str(value).lower(), names)
        raise ConfigError(
            f"unknown {what} '{value}' (choose from {', '.join(names)}){hint}"
        ) from None
