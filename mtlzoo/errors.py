"""The one error mtlzoo raises for bad input, and helpers that build its messages."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MtlzooError(ValueError):
    """Bad input to a public mtlzoo function; the message names the bad value."""


class DataLoadError(MtlzooError):
    """Data that cannot be loaded: ``problem`` says what went wrong, the message adds how to
    give the data from Python, so a command line can say it in its own terms instead."""

    def __init__(self, problem: str, python_hint: str = "") -> None:
        super().__init__(f"{problem}. {python_hint}" if python_hint else problem)
        self.problem, self.hint = problem, python_hint


def suggest(name: str, known: Iterable[str]) -> str:
    """Return " Did you mean 'x'?" for the closest known name, or "" when none is close."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""
