"""The decision pipeline, free of any framework: estimate, price, decide, reserve; then commit or release.

An adapter calls :meth:`BudgetController.begin` before a model call. The :class:`Decision` says whether to call
at all (``abandoned``), and with which completion cap (``max_tokens``, to be set in the provider's own parameter);
its reservation already holds the prompt plus that cap on the tenant and the session, atomically. After the call
the adapter reports the real usage with :meth:`~BudgetController.end` (unused tokens go back to the pool) or
:meth:`~BudgetController.fail` (everything goes back). A call cut off at its cap may be continued with
:meth:`~BudgetController.extend` when the curve says the next tokens are still worth their price.

With an estimator and a target (``tokens_per_query`` or ``tokens_per_second``), each query's budget comes from the
pool's online shadow price (:class:`~clear_integrations.pricing.ShadowPrice`), whose state lives in the ledger and
is updated with compare-and-set, so every process shares one price. Without them, the controller only caps calls to
what the budgets have left. :class:`BudgetController` and :class:`AsyncBudgetController` share every pure step;
only the ledger I/O differs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import anyio
import numpy as np

from .curves.curve import AccuracyCurve
from .errors import BudgetExceeded
from .estimators.base import Estimator
from .ledger import AsyncLedger, Ledger, Reservation, Usage
from .pricing import PriceDecision, PriceState, ShadowPrice
from .tokens import count_tokens
from .validation import check_rate, check_tokens

__all__ = ["AsyncBudgetController", "BudgetController", "BudgetPolicy", "Decision"]

_CAS_TRIES = 8
_FIRST_DELAY = 0.002
_MAX_DELAY = 0.1
Action = Literal["allow", "cap", "abandon", "extend"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one model call, and the reservation that pays for it (``None`` when abandoned)."""

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

    @property
    def abandoned(self) -> bool:
        return self.action == "abandon"

    def metadata(self) -> dict[str, Any]:
        """The decision as flat, JSON-friendly run metadata (``clear_*`` keys)."""
        return {
            "clear_action": self.action,
            "clear_max_tokens": self.max_tokens,
            "clear_shadow_price": self.shadow_price,
            "clear_expected_accuracy": self.expected_accuracy,
            "clear_reason": self.reason,
            "clear_reservation": None if self.reservation is None else self.reservation.id,
        }


@dataclass(frozen=True)
class BudgetPolicy:
    """How calls are decided. All limits are in tokens.

    - ``estimator`` predicts each query's curve from its prompt; with ``tokens_per_query`` or
      ``tokens_per_second`` (the pool's target, counting prompt and completion tokens as the ledger does) it turns
      on pricing: caps and abandonment by the shadow price, a funded query paying its prompt on top of its cap.
    - ``max_tokens`` caps every call (``None``: the model's own limit, or what the budget has left).
    - ``min_tokens``: a call that can be granted fewer completion tokens than this is abandoned instead.
    - ``reserve_tokens``: completion tokens held for a call that nothing caps; it is left uncapped while the
      budgets can hold that much, and capped to what they have left otherwise.
    - ``wait``: seconds a call waits for tokens held by calls in flight to come back before it is abandoned
      (0: abandon at once); a budget that is spent, not held, abandons at once.
    - ``pool`` names the shared price (default: one pool per tenant); ``lease`` is the reservation lease.
    """

    estimator: Estimator | None = None
    tokens_per_query: float | None = None
    tokens_per_second: float | None = None
    max_tokens: int | None = None
    min_tokens: int = 1
    reserve_tokens: int = 4096
    granularity: int = 1
    pool: str | None = None
    lease: float = 300.0
    wait: float = 30.0

    def __post_init__(self) -> None:
        check_tokens("min_tokens", self.min_tokens, minimum=1)
        check_tokens("granularity", self.granularity, minimum=1)
        check_tokens("reserve_tokens", self.reserve_tokens, minimum=1)
        check_rate("lease", self.lease)
        check_rate("wait", self.wait)
        if self.max_tokens is not None:
            check_tokens("max_tokens", self.max_tokens, minimum=1)

    @property
    def priced(self) -> bool:
        return self.estimator is not None and (self.tokens_per_query is not None or self.tokens_per_second is not None)

    def pacer(self) -> ShadowPrice:
        """The pool's pricing. It sees each query's whole curve: ``max_tokens`` caps one call, not the query's
        budget, which a cut answer may reach through continuations (:meth:`BudgetController.extend`)."""
        return ShadowPrice(
            tokens_per_query=self.tokens_per_query,
            tokens_per_second=self.tokens_per_second,
            granularity=self.granularity,
        )

    def pool_of(self, scope: str) -> str:
        return self.pool or scope.partition("/")[0]


def _wanted(policy: BudgetPolicy, requested: int | None, priced: PriceDecision | None) -> int | None:
    """The completion cap before the ledger has its say (``None``: no cap from the policy or the caller)."""
    caps = [c for c in (requested, policy.max_tokens, None if priced is None else priced.budget) if c is not None]
    return min(caps) if caps else None


def _abandoned(scope: str, prompt: int, estimated: bool, reason: str, priced: PriceDecision | None) -> Decision:
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
    )


def _granted(
    scope: str,
    reservation: Reservation,
    prompt: int,
    estimated: bool,
    wanted: int | None,
    requested: int | None,
    priced: PriceDecision | None,
    curve: AccuracyCurve | None,
) -> Decision:
    cap = reservation.tokens - prompt
    uncapped = wanted is None and reservation.tokens == reservation.requested
    capped = not uncapped and (requested is None or cap < requested)
    return Decision(
        scope=scope,
        action="cap" if capped else "allow",
        max_tokens=None if uncapped else cap,
        prompt_tokens=prompt,
        prompt_estimated=estimated,
        reservation=reservation,
        shadow_price=None if priced is None else priced.price,
        expected_accuracy=None if priced is None else priced.expected_accuracy,
        reason="capped by the shadow price" if priced is not None and cap == priced.budget else "within budget",
        curve=curve,
        paced=None if priced is None else priced.budget,
    )


def _next_step(curve: AccuracyCurve, used: int, price: float, overhead: int) -> int:
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


def _continuation(decision: Decision, used: int, prompt_tokens: int, cap: int | None) -> int:
    """The continuation's completion tokens (0: none), at most ``cap`` per call."""
    if decision.curve is None or decision.shadow_price is None:
        return 0
    more = _next_step(decision.curve, check_tokens("used", used), decision.shadow_price, prompt_tokens)
    return more if cap is None else min(more, cap)


def _extended(decision: Decision, reservation: Reservation, used: int, more: int, prompt_tokens: int) -> Decision:
    assert decision.curve is not None
    return Decision(
        paced=more,
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
    )


class _Shared:
    def __init__(self, policy: BudgetPolicy | None) -> None:
        self.policy = policy or BudgetPolicy()
        self._pacer = self.policy.pacer() if self.policy.priced else None

    def _curve(self, prompt: str, meta: Mapping[str, Any] | None) -> AccuracyCurve | None:
        if self.policy.estimator is None:
            return None
        return self.policy.estimator.predict([prompt], [meta or {}])[0]

    def _step(
        self, stored: dict[str, Any] | None, curve: AccuracyCurve, prompt: int
    ) -> tuple[PriceDecision, dict[str, Any]]:
        assert self._pacer is not None
        state = PriceState() if stored is None else PriceState.from_dict(stored)
        priced, new_state = self._pacer.transition(state, curve, overhead=prompt)
        return priced, new_state.to_dict()

    def _paced(self, stored: dict[str, Any] | None, delta: int) -> dict[str, Any] | None:
        """The pool state with ``delta`` more completion tokens spent (fewer when negative: a refund of what a call
        did not use), or None when an increase does not fit the pacer's token bucket."""
        assert self._pacer is not None
        state = PriceState() if stored is None else PriceState.from_dict(stored)
        if delta > 0 and state.spent + delta > state.allowance + self._pacer.burst:
            return None
        return replace(state, spent=state.spent + delta).to_dict()

    def _unused(self, decision: Decision, usage: Usage) -> int:
        return 0 if decision.paced is None or self._pacer is None else max(0, decision.paced - usage.completion)

    def _count(self, prompt: str, prompt_tokens: int | None, model: str | None) -> tuple[int, bool]:
        if prompt_tokens is not None:
            return check_tokens("prompt_tokens", prompt_tokens), False
        counted = count_tokens(prompt, model=model)
        return counted.tokens, counted.estimated


class BudgetController(_Shared):
    """The pipeline on a synchronous :class:`~clear_integrations.ledger.Ledger`."""

    def __init__(
        self, ledger: Ledger, policy: BudgetPolicy | None = None, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        super().__init__(policy)
        self.ledger = ledger
        self._sleep = sleep

    def _price(self, pool: str, curve: AccuracyCurve, prompt: int) -> PriceDecision:
        priced = None
        for _ in range(_CAS_TRIES):
            stored, version = self.ledger.get_state(pool)
            priced, new_state = self._step(stored, curve, prompt)
            if self.ledger.set_state(pool, new_state, expected_version=version):
                break
        assert priced is not None  # the last try's decision stands even if another process won the race
        return priced

    def _pace(self, pool: str, delta: int) -> bool:
        """Count ``delta`` completion tokens on the pool's pacer (compare-and-set); False when they do not fit."""
        for _ in range(_CAS_TRIES):
            stored, version = self.ledger.get_state(pool)
            new_state = self._paced(stored, delta)
            if new_state is None:
                return False
            if self.ledger.set_state(pool, new_state, expected_version=version):
                return True
        return False

    def begin(
        self,
        scope: str,
        prompt: str,
        *,
        requested: int | None = None,
        prompt_tokens: int | None = None,
        model: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Decision:
        """Decide one call and reserve what it may spend: the prompt plus the completion cap."""
        tokens, estimated = self._count(prompt, prompt_tokens, model)
        curve = self._curve(prompt, meta)
        priced = self._price(self.policy.pool_of(scope), curve, tokens) if curve is not None and self._pacer else None
        if priced is not None and priced.abandoned:
            return _abandoned(scope, tokens, estimated, "no budget is worth its tokens at the price", priced)
        wanted = _wanted(self.policy, requested, priced)
        amount = tokens + (wanted if wanted is not None else self.policy.reserve_tokens)
        deadline, delay = time.monotonic() + self.policy.wait, _FIRST_DELAY
        while True:
            try:
                reservation = self.ledger.reserve_up_to(
                    scope, amount, minimum=tokens + self.policy.min_tokens, lease=self.policy.lease
                )
                break
            except BudgetExceeded as refused:
                balance = self.ledger.balance(refused.account)
                if balance.remaining is not None and balance.remaining >= tokens + self.policy.min_tokens:
                    continue  # calls in flight finished since the refusal: try again at once
                if time.monotonic() >= deadline or balance.held == 0:
                    return _abandoned(scope, tokens, estimated, "the budget is exhausted", priced)
            self._sleep(delay)  # tokens held by calls in flight may come back: wait for them
            delay = min(2 * delay, _MAX_DELAY)
        return _granted(scope, reservation, tokens, estimated, wanted, requested, priced, curve)

    def end(self, decision: Decision, usage: Usage) -> int:
        """Commit the call's real usage (and refund what it did not use to the pool's pacer); returns the tokens
        given back to the budgets."""
        if decision.reservation is None:
            return 0
        returned = self.ledger.commit(decision.reservation, usage)
        if unused := self._unused(decision, usage):
            self._pace(self.policy.pool_of(decision.scope), -unused)
        return returned

    def fail(self, decision: Decision) -> int:
        """Release the whole reservation of a call that failed."""
        return 0 if decision.reservation is None else self.ledger.release(decision.reservation)

    def extend(self, decision: Decision, *, used: int, prompt_tokens: int) -> Decision | None:
        """After a call stopped at its cap (``used`` completion tokens so far): reserve a continuation of
        ``prompt_tokens`` plus the tokens to the curve's next point that still beats the price, or return None."""
        more = _continuation(decision, used, prompt_tokens, self.policy.max_tokens)
        pool = self.policy.pool_of(decision.scope)
        if not more or (self._pacer is not None and not self._pace(pool, prompt_tokens + more)):
            return None  # not worth it, or beyond what the pool's pace allows
        try:
            reservation = self.ledger.reserve(decision.scope, prompt_tokens + more, lease=self.policy.lease)
        except BudgetExceeded:
            if self._pacer is not None:
                self._pace(pool, -(prompt_tokens + more))
            return None
        return _extended(decision, reservation, used, more, prompt_tokens)


class AsyncBudgetController(_Shared):
    """The same pipeline on an :class:`~clear_integrations.ledger.AsyncLedger`."""

    def __init__(self, ledger: AsyncLedger, policy: BudgetPolicy | None = None) -> None:
        super().__init__(policy)
        self.ledger = ledger

    async def _price(self, pool: str, curve: AccuracyCurve, prompt: int) -> PriceDecision:
        priced = None
        for _ in range(_CAS_TRIES):
            stored, version = await self.ledger.get_state(pool)
            priced, new_state = self._step(stored, curve, prompt)
            if await self.ledger.set_state(pool, new_state, expected_version=version):
                break
        assert priced is not None
        return priced

    async def _pace(self, pool: str, delta: int) -> bool:
        """See :meth:`BudgetController._pace`."""
        for _ in range(_CAS_TRIES):
            stored, version = await self.ledger.get_state(pool)
            new_state = self._paced(stored, delta)
            if new_state is None:
                return False
            if await self.ledger.set_state(pool, new_state, expected_version=version):
                return True
        return False

    async def begin(
        self,
        scope: str,
        prompt: str,
        *,
        requested: int | None = None,
        prompt_tokens: int | None = None,
        model: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Decision:
        """See :meth:`BudgetController.begin`."""
        tokens, estimated = self._count(prompt, prompt_tokens, model)
        curve = self._curve(prompt, meta)
        priced = (
            await self._price(self.policy.pool_of(scope), curve, tokens) if curve is not None and self._pacer else None
        )
        if priced is not None and priced.abandoned:
            return _abandoned(scope, tokens, estimated, "no budget is worth its tokens at the price", priced)
        wanted = _wanted(self.policy, requested, priced)
        amount = tokens + (wanted if wanted is not None else self.policy.reserve_tokens)
        deadline, delay = time.monotonic() + self.policy.wait, _FIRST_DELAY
        while True:
            try:
                reservation = await self.ledger.reserve_up_to(
                    scope, amount, minimum=tokens + self.policy.min_tokens, lease=self.policy.lease
                )
                break
            except BudgetExceeded as refused:
                balance = await self.ledger.balance(refused.account)
                if balance.remaining is not None and balance.remaining >= tokens + self.policy.min_tokens:
                    continue
                if time.monotonic() >= deadline or balance.held == 0:
                    return _abandoned(scope, tokens, estimated, "the budget is exhausted", priced)
            await anyio.sleep(delay)
            delay = min(2 * delay, _MAX_DELAY)
        return _granted(scope, reservation, tokens, estimated, wanted, requested, priced, curve)

    async def end(self, decision: Decision, usage: Usage) -> int:
        """See :meth:`BudgetController.end`."""
        if decision.reservation is None:
            return 0
        returned = await self.ledger.commit(decision.reservation, usage)
        if unused := self._unused(decision, usage):
            await self._pace(self.policy.pool_of(decision.scope), -unused)
        return returned

    async def fail(self, decision: Decision) -> int:
        """See :meth:`BudgetController.fail`."""
        return 0 if decision.reservation is None else await self.ledger.release(decision.reservation)

    async def extend(self, decision: Decision, *, used: int, prompt_tokens: int) -> Decision | None:
        """See :meth:`BudgetController.extend`."""
        more = _continuation(decision, used, prompt_tokens, self.policy.max_tokens)
        pool = self.policy.pool_of(decision.scope)
        if not more or (self._pacer is not None and not await self._pace(pool, prompt_tokens + more)):
            return None
        try:
            reservation = await self.ledger.reserve(decision.scope, prompt_tokens + more, lease=self.policy.lease)
        except BudgetExceeded:
            if self._pacer is not None:
                await self._pace(pool, -(prompt_tokens + more))
            return None
        return _extended(decision, reservation, used, more, prompt_tokens)
