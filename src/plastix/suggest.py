"""Closest-name hints for misspelt options, keys and names (``difflib``), so an error names one candidate
instead of listing every allowed name."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The choice most similar to ``name`` (``difflib.get_close_matches``, ratio >= 0.6), or None."""
    matches = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
    return matches[0] if matches else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``"did you mean 'learning_rate'? "`` for the closest choice, or ``""`` when none is close."""
    match = closest(name, choices)
    return f"did you mean {match!r}? " if match else ""
