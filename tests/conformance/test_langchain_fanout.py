"""Parallel calls under a tight budget: the LangGraph docs' ``Send`` map-reduce over N subjects, and parallel
``abatch`` / ``asyncio.gather`` / task-group calls of which some are cancelled mid-flight.

The calls that do not fit end as fallbacks (the caller can tell them from answers), the hard budget holds, nothing
stays held; a cancelled call gives its reservation back at once, not when its lease runs out."""

from __future__ import annotations

import asyncio
import operator
from collections.abc import Sequence
from typing import Annotated, Any, TypedDict

import anyio
import pytest
from langchain_core.messages import BaseMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

from clear_integrations import BudgetPolicy
from clear_integrations.adapters.langchain import budgeted
from clear_integrations.budgeting import DEFAULT_FALLBACK
from clear_integrations.testing import MeteredFakeChatModel

from .conftest import Book

SUBJECTS = [f"subject-{i}" for i in range(12)]
JOKE = ChatPromptTemplate.from_template("Write a joke about {subject}")


class Overall(TypedDict):
    subjects: list[str]
    jokes: Annotated[list[tuple[str, str, str]], operator.add]
    best: str


class One(TypedDict):
    subject: str


def _map_reduce(llm: Any, mode: str) -> Any:
    """The docs' map-reduce: one ``generate_joke`` per subject through ``Send``, then a reduce step."""
    chain = JOKE | llm

    def generate_joke(state: One) -> dict[str, Any]:
        answer = chain.invoke({"subject": state["subject"]})
        return {"jokes": [(state["subject"], answer.response_metadata["clear_action"], answer.content)]}

    async def agenerate_joke(state: One) -> dict[str, Any]:
        answer = await chain.ainvoke({"subject": state["subject"]})
        return {"jokes": [(state["subject"], answer.response_metadata["clear_action"], answer.content)]}

    def continue_to_jokes(state: Overall) -> list[Send]:
        return [Send("generate_joke", {"subject": s}) for s in state["subjects"]]

    def best_joke(state: Overall) -> dict[str, str]:
        answered = [joke for _, action, joke in state["jokes"] if action != "abandon"]
        return {"best": max(answered, key=len) if answered else ""}

    builder = StateGraph(Overall)
    builder.add_node("generate_joke", generate_joke if mode == "sync" else agenerate_joke)
    builder.add_node("best_joke", best_joke)
    builder.add_conditional_edges(START, continue_to_jokes, ["generate_joke"])
    builder.add_edge("generate_joke", "best_joke")
    builder.add_edge("best_joke", END)
    return builder.compile()


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.anyio
async def test_send_map_reduce_on_a_tight_budget(book: Book, mode: str) -> None:
    book.budget("acme", 150)  # about five of the twelve calls
    model = MeteredFakeChatModel(response_tokens=40)
    graph = _map_reduce(budgeted(model, ledger=book.ledger, tenant="acme", policy=BudgetPolicy(max_tokens=20)), mode)
    state = {"subjects": SUBJECTS}
    result = graph.invoke(state) if mode == "sync" else await graph.ainvoke(state)
    jokes = result["jokes"]
    assert sorted(subject for subject, _, _ in jokes) == sorted(SUBJECTS)  # every branch reduced, none lost
    answered = [joke for joke in jokes if joke[1] != "abandon"]
    fallbacks = [joke for joke in jokes if joke[1] == "abandon"]
    assert len(answered) == len(model.calls) and 1 <= len(answered) < len(SUBJECTS)
    assert fallbacks and all(text == DEFAULT_FALLBACK for _, _, text in fallbacks)
    assert result["best"] and result["best"] != DEFAULT_FALLBACK
    assert all(16 <= c.cap <= 20 for c in model.calls if c.cap is not None)
    book.audit([model], paid=["acme"], unpaid=["default"], max_cap=20)
    left = book.ledger.balance("acme").remaining
    assert left is not None and left < 6 + 16  # used up: what is left cannot pay for one more prompt and min_tokens


class _Started:
    """Counts model calls as they start (MeteredFakeChatModel asks ``response_tokens`` when a call begins) and sets
    an event once ``expected`` of the slow ones have: they then hold their reservations."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.event = anyio.Event()

    def __call__(self, messages: Sequence[BaseMessage]) -> int:
        self.count += 1
        if self.count == self.expected:
            self.event.set()
        return 10


def _slow_and_fast(book: Book, started: _Started) -> tuple[Any, Any, MeteredFakeChatModel, MeteredFakeChatModel]:
    slow = MeteredFakeChatModel(response_tokens=started, latency=60.0)  # never finishes: cancelled
    fast = MeteredFakeChatModel(response_tokens=10)
    policy = BudgetPolicy(max_tokens=30, wait=0.0)
    chain_slow = JOKE | budgeted(slow, ledger=book.ledger, tenant="acme", policy=policy) | StrOutputParser()
    chain_fast = JOKE | budgeted(fast, ledger=book.ledger, tenant="acme", policy=policy) | StrOutputParser()
    return chain_slow, chain_fast, slow, fast


@pytest.mark.anyio
async def test_a_task_group_cancelled_mid_flight_releases_at_once(book: Book) -> None:
    book.budget("acme", 1_000)
    started = _Started(expected=4)
    chain_slow, chain_fast, slow, fast = _slow_and_fast(book, started)
    answers: list[str] = []
    fast_done = anyio.Event()

    async def ask(chain: Any, subject: str) -> None:
        answers.append(await chain.ainvoke({"subject": subject}))
        if len(answers) == 3:
            fast_done.set()

    async with anyio.create_task_group() as group:
        for i in range(4):
            group.start_soon(ask, chain_slow, f"slow-{i}")
        for i in range(3):
            group.start_soon(ask, chain_fast, f"fast-{i}")
        await started.event.wait()  # the slow calls are in the model: their tokens are held
        assert book.ledger.balance("acme").held > 0
        await fast_done.wait()  # the fast ones finish on their own
        group.cancel_scope.cancel()
    assert len(answers) == 3 and slow.calls == [] and len(fast.calls) == 3
    assert book.ledger.balance("acme").held == 0  # released at once, not after the 300 s lease
    book.audit([slow, fast], paid=["acme"], unpaid=["default"], max_cap=30)


async def _left_behind(before: set[asyncio.Task[Any]]) -> None:
    """Wait, without sleeping, for the tasks a cancelled ``asyncio.gather`` leaves behind: it returns as soon as one
    child is cancelled, while its siblings are still giving their reservations back."""
    current = asyncio.current_task()
    left = {task for task in asyncio.all_tasks() if task not in before and task is not current}
    if left:
        await asyncio.wait(left)


@pytest.mark.parametrize("how", ["abatch", "gather"])
@pytest.mark.anyio
async def test_a_cancelled_abatch_or_gather_releases_at_once(book: Book, how: str) -> None:
    book.budget("acme", 1_000)
    started = _Started(expected=5)
    chain_slow, chain_fast, slow, fast = _slow_and_fast(book, started)
    done = await chain_fast.abatch([{"subject": f"fast-{i}"} for i in range(2)])
    inputs = [{"subject": f"slow-{i}"} for i in range(5)]
    before = asyncio.all_tasks()
    if how == "abatch":
        task = asyncio.ensure_future(chain_slow.abatch(inputs))
    else:
        task = asyncio.ensure_future(asyncio.gather(*(chain_slow.ainvoke(one) for one in inputs)))
    await started.event.wait()
    assert book.ledger.balance("acme").held > 0
    clock = anyio.current_time()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _left_behind(before)
    assert len(done) == 2 and slow.calls == []
    assert book.ledger.balance("acme").held == 0  # given back, not left to the 300 s lease
    assert anyio.current_time() - clock < 30
    book.audit([slow, fast], paid=["acme"], max_cap=30)
