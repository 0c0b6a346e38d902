"""The exception tree: every error the library raises on purpose derives from :class:`ClearError`.

```
ClearError
├── InvalidInput (also a ValueError): names the field and the value that was refused
│   ├── InvalidBudget        token amounts, budgets, windows, policy settings
│   ├── InvalidCurve         accuracy-at-budget points
│   ├── InvalidAccount       tenant / session / pool identifiers
│   ├── InvalidLedgerURL     a ledger URL with an unknown scheme or a malformed location
│   ├── InvalidUsage         usage reported by a provider or a caller
│   ├── InvalidProblem       a problem file or record (calibration)
│   ├── CalibrationMismatch  a calibration file written with other budgets or samples
│   ├── ScriptExhausted      a metered test double ran out of scripted answers
│   └── Unsupported          a model or an option that cannot do what was asked (e.g. tools on a model without them)
├── BudgetExceeded           the ledger cannot grant the tokens asked for (the ledger API)
├── QueryAbandoned           a call was not made: the budget is spent or the price says it is not worth it
│                            (what every adapter raises when told to raise; names the account and what remains)
├── NotFitted                an estimator was used before it was fitted
├── LocalModelUnavailable    the embedded local model (llama.cpp, SmolLM2) is not installed
└── LedgerError
    ├── LedgerUnavailable    the ledger's store cannot be reached
    │   └── LedgerDataLost   the store forgot its budgets (Redis restarted without persistence)
    ├── UnknownReservation   no reservation has this id
    └── ReservationClosed    the reservation was already released or expired
```

``ClearWarning`` (a ``UserWarning``) flags what works but may not do what the user expects, for example a model
that exposes no completion-cap parameter, or a part of a chain that cannot be capped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "BudgetExceeded",
    "CalibrationMismatch",
    "ClearError",
    "ClearWarning",
    "InvalidAccount",
    "InvalidBudget",
    "InvalidCurve",
    "InvalidInput",
    "InvalidLedgerURL",
    "InvalidProblem",
    "InvalidUsage",
    "LedgerDataLost",
    "LedgerError",
    "LedgerUnavailable",
    "LocalModelUnavailable",
    "NotFitted",
    "QueryAbandoned",
    "ReservationClosed",
    "ScriptExhausted",
    "UnknownReservation",
    "Unsupported",
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


class InvalidProblem(InvalidInput):
    """A problem file or record is malformed (missing field, bad JSON, no gold answer, duplicate id)."""


class CalibrationMismatch(InvalidInput):
    """The output file was written by a run with other settings (``field``: budgets or samples)."""


class ScriptExhausted(InvalidInput):
    """A list of answer lengths has no entry left for this call (``field`` names the list)."""


class Unsupported(InvalidInput):
    """A model or an option cannot do what was asked (``field`` names it; ``reason`` says what instead)."""


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
    """A model call was not made: the budget cannot pay for it, or the policy decided it is not worth its tokens.

    Every adapter ends this one way when told to raise (``on_abandon="raise"``, structured output):

    - ``reason``: why, in words (``"the budget is exhausted"``, ``"no budget is worth its tokens at the price"``);
    - ``scope``: who was to pay (``tenant`` or ``tenant/session``);
    - ``account`` and ``remaining``: the account that refused and the tokens it had left (when a budget refused);
    - ``shadow_price`` and ``expected_accuracy``: the pool's price and the best accuracy the query's curve promised
      (when the price decided).
    """

    def __init__(
        self,
        reason: str,
        *,
        shadow_price: float | None = None,
        expected_accuracy: float | None = None,
        scope: str | None = None,
        account: str | None = None,
        remaining: int | None = None,
    ) -> None:
        self.reason = reason
        self.shadow_price = shadow_price
        self.expected_accuracy = expected_accuracy
        self.scope = scope
        self.account = account
        self.remaining = remaining
        where = "" if scope is None else f" for {scope!r}"
        details = []
        if account is not None:
            details.append(f"{account!r} has {remaining if remaining is not None else 'no'} tokens left")
        if shadow_price is not None:
            details.append(f"shadow price {shadow_price:.3g}")
        if expected_accuracy is not None:
            details.append(f"expected accuracy {expected_accuracy:.3g}")
        suffix = f" ({', '.join(details)})" if details else ""
        super().__init__(f"query abandoned{where}: {reason}{suffix}")


class NotFitted(ClearError):
    """An estimator was asked to predict or save before it was fitted (or loaded)."""

    def __init__(self, estimator: str) -> None:
        self.estimator = estimator
        super().__init__(f"estimator {estimator!r} is not fitted: call fit() or load a fitted one first")


class LocalModelUnavailable(ClearError):
    """The local model cannot be used: ``what`` is missing; ``hint`` says how to install it."""

    def __init__(self, what: str, hint: str) -> None:
        self.what = what
        self.hint = hint
        super().__init__(f"{what} is not available: {hint}")


class LedgerError(ClearError):
    """Base class of ledger failures."""


class LedgerUnavailable(LedgerError):
    """The ledger's store (SQLite file, Redis server) cannot be reached or answered with an error."""

    def __init__(self, url: str, cause: BaseException | str) -> None:
        self.url = url
        self.cause = cause
        super().__init__(f"ledger {url!r} is unavailable: {cause}")


class LedgerDataLost(LedgerUnavailable):
    """The store lost the data the ledger wrote (a Redis restarted without persistence, flushed, or failed over
    to an empty replica): the budgets set before are gone, so a fail-closed ledger grants nothing until they are
    set again (``clear-integrations ledger apply URL budgets.toml``, ``apply_budgets`` or ``set_budget``)."""

    def __init__(self, url: str, cause: BaseException | str | None = None) -> None:
        super().__init__(url, cause or (
            "the store lost the ledger's data (a Redis restart without persistence, a flush, or a failover to an"
            " empty replica): the budgets set before are gone, so nothing is granted until they are set again"
            " (clear-integrations ledger apply URL budgets.toml, or Ledger.apply_budgets / set_budget)"
        ))  # fmt: skip


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
