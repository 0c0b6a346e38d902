"""Budget windows: fixed windows aligned to the Unix epoch in UTC.

A window such as ``"1d"`` is a fixed interval of 86 400 seconds whose boundaries are multiples of its length
counted from 1970-01-01T00:00:00Z: ``"1d"`` resets at UTC midnight, ``"1h"`` on the hour, ``"7d"`` on Thursdays
at 00:00 UTC (the epoch was a Thursday) and ``"30d"`` every 30 days from the epoch. Windows are not rolling
and not calendar months.
"""

from __future__ import annotations

import math
import re
from typing import Any

from ..errors import InvalidBudget

__all__ = ["WINDOW_UNITS", "format_window", "parse_window", "window_bounds"]

#: Seconds per unit letter accepted in a window string.
WINDOW_UNITS: dict[str, int] = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}

_WINDOW = re.compile(r"([1-9][0-9]{0,6})([smhdw])")
_MAX_SECONDS = 100 * 366 * 86_400


def parse_window(value: Any, field: str = "window") -> int:
    """The length in seconds of a window string such as ``"30s"``, ``"15m"``, ``"1h"``, ``"1d"``, ``"7d"``."""
    if not isinstance(value, str):
        raise InvalidBudget(field, value, "must be a string such as '1h', '1d' or '30d'")
    match = _WINDOW.fullmatch(value)
    if match is None:
        raise InvalidBudget(field, value, "must be a positive integer followed by s, m, h, d or w (e.g. '1d')")
    seconds = int(match.group(1)) * WINDOW_UNITS[match.group(2)]
    if seconds > _MAX_SECONDS:
        raise InvalidBudget(field, value, "must be at most 100 years")
    return seconds


def format_window(seconds: int) -> str:
    """The window string of a length in seconds, in the largest unit that divides it (``31536000`` is
    ``"365d"``, ``604800`` is ``"1w"``): :func:`parse_window` reads it back to the same length, for every
    length it accepts (a count of seconds alone may not: at most 7 digits are read)."""
    for unit in ("w", "d", "h", "m"):
        if seconds % WINDOW_UNITS[unit] == 0:
            return f"{seconds // WINDOW_UNITS[unit]}{unit}"
    return f"{seconds}s"


def window_bounds(seconds: int, now: float) -> tuple[int, int]:
    """``(start, end)`` in Unix seconds of the fixed window of length ``seconds`` that contains ``now``.

    The same formula (``floor(now / seconds) * seconds``) runs in the Redis Lua scripts, so every backend
    agrees on the boundary to the bit.
    """
    start = math.floor(now / seconds) * seconds
    return start, start + seconds
