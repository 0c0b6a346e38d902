"""Checks of user input shared by every module: each returns the clean value or raises a named error."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

from .errors import InvalidBudget, InvalidInput

__all__ = ["check_probability", "check_rate", "check_tokens"]


def check_tokens(field: str, value: Any, *, minimum: int = 0, error: type[InvalidInput] = InvalidBudget) -> int:
    """An integer token amount ``>= minimum``, returned as a plain Python ``int`` whatever integer type was given
    (a numpy integer, an ``IntEnum``): stores keep and compare ints only. Booleans, floats (even 5.0), NaN and
    inf are refused."""
    if type(value) is int and value >= minimum:  # the common case, without the slower ABC checks
        return value
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise error(field, value, "must be an integer number of tokens")
    try:
        tokens = int(value)
    except (TypeError, ValueError, OverflowError):
        raise error(field, value, "must be an integer number of tokens") from None
    if tokens < minimum:
        raise error(field, value, f"must be >= {minimum}")
    return tokens


def check_rate(field: str, value: Any, *, minimum: float = 0.0, error: type[InvalidInput] = InvalidBudget) -> float:
    """A finite real number ``>= minimum`` (a price, a step size, a rate)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise error(field, value, "must be a real number")
    try:
        number = float(value)
    except (OverflowError, ValueError):  # an int too large for a float, an odd Real subclass
        raise error(field, value, "must be finite") from None
    if not math.isfinite(number):
        raise error(field, value, "must be finite")
    if number < minimum:
        raise error(field, value, f"must be >= {minimum}")
    return number


def check_probability(field: str, value: Any, *, error: type[InvalidInput] = InvalidBudget) -> float:
    """A finite number in [0, 1]."""
    number = check_rate(field, value, error=error)
    if number > 1.0:
        raise error(field, value, "must be in [0, 1]")
    return number
