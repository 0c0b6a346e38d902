"""The lifecycle of one budgeted stream, written once for both frameworks: decide, open the model's stream with the
cap, deliver chunks under the :class:`~.meter.StreamMeter`'s rule, then commit what streamed.

The adapter gives three translations: ``open(decision)`` starts the model's stream capped in its provider's field,
``read(chunk)`` returns the chunk's new text and the usage the provider has reported so far (or None), and
``abandoned(decision)`` is the chunk an abandoned call yields instead (or raises). Ends:

- the stream ends, or is cut at its cap: the usage is committed (the provider's, else the text counted);
- the consumer stops reading (closes the generator, or drops it: asyncio closes an abandoned async generator) or
  the model fails: what was delivered is committed; a stream that delivered nothing is released.

While the provider runs (the stream is opened, a chunk is fetched), the decision is
:func:`~.drivers.current_decision`, as during a non-stream call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

from ..ledger import Usage
from .controller import AsyncBudgetController, BudgetController
from .decision import Decision
from .drivers import generating
from .flows import Request
from .meter import StreamMeter

__all__ = ["Read", "astream", "stream"]

C = TypeVar("C")
R = TypeVar("R")
Read = Callable[[C], tuple[str, Usage | None]]
_END: Any = object()


def _in_call(decision: Decision, step: Callable[..., R], *args: Any) -> R:
    """``step(*args)`` with ``decision`` as :func:`~.drivers.current_decision`: the provider runs in the stream's
    opening and in each chunk's fetch, as it runs in a non-stream call's ``Generate``."""
    with generating(decision):
        return step(*args)


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
        chunks = _in_call(decision, open_stream, decision)
        while (chunk := _in_call(decision, next, chunks, _END)) is not _END:
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
        with generating(decision):
            chunks = await open_stream(decision)
        while True:
            with generating(decision):
                chunk = await anext(chunks, _END)
            if chunk is _END:
                break
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
