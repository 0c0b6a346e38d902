"""The exception tree: every error the library raises on purpose derives from :class:`ClearError`.

```
ClearError
├── InvalidInput (also a ValueError): names the field and the value that was refused
│   ├── InvalidBudget        token amounts, budgets, windows
│   ├── InvalidCurve         accuracy-at-budget points
│   ├── InvalidAccount       tenant / session / pool identifiers
│   ├── InvalidLedgerURL     a ledger URL with an unknown scheme or a malformed location
│   └── InvalidUsage         usage reported by a provider or a caller
├── BudgetExceeded           a hard budget cannot grant the tokens asked for
├── QueryAbandoned           the policy decided that a query is not worth its tokens
├── NotFitted                an estimator was used before it was fitted
└── LedgerError
    ├── LedgerUnavailable    the ledger's store cannot be reached
    ├── UnknownReservation   no reservation has this id
    └── ReservationClosed    the reservation was already released or expired
```

``ClearWarning`` (a ``UserWarning``) flags what works but may not do what the user expects, for example a model
that exposes no completion-cap parameter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "BudgetExceeded",
    "ClearError",
    "ClearWarning",
    "InvalidAccount",
    "InvalidBudget",
    "InvalidCurve",
    "InvalidInput",
    "InvalidLedgerURL",
    "InvalidUsage",
    "LedgerError",
    "LedgerUnavailable",
    "NotFitted",
    "QueryAbandoned",
    "ReservationClosed",
    "UnknownReservation",
]


class ClearError(Exception):
    """Base class of every error raised by clear-integrations."""


class ClearWarning(UserWarning):
    """Something works, but may not do what the user expects (for example a cap a model may ignore)."""


class InvalidInput(ClearError, ValueError):
    """A value was refused. ``field`` names the parameter, ``value`` is what was given."""

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field}={value!r}: {reason}")


class InvalidBudget(InvalidInput):
    """A token amount, budget or window is malformed (negative, NaN, not an integer, ...)."""


class InvalidCurve(InvalidInput):
    """Accuracy-at-budget points are malformed (unsorted, out of [0, 1], mismatched lengths, ...)."""


class InvalidAccount(InvalidInput):
    """A tenant, session or pool identifier is malformed."""


class InvalidLedgerURL(InvalidInput):
    """A ledger URL with an unknown scheme or a malformed location (``field`` is ``"url"``)."""


class InvalidUsage(InvalidInput):
    """Token usage reported after a call is malformed."""


class BudgetExceeded(ClearError):
    """A hard budget cannot grant ``requested`` tokens.

    ``remaining`` maps every account that was checked (tenant, session, ...) to the tokens it still had,
    so the caller can see which one refused. ``shadow_price`` is the pool's price at the time, if known.
    """

    def __init__(
        self,
        account: str,
        requested: int,
        remaining: Mapping[str, int],
        *,
        shadow_price: float | None = None,
    ) -> None:
        self.account = account
        self.requested = requested
        self.remaining = dict(remaining)
        self.shadow_price = shadow_price
        left = ", ".join(f"{name}: {tokens}" for name, tokens in self.remaining.items())
        super().__init__(f"budget exceeded on {account!r}: requested {requested} tokens, remaining {{{left}}}")


class QueryAbandoned(ClearError):
    """The policy abandoned a query: its best expected accuracy does not pay for its tokens.

    ``shadow_price`` is the price of a token when the decision was made; ``expected_accuracy`` the best
    accuracy the query's curve promised; ``reason`` a human-readable explanation.
    """

    def __init__(self, reason: str, *, shadow_price: float, expected_accuracy: float) -> None:
        self.reason = reason
        self.shadow_price = shadow_price
        self.expected_accuracy = expected_accuracy
        super().__init__(
            f"query abandoned: {reason} (shadow price {shadow_price:.3g}, expected accuracy {expected_accuracy:.3g})"
        )


class NotFitted(ClearError):
    """An estimator was asked to predict or save before it was fitted (or loaded)."""

    def __init__(self, estimator: str) -> None:
        self.estimator = estimator
        super().__init__(f"estimator {estimator!r} is not fitted: call fit() or load a fitted one first")


class LedgerError(ClearError):
    """Base class of ledger failures."""


class LedgerUnavailable(LedgerError):
    """The ledger's store (SQLite file, Redis server) cannot be reached or answered with an error."""

    def __init__(self, url: str, cause: BaseException | str) -> None:
        self.url = url
        self.cause = cause
        super().__init__(f"ledger {url!r} is unavailable: {cause}")


class UnknownReservation(LedgerError, KeyError):
    """No reservation has this id (never made, or already purged)."""

    def __init__(self, reservation_id: str) -> None:
        self.reservation_id = reservation_id
        super().__init__(f"unknown reservation {reservation_id!r}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class ReservationClosed(LedgerError):
    """The reservation cannot take this operation: it was already ``state`` (released, expired, ...)."""

    def __init__(self, reservation_id: str, state: str) -> None:
        self.reservation_id = reservation_id
        self.state = state
        super().__init__(f"reservation {reservation_id!r} is already {state}")
