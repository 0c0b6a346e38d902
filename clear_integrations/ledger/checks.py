"""Argument checks of the ledger API: user input in, clean values (or a named :class:`ClearError`) out.

:class:`Ledger` and :class:`AsyncLedger` run these before any store is touched, so a refused call
changes nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

from ..errors import InvalidBudget, InvalidInput, InvalidUsage
from ..validation import check_rate, check_tokens
from .accounts import Scope, parse_scope, tenant_of_reservation
from .model import MAX_TOKENS, Budget, Reservation, Usage

__all__ = [
    "DEFAULT_RETENTION",
    "MAX_LEASE",
    "MAX_PREFIX",
    "Charge",
    "check_budget",
    "check_budgets",
    "check_lease",
    "check_limit",
    "check_open",
    "check_request",
    "check_up_to",
    "check_version",
    "encode_state",
    "reservation_id",
    "to_charge",
    "to_since",
]

#: Longest lease accepted, in seconds (a year).
MAX_LEASE = 366 * 86_400.0
#: How long closed reservations are kept for idempotent retries by default, in seconds (a week).
DEFAULT_RETENTION = 7 * 86_400.0
#: Longest Redis key prefix accepted.
MAX_PREFIX = 256
#: Largest ``limit`` a store is handed (any larger limit keeps every event just the same).
_MAX_LIMIT = 2**62


def check_open(clock: Any, prefix: Any, retention: Any) -> float:
    """The options of ``open_ledger``: ``clock`` None or a function, ``prefix`` a string without ``{}``, and
    ``retention`` a finite number of seconds >= 0 (returned as a float)."""
    if clock is not None and not callable(clock):
        raise InvalidInput("clock", clock, "must be a function returning Unix seconds, such as time.time")
    if not isinstance(prefix, str) or "{" in prefix or "}" in prefix or len(prefix) > MAX_PREFIX:
        reason = f"must be a string of at most {MAX_PREFIX} characters without '{{' or '}}'"
        raise InvalidInput("prefix", prefix, reason)
    return check_rate("retention", retention, error=InvalidInput)


# ---------------------------------------------------------------- argument checks


def check_request(value: Any, field: str = "tokens") -> int:
    """A positive token amount for a reservation (>= 1, <= MAX_TOKENS)."""
    if type(value) is int and 0 < value <= MAX_TOKENS:
        return value
    tokens = check_tokens(field, value, minimum=1)
    if tokens > MAX_TOKENS:
        raise InvalidBudget(field, value, f"must be <= {MAX_TOKENS}")
    return tokens


def check_up_to(tokens: Any, minimum: Any) -> tuple[int, int]:
    """``(tokens, minimum)`` of a ``reserve_up_to``: ``tokens`` positive, ``0 <= minimum <= tokens``."""
    amount = check_request(tokens)
    least = 0 if type(minimum) is int and minimum == 0 else check_tokens("minimum", minimum)
    if least > MAX_TOKENS:
        raise InvalidBudget("minimum", minimum, f"must be <= {MAX_TOKENS}")
    if least > amount:
        raise InvalidBudget("minimum", minimum, f"must be <= tokens ({amount})")
    return amount, least


def check_budget(value: Any, field: str = "budget") -> Budget:
    """A :class:`Budget` instance (validated when it was built)."""
    if not isinstance(value, Budget):
        raise InvalidBudget(field, value, "must be a Budget")
    return value


def check_budgets(value: Any, field: str = "budgets") -> list[tuple[Scope, Budget]]:
    """A mapping of account to :class:`Budget` (e.g. from ``load_budgets``), as ``(scope, budget)`` pairs."""
    if not isinstance(value, Mapping):
        raise InvalidBudget(field, value, "must be a mapping of account to Budget, such as load_budgets(path)")
    return [
        (parse_scope(account, field), check_budget(budget, f"{field}.{account}")) for account, budget in value.items()
    ]


def check_lease(value: Any, field: str = "lease") -> float:
    """A lease length in seconds: finite, > 0 and at most a year."""
    if type(value) is float and 0.0 < value <= MAX_LEASE:
        return value
    lease = check_rate(field, value, error=InvalidInput)
    if not 0.0 < lease <= MAX_LEASE:
        raise InvalidInput(field, value, "must be > 0 and at most one year (in seconds)")
    return lease


def check_limit(value: Any, field: str = "limit") -> int | None:
    """None or a non-negative integer count (a count beyond any log is kept as a very large one)."""
    return None if value is None else min(check_tokens(field, value, error=InvalidInput), _MAX_LIMIT)


def check_version(value: Any, field: str = "expected_version") -> int:
    """A state-slot version: an integer >= 0 (and below 2**63, as every store counts it)."""
    version = check_tokens(field, value, error=InvalidInput)
    if version >= 2**63:
        raise InvalidInput(field, value, "must be < 2**63")
    return version


class Charge(NamedTuple):
    """What a commit charges: ``total`` against budgets, the rest recorded as details."""

    total: int
    prompt: int = 0
    completion: int = 0
    reasoning: int = 0
    estimated: bool = False


def to_charge(used: Any, field: str = "used") -> Charge:
    """An int (total tokens charged) or a :class:`Usage` (charged ``prompt + completion``)."""
    if type(used) is int and 0 <= used <= MAX_TOKENS:
        return Charge(used)
    if isinstance(used, Usage):
        return Charge(used.total, used.prompt, used.completion, used.reasoning, used.estimated)
    total = check_tokens(field, used, error=InvalidUsage)
    if total > MAX_TOKENS:
        raise InvalidUsage(field, used, f"must be <= {MAX_TOKENS}")
    return Charge(total)


def reservation_id(value: Any, field: str = "reservation") -> str:
    """The id of a :class:`Reservation` or an id string; ids that name no tenant are unknown."""
    rid = value.id if isinstance(value, Reservation) else value
    if not isinstance(rid, str):
        raise InvalidInput(field, value, "must be a Reservation or a reservation id string")
    tenant_of_reservation(rid)
    return rid


def to_since(value: Any, field: str = "since") -> float | None:
    """None, Unix seconds, or a datetime (a naive datetime is taken as UTC)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return moment.timestamp()
    return check_rate(field, value, minimum=-math.inf, error=InvalidInput)


def encode_state(value: Any, field: str = "value") -> str:
    """The JSON text of a state-slot value: a dict with string keys, JSON-serialisable, finite numbers."""
    if not isinstance(value, dict):
        raise InvalidInput(field, value, "must be a dict")
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"), sort_keys=True)
    except RecursionError:
        raise InvalidInput(field, "<a dict nested too deeply>", "must be JSON-serialisable: too deep") from None
    except (TypeError, ValueError) as exc:
        raise InvalidInput(field, value, f"must be JSON-serialisable: {exc}") from None
