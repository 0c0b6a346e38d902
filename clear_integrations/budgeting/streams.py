"""The lifecycle of one budgeted stream, written once for both frameworks: decide, open the model's stream with the
cap, deliver chunks under the :class:`~.meter.StreamMeter`'s rule, then commit what streamed.

The adapter gives three translations: ``open(decision)`` starts the model's stream capped in its provider's field,
``read(chunk)`` returns the chunk's new text and the usage the provider has reported so far (or None), and
``abandoned(decision)`` is the chunk an abandoned call yields instead (or raises). Ends:

- the stream ends, or is cut at its cap: the usage is committed (the provider's, else the text counted);
- the consumer stops reading (closes the generator, or drops it: asyncio closes an abandoned async generator) or
  the model fails: what was delivered is committed; a stream that delivered nothing is released.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

from ..ledger import Usage
from .controller import AsyncBudgetController, BudgetController
from .decision import Decision
from .flows import Request
from .meter import StreamMeter

__all__ = ["Read", "astream", "stream"]

C = TypeVar("C")
Read = Callable[[C], tuple[str, Usage | None]]


def stream(
    controller: BudgetController,
    request: Request,
    open_stream: Callable[[Decision], Iterator[C]],
    read: Read[C],
    abandoned: Callable[[Decision], C],
    meter: Callable[[Decision], StreamMeter],
) -> Iterator[C]:
    """The sync stream lifecycle (see the module docstring)."""
    decision = controller.decide(request)
    if decision.abandoned:
        yield abandoned(decision)
        return
    counted = meter(decision)
    chunks = None
    settled = False
    try:
        chunks = open_stream(decision)
        for chunk in chunks:
            if not counted.admit(*read(chunk)):
                break  # a token past the cap: stop paying
            yield chunk
        settled = True
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
        if settled or counted.delivered:
            controller.end(decision, counted.usage(decision.prompt_tokens, decision.prompt_estimated))
        else:
            controller.fail(decision)


async def astream(
    controller: AsyncBudgetController,
    request: Request,
    open_stream: Callable[[Decision], Awaitable[AsyncIterator[C]]],
    read: Read[C],
    abandoned: Callable[[Decision], C],
    meter: Callable[[Decision], StreamMeter],
) -> AsyncIterator[C]:
    """The async twin of :func:`stream`."""
    decision = await controller.decide(request)
    if decision.abandoned:
        yield abandoned(decision)
        return
    counted = meter(decision)
    chunks = None
    settled = False
    try:
        chunks = await open_stream(decision)
        async for chunk in chunks:
            if not counted.admit(*read(chunk)):
                break
            yield chunk
        settled = True
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
        if settled or counted.delivered:
            await controller.end(decision, counted.usage(decision.prompt_tokens, decision.prompt_estimated))
        else:
            await controller.fail(decision)
