"""The lifecycle of budgeted calls, written once: pure generator flows that yield ledger operations.

:class:`Lifecycle` holds a policy and turns each step into a flow: :meth:`~Lifecycle.begin` (estimate, price,
reserve or wait, decide), :meth:`~Lifecycle.end` (commit, settle the pacer), :meth:`~Lifecycle.fail` (release),
:meth:`~Lifecycle.extend` (continue a cut answer while the next tokens beat the price) and :meth:`~Lifecycle.call`,
the whole of one model call: decide, :class:`~.ops.Generate`, commit or release, continue or stop. The flows do no
I/O; a driver (:mod:`.drivers`) performs what they yield, sync, async or in worker threads, so the sync and async
twins, the stream and non-stream paths and both frameworks share every decision.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..curves.curve import AccuracyCurve
from ..errors import BudgetExceeded
from ..ledger import Balance, Usage
from ..pricing import PriceDecision, PriceState
from ..validation import check_tokens
from .decision import EXHAUSTED, NOT_WORTH_IT, Decision, abandoned, extended, granted, next_step
from .ops import Commit, Flow, Generate, Generated, ReadBalance, ReadState, Release, Reserve, Sleep, WriteState
from .policy import BudgetPolicy

__all__ = ["Lifecycle", "Outcome", "Request"]

_CAS_TRIES = 8
_FIRST_DELAY = 0.002
_MAX_DELAY = 0.1


@dataclass(frozen=True, slots=True)
class Request:
    """One model call before its decision: who pays (``scope``), the ``prompt`` (for the estimator) and its
    ``prompt_tokens`` (``estimated`` unless counted with the model's own tokenizer), the cap the caller
    ``requested``, the model's own ``ceiling`` (a default cap the provider applies anyway), ``meta`` for the
    estimator, and whether an answer cut at its cap may be continued (``extendable``). An ``embedding`` call
    writes nothing: it holds its input tokens only and is never priced."""

    scope: str
    prompt: str
    prompt_tokens: int
    estimated: bool = True
    requested: int | None = None
    ceiling: int | None = None
    meta: Mapping[str, Any] | None = field(default=None, compare=False)
    extendable: bool = True
    embedding: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one call ended: its first ``decision`` (abandoned or not), the ``outputs`` of the model calls made (the
    answer and its continuations, in order) and their ``usage`` together."""

    decision: Decision
    outputs: tuple[Any, ...] = ()
    usage: Usage = field(default_factory=Usage)


class Lifecycle:
    """The flows of one policy (see the module docstring). ``clock`` (monotonic seconds) bounds the wait."""

    def __init__(self, policy: BudgetPolicy | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy or BudgetPolicy()
        self.pacer = self.policy.pacer() if self.policy.priced else None
        self.clock = clock

    # -- the pool's price -------------------------------------------------------------------------------------------

    def price(self, pool: str, curve: AccuracyCurve, prompt: int) -> Flow[PriceDecision]:
        """Decide ``curve`` at the pool's price and move the price (compare-and-set; the last try's decision stands
        if other processes keep winning the race)."""
        assert self.pacer is not None
        priced = None
        for _ in range(_CAS_TRIES):
            stored, version = yield ReadState(pool)
            state = PriceState() if stored is None else PriceState.from_dict(stored)
            priced, new_state = self.pacer.transition(state, curve, overhead=prompt)
            if (yield WriteState(pool, new_state.to_dict(), version)):
                break
        assert priced is not None
        return priced

    def pace(self, pool: str, delta: int, *, force: bool = False) -> Flow[bool]:
        """Book ``delta`` tokens on the pool's pacer (a refund when negative); False when an increase does not fit
        its token bucket (``force``: book it anyway, the tokens were spent)."""
        assert self.pacer is not None
        for _ in range(_CAS_TRIES):
            stored, version = yield ReadState(pool)
            new_state = self.pacer.paced(
                PriceState() if stored is None else PriceState.from_dict(stored), delta, force=force
            )
            if new_state is None:
                return False
            if (yield WriteState(pool, new_state.to_dict(), version)):
                return True
        return False

    # -- one decision ----------------------------------------------------------------------------------------------

    def begin(self, request: Request) -> Flow[Decision]:
        """Decide a call and reserve what it may spend: the prompt plus the completion cap, on every account of its
        scope. Tokens held by calls in flight are waited for (up to ``policy.wait`` seconds) only while they could
        make the call fit; a spent budget abandons at once."""
        policy, scope, prompt = self.policy, request.scope, request.prompt_tokens
        estimator = None if request.embedding else policy.estimator
        curve = None if estimator is None else estimator.predict([request.prompt], [request.meta or {}])[0]
        pool = policy.pool_of(scope)
        priced = (yield from self.price(pool, curve, prompt)) if curve is not None and self.pacer else None
        if priced is not None and priced.abandoned:
            return abandoned(scope, prompt, request.estimated, NOT_WORTH_IT, priced)
        caps = [c for c in (request.requested, policy.max_tokens, None if priced is None else priced.budget) if c]
        wanted = 0 if request.embedding else min(caps) if caps else None
        hold = wanted if wanted is not None else min(policy.reserve_tokens, request.ceiling or policy.reserve_tokens)
        least = prompt + min(policy.min_tokens, hold)
        deadline, delay = self.clock() + policy.wait, _FIRST_DELAY
        while True:
            try:
                reservation = yield Reserve(scope, prompt + hold, least, policy.lease)
                break
            except BudgetExceeded as refused:
                balance: Balance = yield ReadBalance(refused.account)
                left = balance.remaining
                if left is not None and left >= least:
                    continue  # calls in flight finished since the refusal: try again at once
                if left is None or left + balance.held < least or self.clock() >= deadline:
                    if priced is not None:  # nothing will be spent: the pacer gets its booking back
                        yield from self.pace(pool, -(priced.budget + prompt), force=True)
                    return abandoned(
                        scope, prompt, request.estimated, EXHAUSTED, priced, account=refused.account, remaining=left
                    )
            yield Sleep(delay)  # tokens held by calls in flight may come back and make it fit: wait for them
            delay = min(2 * delay, _MAX_DELAY)
        return granted(
            scope, reservation, prompt, request.estimated, wanted, request.requested, request.ceiling, priced, curve
        )

    def end(self, decision: Decision, usage: Usage) -> Flow[int]:
        """Commit the call's real usage; the pool's pacer books what it really cost. Returns the tokens given back."""
        if decision.reservation is None:
            return 0
        returned: int = yield Commit(decision.reservation, usage)
        if self.pacer is not None and decision.paced is not None:
            booked = decision.paced + decision.prompt_tokens
            if usage.total != booked:
                yield from self.pace(self.policy.pool_of(decision.scope), usage.total - booked, force=True)
        return returned

    def fail(self, decision: Decision) -> Flow[int]:
        """Release the whole reservation of a call that failed (the pacer gets its booking back)."""
        if decision.reservation is None:
            return 0
        returned: int = yield Release(decision.reservation)
        if self.pacer is not None and decision.paced is not None:
            yield from self.pace(
                self.policy.pool_of(decision.scope), -(decision.paced + decision.prompt_tokens), force=True
            )
        return returned

    def extend(self, decision: Decision, *, used: int, prompt_tokens: int) -> Flow[Decision | None]:
        """After a call stopped at its cap (``used`` completion tokens so far): reserve a continuation of
        ``prompt_tokens`` plus the tokens to the curve's next point that still beats the price, or return None."""
        if decision.curve is None or decision.shadow_price is None:
            return None
        used = check_tokens("used", used)
        more = next_step(decision.curve, used, decision.shadow_price, check_tokens("prompt_tokens", prompt_tokens))
        if self.policy.max_tokens is not None:
            more = min(more, self.policy.max_tokens)
        pool = self.policy.pool_of(decision.scope)
        if not more or (self.pacer is not None and not (yield from self.pace(pool, prompt_tokens + more))):
            return None  # not worth it, or beyond what the pool's pace allows
        try:
            reservation = yield Reserve(decision.scope, prompt_tokens + more, None, self.policy.lease)
        except BudgetExceeded:
            if self.pacer is not None:
                yield from self.pace(pool, -(prompt_tokens + more), force=True)
            return None
        return extended(decision, reservation, used, more, prompt_tokens)

    # -- one whole model call ----------------------------------------------------------------------------------------

    def call(self, request: Request) -> Flow[Outcome]:
        """Decide, generate (the driver hands :class:`~.ops.Generate` to the adapter), commit; then continue an
        answer cut at its cap while the next tokens beat the price. An abandoned call never reaches the model."""
        decision = yield from self.begin(request)
        if decision.abandoned:
            return Outcome(decision)
        outputs: tuple[Any, ...] = ()
        total, current = Usage(), decision
        while True:
            generated = yield from self.generate(current, outputs)
            outputs, total = (*outputs, generated.output), total + generated.usage
            if not (request.extendable and generated.cut):
                break
            following = yield from self.extend(current, used=total.completion, prompt_tokens=generated.again_tokens)
            if following is None:
                break
            current = following
        return Outcome(decision, outputs, total)

    def generate(self, decision: Decision, outputs: tuple[Any, ...] = ()) -> Flow[Generated]:
        """One model call on ``decision``: committed when it returns, released when it raises (cancellation too)."""
        try:
            generated: Generated = yield Generate(decision, outputs)
        except GeneratorExit:
            raise
        except BaseException:
            yield from self.fail(decision)
            raise
        yield from self.end(decision, generated.usage)
        return generated
