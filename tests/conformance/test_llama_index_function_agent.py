"""A streaming ``FunctionAgent`` with tools, as the LlamaIndex docs run it: ``handler = agent.run(...)`` (here made
inside the user's ``clear_scope``, awaited outside it), events read from ``handler.stream_events()``, then
``await handler``. A budget that runs out ends the agent gracefully: its last ``AgentOutput`` is the fallback, with
the decision in ``raw``. A ``ClearEventHandler`` installed beside the wrapper does not count the agent's calls again."""

from __future__ import annotations

from typing import Any

import pytest
from llama_index.core.agent.workflow import AgentOutput, AgentStream, FunctionAgent, ToolCallResult

from clear_integrations import BudgetPolicy
from clear_integrations.adapters.llama_index import DEFAULT_FALLBACK, ClearBudgetLLM, ClearEventHandler, clear_scope
from clear_integrations.testing import MeteredMockLLM

from .conftest import Book

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecationWarning"),  # workflows inspects agents
]

SCRIPT = [[{"name": "add", "args": {"a": 1, "b": 2}}], [{"name": "multiply", "args": {"a": 3, "b": 4}}], []]


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


async def _run(llm: ClearBudgetLLM, user: str) -> tuple[AgentOutput, list[Any]]:
    agent = FunctionAgent(tools=[add, multiply], llm=llm, system_prompt="Use the tools to compute.")
    with clear_scope(tenant=user):
        handler = agent.run(user_msg="What is (1 + 2) * 4?")  # the scope is left before the run is awaited
    events = [event async for event in handler.stream_events()]
    output = await handler
    assert isinstance(output, AgentOutput)
    return output, events


async def test_a_streaming_agent_is_charged_to_the_user_who_started_it(book: Book) -> None:
    book.budget("alice", 10_000)
    mock = MeteredMockLLM(response_tokens=20, tool_calls=SCRIPT)
    llm = ClearBudgetLLM(mock, ledger=book.ledger, tenant="default", policy=BudgetPolicy(max_tokens=30))

    with ClearEventHandler.install(book.ledger, tenant="alice"):  # accounting too: it must not count them again
        output, events = await _run(llm, "alice")

    assert [e.tool_name for e in events if isinstance(e, ToolCallResult)] == ["add", "multiply"]
    assert [e.tool_output.raw_output for e in events if isinstance(e, ToolCallResult)] == [3, 12]
    deltas = [e.delta for e in events if isinstance(e, AgentStream) and e.delta]
    assert len("".join(deltas).split()) == 20 == len(str(output.response.content).split())  # streamed, token by token
    assert len(deltas) >= 20
    assert output.raw["usage"]["completion_tokens"] == 20 and "clear_action" not in output.raw
    assert [call.tool_calls for call in mock.calls] == [("add",), ("multiply",), ()]
    book.audit([mock], paid=["alice"], unpaid=["default"], max_cap=30)


async def test_a_budget_that_runs_out_ends_the_agent_with_the_fallback(book: Book) -> None:
    book.budget("alice", 46)  # two tool steps fit, the answer does not
    book.budget("bob", 10_000)
    mock = MeteredMockLLM(response_tokens=20, tool_calls=SCRIPT)
    llm = ClearBudgetLLM(mock, ledger=book.ledger, tenant="default", policy=BudgetPolicy(max_tokens=30, wait=0))

    output, events = await _run(llm, "alice")

    assert str(output.response.content) == DEFAULT_FALLBACK
    assert output.raw["clear_action"] == "abandon" and output.raw["clear_account"] == "alice"
    assert output.raw["clear_remaining"] == book.ledger.balance("alice").remaining < 30
    assert [e.tool_name for e in events if isinstance(e, ToolCallResult)] == ["add", "multiply"]
    outputs = [e for e in events if isinstance(e, AgentOutput)]
    assert outputs[-1].raw == output.raw  # the streamed events tell the fallback too
    assert isinstance(events[-2], AgentOutput) and str(events[-2].response.content) == DEFAULT_FALLBACK
    assert [call.tool_calls for call in mock.calls] == [("add",), ("multiply",)]  # the answer was never generated
    book.audit([mock], paid=["alice"], unpaid=["default", "bob"], max_cap=30)

    mock.reset()  # bob, on the same agent LLM, is not affected by alice's budget
    output, _ = await _run(llm, "bob")
    assert len(str(output.response.content).split()) == 20 and book.ledger.usage("bob").calls == 3


async def test_concurrent_agent_runs_each_charge_their_own_user(book: Book) -> None:
    users = ["alice", "bob", "carol"]
    for user in users:
        book.budget(user, 500)
    mocks = {
        user: MeteredMockLLM(response_tokens=5 + i, tool_calls=SCRIPT, latency=0.001) for i, user in enumerate(users)
    }
    llms = {
        user: ClearBudgetLLM(mock, ledger=book.ledger, tenant="default", policy=BudgetPolicy(max_tokens=30))
        for user, mock in mocks.items()
    }
    handlers = []
    for user in users:  # started one after another, awaited together, each under its user's scope when made
        agent = FunctionAgent(tools=[add, multiply], llm=llms[user], system_prompt="Use the tools to compute.")
        with clear_scope(tenant=user):
            handlers.append(agent.run(user_msg=f"{user}: what is (1 + 2) * 4?"))
    outputs = [await handler for handler in handlers]

    for user, output, (i, mock) in zip(users, outputs, enumerate(mocks.values()), strict=True):
        assert len(str(output.response.content).split()) == 5 + i
        assert book.ledger.usage(user).total == sum(call.total_tokens for call in mock.calls)
    book.audit(list(mocks.values()), paid=users, unpaid=["default"], max_cap=30)
