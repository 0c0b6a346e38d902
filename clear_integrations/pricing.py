"""The online shadow price of one budget pool: decide each arriving query at the current price, then move the
price toward the pool's target spend rate.

Production traffic arrives one query at a time, so the batch market of :func:`~clear_integrations.allocate`
cannot be cleared. Instead the pool keeps a price ``lam``. An arriving query buys the budget ``b`` that maximises
its surplus ``A(b) - lam * b`` (``b = 0``, abandonment, when no budget has a positive surplus). The price is
the market price of recent traffic (the batch allocator's price on a decayed sample of the last queries' hulls),
moved by dual descent toward the target: it rises while queries take more than their share and falls while they
take less (see :class:`ShadowPrice`).

The target is ``tokens_per_query`` (a budget per query) or ``tokens_per_second`` (a budget per time window,
read from an injected clock). A token bucket bounds the total: a query is never granted more than the target
accrued so far plus ``burst`` minus what was spent, so the pool never overspends its target by more than
``burst`` (one query's cap by default; unspent target is kept for at most ``window`` queries). The state is a
small :class:`PriceState`, serialisable to a dict so that a ledger can store it and share it between processes.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .curves.curve import AccuracyCurve
from .curves.hull import upper_hull
from .curves.points import curve_points
from .errors import InvalidBudget
from .validation import check_rate, check_tokens

__all__ = ["PriceDecision", "PriceState", "ShadowPrice"]


_BINS_PER_DECADE = 10
_LOWEST_DECADE = -7
_N_BINS = -_LOWEST_DECADE * _BINS_PER_DECADE


@dataclass(frozen=True, slots=True)
class PriceState:
    """What a pool remembers between decisions (JSON-friendly via :meth:`to_dict` / :meth:`from_dict`).

    - ``demand``: recent traffic's demand curve: the hull tokens bid in each log-spaced slope bin (0.1 decade
      from 1e-7 to 1), decayed by ``1 - 1/window`` per query; ``weight`` is the decayed query count.
    - ``supply``: the per-query targets, decayed like ``demand`` (so ``supply / weight`` is the mean target).
    - ``allowance``: the target accrued so far; ``spent``: tokens granted minus refunds.
    - ``price``: the last price quoted.
    """

    demand: tuple[float, ...] = (0.0,) * _N_BINS
    weight: float = 0.0
    price: float | None = None
    spent: int = 0
    allowance: float = 0.0
    queries: int = 0
    supply: float = 0.0
    last_time: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["demand"] = list(self.demand)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PriceState:
        fields = {key: data[key] for key in cls.__dataclass_fields__ if key in data}
        if "demand" in fields:
            fields["demand"] = tuple(float(v) for v in fields["demand"])
        return cls(**fields)


@dataclass(frozen=True, slots=True)
class PriceDecision:
    """One query's budget (0 = abandoned), the price it was decided at, and its expected accuracy."""

    budget: int
    price: float
    expected_accuracy: float
    abandoned: bool
    best_accuracy: float


class ShadowPrice:
    """Online pricing for one pool. Thread-safe; :meth:`decide` is the only call on the hot path.

    The price has two parts. The *market* part clears recent traffic's demand: the price at which the hulls of
    the last ``window`` queries (exponentially decayed) would ask for exactly their targets, the batch
    allocator's answer on a sliding sample. The *pacing* part is the dual variable of the spend constraint, in
    log space: ``correction = -step * saved / t_avg``, where ``saved`` is the target accrued but not spent (at
    most ``window`` queries' worth) and ``t_avg`` the mean target per query. It is the sum of dual-descent steps
    ``step * (b - t) / t_avg`` over all decisions, read from the state instead of stored, so it corrects what the
    sample misses (drifting traffic, unused tokens refunded) and never drifts on its own. The quoted price is
    ``market * exp(correction)``.
    """

    def __init__(
        self,
        *,
        tokens_per_query: float | None = None,
        tokens_per_second: float | None = None,
        step: float = 0.005,
        window: int = 200,
        burst: int | None = None,
        max_tokens: int | None = None,
        granularity: int = 1,
        state: PriceState | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (tokens_per_query is None) == (tokens_per_second is None):
            raise InvalidBudget(
                "tokens_per_query",
                tokens_per_query,
                "give exactly one of tokens_per_query or tokens_per_second",
            )
        self.tokens_per_query = None if tokens_per_query is None else check_rate("tokens_per_query", tokens_per_query)
        self.tokens_per_second = (
            None if tokens_per_second is None else check_rate("tokens_per_second", tokens_per_second)
        )
        self.step = check_rate("step", step)
        self.window = check_tokens("window", window, minimum=1)
        self.decay = 1.0 - 1.0 / self.window
        self.max_tokens = None if max_tokens is None else check_tokens("max_tokens", max_tokens)
        self.granularity = check_tokens("granularity", granularity, minimum=1)
        if burst is None:  # one query's cap, else four queries' share, else a minute of a time target
            share = 4 * self.tokens_per_query if self.tokens_per_query is not None else 60 * (tokens_per_second or 0)
            burst = self.max_tokens if self.max_tokens is not None else math.ceil(share)
        self.burst = check_tokens("burst", burst)
        self._clock = clock
        self._state = state or PriceState()
        self._lock = threading.Lock()

    @property
    def state(self) -> PriceState:
        return self._state

    @property
    def price(self) -> float | None:
        """The last price quoted (``None`` before the first query)."""
        return self._state.price

    def decide(self, curve: AccuracyCurve, *, overhead: int = 0) -> PriceDecision:
        """Budget for one arriving query at the current price; then update the price and the spend.

        ``overhead`` is what a funded query costs besides its budget (its prompt, when the pool's target counts
        prompt tokens too); an abandoned query costs nothing.
        """
        with self._lock:
            decision, self._state = self.transition(self._state, curve, overhead=overhead)
        return decision

    def refund(self, tokens: int) -> None:
        """Return granted tokens that were not used (a call that stopped before its cap)."""
        tokens = check_tokens("tokens", tokens)
        with self._lock:
            self._state = self.paced(self._state, -tokens, force=True) or self._state

    def paced(self, state: PriceState, delta: int, *, force: bool = False) -> PriceState | None:
        """``state`` with ``delta`` more tokens spent (fewer when negative: a refund), or None when an increase does
        not fit the token bucket (the target accrued plus ``burst``); ``force`` books it anyway (tokens already
        spent). Pure, like :meth:`transition`, so a ledger can compare-and-set the result."""
        if delta > 0 and not force and state.spent + delta > state.allowance + self.burst:
            return None
        return replace(state, spent=state.spent + delta)

    def transition(
        self, state: PriceState, curve: AccuracyCurve, *, overhead: int = 0
    ) -> tuple[PriceDecision, PriceState]:
        """The pure transition behind :meth:`decide`: from ``state``, decide ``curve``; return the new state.

        A ledger shares one pool's price between processes by loading the state, stepping, and storing the
        result with compare-and-set.
        """
        overhead = check_tokens("overhead", overhead)
        points = curve_points([curve], cap=self.max_tokens, granularity=self.granularity)
        costs = np.where(points.budgets > 0, points.budgets + overhead, 0)  # a funded query also pays its overhead
        segments = upper_hull(costs, points.values, points.valid)
        budgets = points.budgets[0][points.valid[0]]
        cost = costs[0][points.valid[0]]
        values = points.values[0][points.valid[0]]
        state, target = self._accrue(state)
        demand = np.asarray(state.demand) * self.decay
        np.add.at(demand, _bin(segments.slope), segments.length)
        weight = state.weight * self.decay + 1.0
        supply = state.supply * self.decay + target
        target_avg = supply / weight
        saved = min(state.allowance - state.spent, self.window * target_avg)  # unspent target, capped
        state = replace(state, allowance=state.spent + saved)
        correction = min(5.0, max(-5.0, -self.step * saved / target_avg)) if target_avg > 0 else 0.0
        price = _clearing_price(demand, supply) * math.exp(correction)
        room = state.allowance + self.burst - state.spent
        surplus = np.where(cost <= room, values - price * cost, -np.inf)
        best = int(np.argmax(surplus))
        funded = bool(surplus[best] > 0 and budgets[best] > 0)
        budget = int(budgets[best]) if funded else 0
        new_state = replace(
            state,
            demand=tuple(demand.tolist()),
            weight=weight,
            price=price,
            spent=state.spent + (int(cost[best]) if funded else 0),
            queries=state.queries + 1,
            supply=supply,
        )
        decision = PriceDecision(
            budget=budget,
            price=price,
            expected_accuracy=float(values[best]) if funded else 0.0,
            abandoned=not funded,
            best_accuracy=float(values.max()),
        )
        return decision, new_state

    def _accrue(self, state: PriceState) -> tuple[PriceState, float]:
        """Add this query's target to the allowance; return the new state and the target."""
        if self.tokens_per_query is not None:
            return replace(state, allowance=state.allowance + self.tokens_per_query), self.tokens_per_query
        assert self.tokens_per_second is not None
        now = self._clock()
        elapsed = 0.0 if state.last_time is None else max(0.0, now - state.last_time)
        target = self.tokens_per_second * elapsed
        return replace(state, allowance=state.allowance + target, last_time=now), target


def _bin(slopes: NDArray[np.float64]) -> NDArray[np.int64]:
    position = (np.log10(np.maximum(slopes, 10.0**_LOWEST_DECADE)) - _LOWEST_DECADE) * _BINS_PER_DECADE
    bins: NDArray[np.int64] = np.clip(position.astype(np.int64), 0, _N_BINS - 1)
    return bins


def _clearing_price(demand: np.ndarray[Any, Any], supply: float) -> float:
    """The price at which the demand (tokens per slope bin) equals ``supply``; 1e-7 when it does not bind."""
    from_top = np.cumsum(demand[::-1])
    if supply <= 0:  # no target history yet: the token bucket alone limits the first query
        return 10.0**_LOWEST_DECADE
    index = int(np.searchsorted(from_top, supply))
    if index >= _N_BINS:
        return 10.0**_LOWEST_DECADE
    bin_ = _N_BINS - 1 - index
    before = from_top[index - 1] if index else 0.0
    inside = demand[bin_]
    fraction = (supply - before) / inside if inside > 0 else 0.0
    return float(10.0 ** (_LOWEST_DECADE + (bin_ + 1 - fraction) / _BINS_PER_DECADE))
