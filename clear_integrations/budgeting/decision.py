"""``Decision``: what to do with one model call (allow, cap, abandon, extend) and the reservation that pays for it.

The constructors here are pure: the flows (:mod:`.flows`) gather the facts (prompt, curve, price, reservation) and
call them, so a decision is made the same way on every path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ..curves.curve import AccuracyCurve
from ..errors import QueryAbandoned
from ..ledger import Reservation
from ..pricing import PriceDecision

__all__ = ["EXHAUSTED", "NOT_WORTH_IT", "Action", "Decision"]

Action = Literal["allow", "cap", "abandon", "extend"]
EXHAUSTED = "the budget is exhausted"
NOT_WORTH_IT = "no budget is worth its tokens at the price"


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one model call, and the reservation that pays for it (``None`` when abandoned).

    ``max_tokens`` is the completion cap to set in the provider's own field (``None``: leave the model's cap as it
    is). When a budget refused the call, ``account`` names it and ``remaining`` is what it had left.
    """

    scope: str
    action: Action
    max_tokens: int | None
    prompt_tokens: int
    prompt_estimated: bool
    reservation: Reservation | None
    shadow_price: float | None = None
    expected_accuracy: float | None = None
    reason: str = ""
    curve: AccuracyCurve | None = field(default=None, repr=False, compare=False)
    paced: int | None = None  # completion tokens the pool's pacer counted as spent for this call
    account: str | None = None
    remaining: int | None = None

    @property
    def abandoned(self) -> bool:
        return self.action == "abandon"

    def metadata(self) -> dict[str, Any]:
        """The decision as flat, JSON-friendly run metadata (``clear_*`` keys)."""
        return {
            "clear_action": self.action,
            "clear_scope": self.scope,
            "clear_max_tokens": self.max_tokens,
            "clear_shadow_price": self.shadow_price,
            "clear_expected_accuracy": self.expected_accuracy,
            "clear_reason": self.reason,
            "clear_reservation": None if self.reservation is None else self.reservation.id,
            **({} if self.account is None else {"clear_account": self.account, "clear_remaining": self.remaining}),
        }

    def error(self) -> QueryAbandoned:
        """The exception that reports this (abandoned) decision."""
        return QueryAbandoned(
            self.reason,
            shadow_price=self.shadow_price,
            expected_accuracy=self.expected_accuracy,
            scope=self.scope,
            account=self.account,
            remaining=self.remaining,
        )


def abandoned(
    scope: str,
    prompt: int,
    estimated: bool,
    reason: str,
    priced: PriceDecision | None,
    *,
    account: str | None = None,
    remaining: int | None = None,
) -> Decision:
    return Decision(
        scope=scope,
        action="abandon",
        max_tokens=0,
        prompt_tokens=prompt,
        prompt_estimated=estimated,
        reservation=None,
        shadow_price=None if priced is None else priced.price,
        expected_accuracy=None if priced is None else priced.best_accuracy,
        reason=reason,
        account=account,
        remaining=remaining,
    )


def granted(
    scope: str,
    reservation: Reservation,
    prompt: int,
    estimated: bool,
    wanted: int | None,
    requested: int | None,
    ceiling: int | None,
    priced: PriceDecision | None,
    curve: AccuracyCurve | None,
) -> Decision:
    """The decision for a call whose reservation was granted. A call that nothing capped (``wanted`` None) keeps
    the model's own cap when no hard budget bounds it, or when it holds all that cap; else it is capped at what it
    holds, so a hard budget is never passed."""
    cap = reservation.tokens - prompt
    keeps_own_cap = wanted is None and (not reservation.limited or (ceiling is not None and cap >= ceiling))
    max_tokens = None if keeps_own_cap else cap
    capped = max_tokens is not None and (requested is None or cap < requested)
    if priced is not None and cap == priced.budget:
        reason = "capped by the shadow price"
    elif wanted is not None and cap < wanted:
        reason = "capped to what the budget has left"
    elif wanted is None and max_tokens is not None:
        reason = "capped at what it holds: a hard budget, and no cap was asked for"
    else:
        reason = "within budget"
    return Decision(
        scope=scope,
        action="cap" if capped else "allow",
        max_tokens=max_tokens,
        prompt_tokens=prompt,
        prompt_estimated=estimated,
        reservation=reservation,
        shadow_price=None if priced is None else priced.price,
        expected_accuracy=None if priced is None else priced.expected_accuracy,
        reason=reason,
        curve=curve,
        paced=None if priced is None else priced.budget,
    )


def next_step(curve: AccuracyCurve, used: int, price: float, overhead: int) -> int:
    """Tokens to add after ``used`` to reach the point that most beats ``price`` per token, counting the
    ``overhead`` a continuation pays again (its prompt); 0 when no point is worth it."""
    knots = np.asarray(curve.knots(), dtype=np.int64)
    ahead = knots[knots > used]
    if not ahead.size:
        return 0
    gains = np.asarray(curve.accuracy(ahead)) - float(np.asarray(curve.accuracy([used]))[0])
    surplus = gains - price * (ahead - used + overhead)
    best = int(np.argmax(surplus))
    return int(ahead[best] - used) if surplus[best] > 0 else 0


def extended(decision: Decision, reservation: Reservation, used: int, more: int, prompt_tokens: int) -> Decision:
    """The decision of a continuation: ``more`` completion tokens after ``used``, re-sending ``prompt_tokens``."""
    assert decision.curve is not None
    return Decision(
        scope=decision.scope,
        action="extend",
        max_tokens=more,
        prompt_tokens=prompt_tokens,
        prompt_estimated=decision.prompt_estimated,
        reservation=reservation,
        shadow_price=decision.shadow_price,
        expected_accuracy=float(np.asarray(decision.curve.accuracy([used + more]))[0]),
        reason=f"the next {more} tokens beat the price",
        curve=decision.curve,
        paced=more,
    )
