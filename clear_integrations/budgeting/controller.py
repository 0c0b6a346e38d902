"""``BudgetController`` and ``AsyncBudgetController``: the call lifecycle (:mod:`.flows`) on a ledger, sync or async.

Each method is one line over a flow and a driver (:mod:`.drivers`), so the twins cannot disagree. Adapters use
:meth:`~BudgetController.call` (decide, generate, commit, continue) and :mod:`.streams`; code of your own can use
the steps: ``begin`` before a model call, ``end`` with its usage (or ``fail``), ``extend`` for a continuation.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio

from ..ledger import AsyncLedger, Ledger, Usage
from ..tokens import count_tokens
from ..validation import check_tokens
from .decision import Decision
from .drivers import run_async, run_sync
from .flows import Lifecycle, Outcome, Request
from .ops import Generate, Generated
from .policy import BudgetPolicy

__all__ = ["AsyncBudgetController", "BudgetController"]


def _request(
    scope: str,
    prompt: str,
    requested: int | None,
    prompt_tokens: int | None,
    model: str | None,
    meta: Mapping[str, Any] | None,
) -> Request:
    if prompt_tokens is not None:
        tokens, estimated = check_tokens("prompt_tokens", prompt_tokens), False
    else:
        counted = count_tokens(prompt, model=model)
        tokens, estimated = counted.tokens, counted.estimated
    return Request(scope, prompt, tokens, estimated, requested=requested, meta=meta)


class BudgetController:
    """The lifecycle on a synchronous :class:`~clear_integrations.ledger.Ledger`.

    ``sleep`` waits for held tokens to come back and ``clock`` (monotonic seconds) bounds that wait; tests inject
    fakes."""

    def __init__(
        self,
        ledger: Ledger,
        policy: BudgetPolicy | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ledger = ledger
        self.lifecycle = Lifecycle(policy, clock)
        self.policy = self.lifecycle.policy
        self._sleep = sleep

    def decide(self, request: Request) -> Decision:
        """Decide ``request`` and reserve what it may spend."""
        return run_sync(self.lifecycle.begin(request), self.ledger, sleep=self._sleep)

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
        """Decide one call and reserve what it may spend: the prompt (``prompt_tokens``, else counted offline for
        ``model``) plus the completion cap."""
        return self.decide(_request(scope, prompt, requested, prompt_tokens, model, meta))

    def end(self, decision: Decision, usage: Usage) -> int:
        """Commit the call's real usage; returns the tokens given back to the budgets."""
        return run_sync(self.lifecycle.end(decision, usage), self.ledger)

    def fail(self, decision: Decision) -> int:
        """Release the whole reservation of a call that failed."""
        return run_sync(self.lifecycle.fail(decision), self.ledger)

    def extend(self, decision: Decision, *, used: int, prompt_tokens: int) -> Decision | None:
        """After a call stopped at its cap (``used`` completion tokens so far): reserve a continuation of
        ``prompt_tokens`` plus the tokens to the curve's next point that still beats the price, or return None."""
        return run_sync(self.lifecycle.extend(decision, used=used, prompt_tokens=prompt_tokens), self.ledger)

    def call(self, request: Request, generate: Callable[[Generate], Generated]) -> Outcome:
        """One whole model call: decide, ``generate`` (the model, capped as the decision says), commit or release,
        continue a cut answer while it pays."""
        return run_sync(self.lifecycle.call(request), self.ledger, sleep=self._sleep, generate=generate)


class AsyncBudgetController:
    """The same lifecycle on an :class:`~clear_integrations.ledger.AsyncLedger`, or on a sync ledger whose steps
    then run in worker threads (``AsyncLedger.of``), so the event loop never blocks on the ledger."""

    def __init__(
        self,
        ledger: AsyncLedger | Ledger,
        policy: BudgetPolicy | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ledger = ledger if isinstance(ledger, AsyncLedger) else AsyncLedger.of(ledger)
        self.lifecycle = Lifecycle(policy, clock)
        self.policy = self.lifecycle.policy
        self._sleep = sleep

    async def decide(self, request: Request) -> Decision:
        """See :meth:`BudgetController.decide`."""
        return await run_async(self.lifecycle.begin(request), self.ledger, sleep=self._sleep)

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
        return await self.decide(_request(scope, prompt, requested, prompt_tokens, model, meta))

    async def end(self, decision: Decision, usage: Usage) -> int:
        """See :meth:`BudgetController.end`."""
        return await run_async(self.lifecycle.end(decision, usage), self.ledger)

    async def fail(self, decision: Decision) -> int:
        """See :meth:`BudgetController.fail`."""
        return await run_async(self.lifecycle.fail(decision), self.ledger)

    async def extend(self, decision: Decision, *, used: int, prompt_tokens: int) -> Decision | None:
        """See :meth:`BudgetController.extend`."""
        return await run_async(self.lifecycle.extend(decision, used=used, prompt_tokens=prompt_tokens), self.ledger)

    async def call(self, request: Request, generate: Callable[[Generate], Awaitable[Generated]]) -> Outcome:
        """See :meth:`BudgetController.call`; a cancelled call releases what it held."""
        return await run_async(self.lifecycle.call(request), self.ledger, sleep=self._sleep, generate=generate)
