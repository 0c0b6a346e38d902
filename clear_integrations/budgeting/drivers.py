"""Drivers: run a budgeting flow (:mod:`.flows`) by performing what it yields, sync or async.

A flow yields ledger operations, ``Sleep`` and ``Generate`` (the model call, handed to the adapter's ``generate``);
the driver performs each and sends the answer back, or throws the error in, so the flow decides what an error
means (a refused reservation: wait or abandon; a failed model call: release). :func:`run_sync` drives a sync
:class:`~clear_integrations.ledger.Ledger`. :func:`run_async` drives an
:class:`~clear_integrations.ledger.AsyncLedger` (``AsyncLedger.of(ledger)`` serves a sync ledger from worker
threads): each ledger step runs to its end even when the call is cancelled (under asyncio, in a task of its own
behind ``asyncio.shield``: anyio's shield does not stop a native ``Task.cancel()``), the flow's clean-up (a release)
is done before the cancellation goes on, and a reservation that lands after its call was cancelled is released, so a
cancelled call never holds tokens until its lease runs out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import anyio

from ..ledger import AsyncLedger, Ledger
from .decision import Decision
from .ops import (
    Commit,
    Flow,
    Generate,
    Generated,
    LedgerOp,
    ReadBalance,
    ReadState,
    Release,
    Reserve,
    Sleep,
    WriteState,
)

__all__ = ["aperform", "current_decision", "generating", "perform", "run_async", "run_sync"]

T = TypeVar("T")
GenerateSync = Callable[[Generate], Generated]
GenerateAsync = Callable[[Generate], Awaitable[Generated]]
_generating: ContextVar[Decision | None] = ContextVar("clear_generating", default=None)


def current_decision() -> Decision | None:
    """The decision of the model call in progress (set while a driver hands ``Generate`` to the adapter, and while
    a stream's provider runs): code inside the provider call (a custom model, a test double, a log) sees what pays."""
    return _generating.get()


@contextmanager
def generating(decision: Decision) -> Iterator[None]:
    """Run a block as the provider call paid by ``decision`` (:func:`current_decision`)."""
    token = _generating.set(decision)
    try:
        yield
    finally:
        _generating.reset(token)


def perform(ledger: Ledger, op: LedgerOp) -> Any:
    """One ledger step on a sync ledger."""
    match op:
        case Reserve(scope, tokens, None, lease):
            return ledger.reserve(scope, tokens, lease=lease)
        case Reserve(scope, tokens, int() as minimum, lease):
            return ledger.reserve_up_to(scope, tokens, minimum=minimum, lease=lease)
        case Commit(reservation, usage):
            return ledger.commit(reservation, usage)
        case Release(reservation):
            return ledger.release(reservation)
        case ReadBalance(account):
            return ledger.balance(account)
        case ReadState(pool):
            return ledger.get_state(pool)
        case WriteState(pool, value, version):
            return ledger.set_state(pool, value, expected_version=version)
    raise TypeError(f"not a ledger operation: {op!r}")  # pragma: no cover - the Op union is closed


async def aperform(ledger: AsyncLedger, op: LedgerOp) -> Any:
    """One ledger step on an async ledger."""
    match op:
        case Reserve(scope, tokens, None, lease):
            return await ledger.reserve(scope, tokens, lease=lease)
        case Reserve(scope, tokens, int() as minimum, lease):
            return await ledger.reserve_up_to(scope, tokens, minimum=minimum, lease=lease)
        case Commit(reservation, usage):
            return await ledger.commit(reservation, usage)
        case Release(reservation):
            return await ledger.release(reservation)
        case ReadBalance(account):
            return await ledger.balance(account)
        case ReadState(pool):
            return await ledger.get_state(pool)
        case WriteState(pool, value, version):
            return await ledger.set_state(pool, value, expected_version=version)
    raise TypeError(f"not a ledger operation: {op!r}")  # pragma: no cover


def _no_model(op: Generate) -> Generated:
    raise TypeError(f"this flow calls a model ({op.decision.scope}): give the driver a generate function")


def run_sync(
    flow: Flow[T],
    ledger: Ledger,
    *,
    sleep: Callable[[float], None] = time.sleep,
    generate: GenerateSync = _no_model,
) -> T:
    """Run ``flow`` to its end on ``ledger``; ``generate`` makes the model calls it asks for."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            op = flow.send(reply) if error is None else flow.throw(error)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        reply, error = None, None
        try:
            if isinstance(op, Generate):
                token = _generating.set(op.decision)  # as generating(), without a context manager on the hot path
                try:
                    reply = generate(op)
                finally:
                    _generating.reset(token)
            elif isinstance(op, Sleep):
                sleep(op.seconds)
            else:
                reply = perform(ledger, op)
        except BaseException as exc:  # the flow decides: wait, release, or let it propagate
            error = exc


async def _no_amodel(op: Generate) -> Generated:
    return _no_model(op)


async def run_async(
    flow: Flow[T],
    ledger: AsyncLedger,
    *,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    generate: GenerateAsync = _no_amodel,
) -> T:
    """The async twin of :func:`run_sync`. Ledger steps are shielded from cancellation: a cancellation arrives at
    the next model call or sleep, and the flow's clean-up (a release) still reaches the ledger."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            op = flow.send(reply) if error is None else flow.throw(error)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        reply, error = None, None
        try:
            if isinstance(op, Generate):
                with generating(op.decision):
                    reply = await generate(op)
            elif isinstance(op, Sleep):
                await sleep(op.seconds)
            else:
                reply = await _finished(ledger, op)
        except BaseException as exc:
            error = exc


async def _finished(ledger: AsyncLedger, op: LedgerOp) -> Any:
    """``op``'s reply. The step runs to its end even if the call is cancelled meanwhile: the cancellation waits for
    it (one ledger round trip), and a reservation it made is released before the cancellation goes on."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # another event loop (trio): its cancel scopes honour a shield
        with anyio.CancelScope(shield=True):
            return await aperform(ledger, op)
    task = asyncio.ensure_future(aperform(ledger, op))
    try:
        return await asyncio.shield(task)  # anyio's shield alone does not stop a native Task.cancel()
    except asyncio.CancelledError:
        try:
            reply = await _despite_cancellation(task)
        except Exception:  # a refusal or an outage: nothing was made, nothing to give back
            reply = None
        if isinstance(op, Reserve) and reply is not None:
            await _despite_cancellation(asyncio.ensure_future(aperform(ledger, Release(reply))))
        raise


async def _despite_cancellation(task: asyncio.Future[T]) -> T:
    """``task``'s result once it has finished, however often the caller is cancelled meanwhile: a call run by
    ``asyncio.gather`` (LangChain's ``agenerate``) inside a cancelled anyio scope is cancelled again at every turn of
    the loop, natively, through the gather, which an anyio shield does not stop and which would cancel ``task``."""
    while not task.done():
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            continue
    return task.result()
