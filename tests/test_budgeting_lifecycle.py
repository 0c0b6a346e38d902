"""The call lifecycle written once (budgeting.flows) under its drivers: the same decisions sync and async, what a
failed or cancelled call gives back, the defaults that must not trap, and the continuation loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest

from clear_integrations import AsyncLedger, Budget, CurveBatch, Ledger, QueryAbandoned, Usage, open_ledger
from clear_integrations.budgeting import (
    EXHAUSTED,
    AsyncBudgetController,
    BudgetController,
    BudgetPolicy,
    Generate,
    Generated,
    Request,
    current_decision,
)
from clear_integrations.ledger.store import ThreadedAsyncStore

GRID = [16, 32, 64, 128]


class EasyEstimator:
    """Every prompt is easy: a surge between 32 and 64 tokens."""

    name: ClassVar[str] = "easy"

    def fit(self, prompts: Sequence[str], curves: CurveBatch, meta: Any = None) -> EasyEstimator:
        return self

    def predict(self, prompts: Sequence[str], meta: Sequence[Mapping[str, Any]] | None = None) -> CurveBatch:
        return CurveBatch(GRID, [[0.0, 0.3, 0.9, 0.95] for _ in prompts])

    def to_dict(self) -> dict[str, Any]:
        return {}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["memory", "sqlite"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Ledger:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'lifecycle.db'}"
    opened = open_ledger(url)
    opened.set_budget("acme", Budget(tokens=10_000))
    return opened


def _answer(used: int, *, cut: bool = False, again: int = 0) -> Any:
    """A model that writes ``used`` completion tokens for a 10-token prompt, and records the caps it was given."""
    caps: list[int | None] = []

    def generate(op: Generate) -> Generated:
        caps.append(op.decision.max_tokens)
        assert current_decision() is op.decision  # code inside the provider call sees what pays for it
        return Generated(output=f"answer {len(caps)}", usage=Usage(10, used), cut=cut, again_tokens=again)

    generate.caps = caps  # type: ignore[attr-defined]
    return generate


def test_the_sync_and_async_drivers_make_the_same_decisions(ledger: Ledger) -> None:
    policy = BudgetPolicy(estimator=EasyEstimator(), tokens_per_query=100)
    requests = [Request("acme/s", f"question {i}", 10) for i in range(6)]
    sync = BudgetController(ledger, policy)
    first = [sync.call(r, _answer(40)) for r in requests]

    twin = open_ledger("memory://")
    twin.set_budget("acme", Budget(tokens=10_000))
    controller = AsyncBudgetController(twin, policy)

    async def run() -> list[Any]:
        async def generate(op: Generate) -> Generated:
            return _answer(40)(op)

        return [await controller.call(r, generate) for r in requests]

    second = anyio.run(run)
    pick = [(o.decision.action, o.decision.max_tokens, round(o.decision.shadow_price or 0, 12)) for o in first]
    assert pick == [(o.decision.action, o.decision.max_tokens, round(o.decision.shadow_price or 0, 12)) for o in second]
    assert ledger.balance("acme").spent == twin.balance("acme").spent == 6 * 50
    assert ledger.get_state("acme")[0] == twin.get_state("acme")[0]  # the pacers booked the same


def test_a_failed_model_call_gives_everything_back_and_the_pacer_its_booking(ledger: Ledger) -> None:
    control = BudgetController(ledger, BudgetPolicy(estimator=EasyEstimator(), tokens_per_query=100))
    control.call(Request("acme", "warm up", 10), _answer(30))
    before, _ = ledger.get_state("acme")

    def broken(op: Generate) -> Generated:
        raise ConnectionError("provider down")

    with pytest.raises(ConnectionError):
        control.call(Request("acme", "fails", 10), broken)
    after, _ = ledger.get_state("acme")
    assert ledger.balance("acme").held == 0 and ledger.balance("acme").spent == 40
    assert before is not None and after is not None
    assert after["spent"] == before["spent"]  # the failed call's budget and prompt came back to the pace
    assert after["queries"] == before["queries"] + 1  # but its arrival still moved the price


def test_ten_concurrent_uncapped_calls_fit_a_budget_that_holds_ten_answers(ledger: Ledger) -> None:
    control = BudgetController(ledger, BudgetPolicy(wait=0.0))  # impatient: no waiting hides a trap
    barrier, decisions, lock = threading.Barrier(10), [], threading.Lock()

    def call() -> None:
        barrier.wait()
        decision = control.begin("acme", "q", prompt_tokens=33)
        with lock:
            decisions.append(decision)

    threads = [threading.Thread(target=call) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not any(d.abandoned for d in decisions)  # today's 4,096-token holds refused most of them
    assert all(d.max_tokens is not None and d.max_tokens >= 16 for d in decisions)
    assert ledger.balance("acme").held <= 10_000
    for decision in decisions:
        control.end(decision, Usage(33, 40))
    assert ledger.balance("acme").held == 0 and ledger.balance("acme").spent == 10 * 73


def test_a_call_is_not_granted_a_few_tokens_that_still_pay_its_whole_prompt(ledger: Ledger) -> None:
    ledger.set_budget("acme", Budget(tokens=200))
    control = BudgetController(ledger)
    decision = control.begin("acme/s1", "q", prompt_tokens=196)  # 4 completion tokens would be left
    assert decision.abandoned and decision.reason == EXHAUSTED and decision.reservation is None
    assert (decision.account, decision.remaining) == ("acme", 200)
    error = decision.error()
    assert isinstance(error, QueryAbandoned)
    assert (error.account, error.remaining, error.scope) == ("acme", 200, "acme/s1")
    assert "'acme' has 200 tokens left" in str(error) and "acme/s1" in str(error)
    assert ledger.balance("acme").held == 0


def test_a_call_waits_only_for_held_tokens_that_could_make_it_fit(ledger: Ledger) -> None:
    ledger.set_budget("acme", Budget(tokens=1_000))
    naps: list[float] = []
    hopeless = ledger.reserve("acme/other", 990)
    control = BudgetController(ledger, BudgetPolicy(reserve_tokens=100), sleep=naps.append)
    refused = control.begin("acme/s", "q", prompt_tokens=995)  # even if all 990 came back: 995 + 16 > 1,000
    assert refused.abandoned and naps == []  # abandoned at once, no wait
    ledger.release(hopeless)
    holder = ledger.reserve("acme/other", 990)

    def sleep(seconds: float) -> None:  # the call in flight finishes while we wait
        naps.append(seconds)
        ledger.commit(holder, 100)

    patient = BudgetController(ledger, BudgetPolicy(reserve_tokens=100), sleep=sleep)
    granted = patient.begin("acme/s", "q", prompt_tokens=50)
    assert not granted.abandoned and len(naps) == 1 and granted.max_tokens == 100


def test_an_uncapped_call_keeps_its_own_cap_unless_a_hard_budget_bounds_it(ledger: Ledger) -> None:
    control = BudgetController(ledger, BudgetPolicy(reserve_tokens=500))
    free = control.decide(Request("free", "q", 10))
    assert (free.max_tokens, free.reservation and free.reservation.tokens) == (None, 510)
    bounded = control.decide(Request("acme", "q", 10))
    assert bounded.max_tokens == 500  # a hard budget: the call may not write more than it holds
    default_cap = control.decide(Request("acme", "q", 10, ceiling=256))  # the provider stops at 256 anyway
    assert default_cap.max_tokens is None and default_cap.reservation is not None
    assert default_cap.reservation.tokens == 10 + 256  # the hold is the provider's own ceiling, not 500
    for decision in (free, bounded, default_cap):
        control.fail(decision)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_cut_answer_is_continued_while_the_next_tokens_beat_the_price(ledger: Ledger, mode: str) -> None:
    policy = BudgetPolicy(estimator=EasyEstimator(), tokens_per_query=200, max_tokens=32)
    generate = _answer(32, cut=True, again=20)
    request = Request("acme", "easy", 10)
    if mode == "sync":
        outcome = BudgetController(ledger, policy).call(request, generate)
    else:

        async def agenerate(op: Generate) -> Generated:
            return generate(op)

        outcome = anyio.run(AsyncBudgetController(ledger, policy).call, request, agenerate)
    caps = generate.caps  # type: ignore[attr-defined]
    assert len(outcome.outputs) == len(caps) >= 2 and all(cap == 32 for cap in caps)  # one call never passes 32
    assert outcome.usage == Usage(10 * len(caps), 32 * len(caps))
    assert ledger.balance("acme").spent == outcome.usage.total and ledger.balance("acme").held == 0


@pytest.mark.anyio
async def test_a_cancelled_call_gives_its_tokens_back_at_once() -> None:
    ledger = open_ledger("memory://")
    ledger.set_budget("acme", Budget(tokens=10_000))
    controller = AsyncBudgetController(ledger)
    in_flight = anyio.Event()

    async def hang(op: Generate) -> Generated:
        in_flight.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async with anyio.create_task_group() as group:
        group.start_soon(controller.call, Request("acme", "q", 10), hang)
        await in_flight.wait()
        assert ledger.balance("acme").held == 10 + 1024
        group.cancel_scope.cancel()
    assert ledger.balance("acme").held == 0  # released inside the cancellation, not when the lease ran out

    task = asyncio.ensure_future(controller.call(Request("acme", "q", 10), hang))  # asyncio's own cancellation
    while not ledger.balance("acme").held:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ledger.balance("acme").held == 0


@pytest.mark.anyio
async def test_a_reservation_that_lands_after_its_call_was_cancelled_is_released() -> None:
    ledger = open_ledger("memory://")
    ledger.set_budget("acme", Budget(tokens=10_000))
    gate, reached = asyncio.Event(), asyncio.Event()

    class SlowStore(ThreadedAsyncStore):
        async def reserve(self, *args: Any) -> Any:
            reached.set()
            await gate.wait()
            return await super().reserve(*args)

    slow = AsyncLedger(SlowStore(ledger.store, offload=False))
    task = asyncio.ensure_future(AsyncBudgetController(slow).call(Request("acme", "q", 10), _never))
    await reached.wait()
    task.cancel()  # the reservation is on its way to the store
    await asyncio.sleep(0)
    gate.set()  # it lands after the cancellation
    with pytest.raises(asyncio.CancelledError):
        await task
    balance = ledger.balance("acme")
    assert balance.held == 0 and balance.spent == 0
    assert [e.kind for e in ledger.events("acme")][-2:] == ["reserve", "release"]


async def _never(op: Generate) -> Generated:
    raise AssertionError("a cancelled call never reaches the model")


def test_an_abandoned_call_never_reaches_the_model(ledger: Ledger) -> None:
    ledger.set_budget("acme", Budget(tokens=5))
    outcome = BudgetController(ledger).call(Request("acme", "q", 10), lambda op: pytest.fail("called"))
    assert outcome.decision.abandoned and outcome.outputs == () and outcome.usage == Usage()
    assert ledger.usage("acme").calls == 0


def _words(n: int) -> list[str]:
    return [f"w{i} " for i in range(n)]


def _read(chunk: str) -> tuple[str, Usage | None]:
    return chunk, None


def _stream_meter(decision: Any) -> Any:
    from clear_integrations.budgeting import StreamMeter
    from clear_integrations.testing import count_words

    return StreamMeter(decision.max_tokens, count_words, exact=True)


def test_a_stream_is_cut_at_its_cap_and_charged_what_it_delivered(ledger: Ledger) -> None:
    from clear_integrations.budgeting.streams import stream

    control = BudgetController(ledger, BudgetPolicy(max_tokens=5))
    request = Request("acme", "q", 3, estimated=False)
    pieces = list(
        stream(control, request, lambda decision: iter(_words(50)), _read, lambda d: "fallback", _stream_meter)
    )
    assert pieces == _words(5)  # the model ignored its cap: the sixth word is paid, not delivered
    assert ledger.usage("acme").completion == 6 and ledger.balance("acme").held == 0
    early = stream(control, request, lambda decision: iter(_words(50)), _read, lambda d: "fallback", _stream_meter)
    assert next(early) == "w0 "
    early.close()  # the consumer stops reading: what it was given is charged
    assert ledger.usage("acme").completion == 6 + 1 and ledger.balance("acme").held == 0


@pytest.mark.anyio
async def test_an_async_stream_dropped_unclosed_gives_its_hold_back() -> None:
    import gc

    from clear_integrations.budgeting.streams import astream

    ledger = open_ledger("memory://")
    ledger.set_budget("acme", Budget(tokens=10_000))
    control = AsyncBudgetController(ledger, BudgetPolicy(max_tokens=20))

    async def chunks() -> Any:
        for word in _words(50):
            yield word

    async def open_stream(decision: Any) -> Any:
        return chunks()

    reader = astream(control, Request("acme", "q", 3, estimated=False), open_stream, _read, lambda d: "x",
                     _stream_meter)  # fmt: skip
    assert await anext(reader) == "w0 "
    assert ledger.balance("acme").held == 3 + 20
    del reader  # never closed: asyncio's async-generator finaliser closes it
    gc.collect()
    for _ in range(20):
        await asyncio.sleep(0)
    assert ledger.balance("acme").held == 0 and ledger.usage("acme").completion == 1


def test_a_call_that_asks_for_fewer_tokens_than_min_tokens_gets_them(ledger: Ledger) -> None:
    decision = BudgetController(ledger, BudgetPolicy(max_tokens=1, min_tokens=10)).begin("acme", "q", prompt_tokens=5)
    assert not decision.abandoned and decision.max_tokens == 1  # a one-token classifier is a request, not a trap
