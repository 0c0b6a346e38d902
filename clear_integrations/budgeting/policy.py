"""``BudgetPolicy``: how each model call is decided (caps, abandonment, pricing, waiting), all limits in tokens."""

from __future__ import annotations

from dataclasses import dataclass

from ..estimators.base import Estimator
from ..pricing import ShadowPrice
from ..validation import check_rate, check_tokens

__all__ = ["BudgetPolicy"]


@dataclass(frozen=True)
class BudgetPolicy:
    """How calls are decided. All limits are in tokens.

    - ``estimator`` predicts each query's curve from its prompt; with ``tokens_per_query`` or
      ``tokens_per_second`` (the pool's target, counting prompt and completion tokens as the ledger does) it turns
      on pricing: caps and abandonment by the shadow price, a funded query paying its prompt on top of its cap.
    - ``max_tokens`` caps every call (``None``: the caller's or the model's own cap, or what the budget has left).
    - ``min_tokens``: a call that can be granted fewer completion tokens than this is abandoned instead (a 2-token
      answer is not worth paying its whole prompt for); a call that asks for fewer (``max_tokens=4``) needs only
      those.
    - ``reserve_tokens``: completion tokens held for a call that nothing caps (no ``max_tokens`` from the caller, the
      model or the policy). Under a hard budget the call is capped at what it holds, so the budget is never passed;
      with no hard budget on its accounts it runs uncapped, and only usage is counted.
    - ``wait``: seconds a call waits for tokens held by calls in flight to come back before it is abandoned. It waits
      only when those tokens could make it fit; a budget that is spent, not held, abandons at once.
    - ``pool`` names the shared price (default: one pool per tenant); ``lease`` is the reservation lease.
    """

    estimator: Estimator | None = None
    tokens_per_query: float | None = None
    tokens_per_second: float | None = None
    max_tokens: int | None = None
    min_tokens: int = 16
    reserve_tokens: int = 1024
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
        """Whether calls are priced: an estimator and a target."""
        return self.estimator is not None and (self.tokens_per_query is not None or self.tokens_per_second is not None)

    def pacer(self) -> ShadowPrice:
        """The pool's pricing. It sees each query's whole curve: ``max_tokens`` caps one call, not the query's
        budget, which a cut answer may reach through continuations."""
        return ShadowPrice(
            tokens_per_query=self.tokens_per_query,
            tokens_per_second=self.tokens_per_second,
            granularity=self.granularity,
        )

    def pool_of(self, scope: str) -> str:
        """The pool whose price decides calls paid by ``scope``."""
        return self.pool or scope.partition("/")[0]
