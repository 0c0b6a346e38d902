"""``langgraph.prebuilt.create_react_agent(budgeted(model), tools)``: deprecated in LangGraph 1.0 but still the most
common agent in the wild. Invoked, and streamed with ``stream_mode="messages"`` (LangGraph then streams the model
token by token): every step capped, the ledger exactly what the model reported, a spent budget ends the loop with
the fallback answer."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.prebuilt import create_react_agent

from clear_integrations import BudgetPolicy
from clear_integrations.adapters.langchain import budgeted
from clear_integrations.budgeting import DEFAULT_FALLBACK
from clear_integrations.testing import MeteredFakeChatModel

from .conftest import Book

pytestmark = pytest.mark.filterwarnings("ignore:create_react_agent has been moved")

QUESTION = {"messages": [HumanMessage("What is (3 + 4) * 5?")]}
SCRIPT = [[{"name": "add", "args": {"a": 3, "b": 4}}], [{"name": "multiply", "args": {"a": 7, "b": 5}}], []]


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


def _agent(book: Book, model: MeteredFakeChatModel, **policy: Any) -> Any:
    llm = budgeted(model, ledger=book.ledger, tenant="acme", policy=BudgetPolicy(**policy))
    return create_react_agent(llm, [add, multiply], checkpointer=InMemorySaver())


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.anyio
async def test_react_agent_steps_are_capped_and_charged(book: Book, mode: str) -> None:
    book.budget("acme", 2_000)
    model = MeteredFakeChatModel(response_tokens=30, tool_calls=SCRIPT)
    agent = _agent(book, model, max_tokens=12)
    config: RunnableConfig = {"configurable": {"thread_id": "r-1"}}
    result = agent.invoke(QUESTION, config) if mode == "sync" else await agent.ainvoke(QUESTION, config)
    assert [m.content for m in result["messages"] if isinstance(m, ToolMessage)] == ["7", "35"]
    final = result["messages"][-1]
    assert isinstance(final, AIMessage) and len(final.content.split()) == 12
    assert final.response_metadata["clear_action"] == "cap" and final.response_metadata["clear_max_tokens"] == 12
    assert [c.cap for c in model.calls] == [12, 12, 12] and not any(c.streamed for c in model.calls)
    book.audit([model], paid=["acme"], unpaid=["default"], max_cap=12)
    assert book.ledger.usage("acme/r-1").calls == 3


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.anyio
async def test_stream_mode_messages_streams_the_model_and_charges_exactly(book: Book, mode: str) -> None:
    book.budget("acme", 2_000)
    model = MeteredFakeChatModel(response_tokens=30, tool_calls=SCRIPT)
    agent = _agent(book, model, max_tokens=12)
    config: RunnableConfig = {"configurable": {"thread_id": "r-2"}}
    if mode == "sync":
        streamed = [(chunk, meta) for chunk, meta in agent.stream(QUESTION, config, stream_mode="messages")]
    else:
        streamed = [(chunk, meta) async for chunk, meta in agent.astream(QUESTION, config, stream_mode="messages")]
    from_model = [chunk for chunk, meta in streamed if meta["langgraph_node"] == "agent"]
    assert all(isinstance(chunk, AIMessageChunk) for chunk in from_model)
    assert sum(1 for chunk in from_model if chunk.content) == 12  # the last answer, token by token, cut at its cap
    assert [c.cap for c in model.calls] == [12, 12, 12] and all(c.streamed for c in model.calls)
    assert [m.content for m in (chunk for chunk, _ in streamed) if isinstance(m, ToolMessage)] == ["7", "35"]
    book.audit([model], paid=["acme"], unpaid=["default"], max_cap=12)
    usage = book.ledger.usage("acme/r-2")
    assert usage.calls == 3 and usage.completion == sum(c.output_tokens for c in model.calls)
    merged = sum(from_model[1:], from_model[0])
    assert merged.usage_metadata is not None  # the provider's usage reached the stream's consumer
    assert merged.usage_metadata["total_tokens"] == book.ledger.usage("acme").total


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.anyio
async def test_a_spent_budget_ends_the_react_loop_with_the_fallback(book: Book, mode: str) -> None:
    model = MeteredFakeChatModel(
        response_tokens=5, tool_calls=[[{"name": "add", "args": {"a": i, "b": 1}}] for i in range(40)]
    )
    agent = _agent(book, model, min_tokens=20, wait=0.0)
    book.budget("acme", 600)
    config: RunnableConfig = {"configurable": {"thread_id": "r-3"}, "recursion_limit": 200}
    if mode == "sync":
        chunks = [chunk for chunk, _ in agent.stream(QUESTION, config, stream_mode="messages")]
    else:
        chunks = [chunk async for chunk, _ in agent.astream(QUESTION, config, stream_mode="messages")]
    final = [c for c in chunks if isinstance(c, AIMessageChunk) and c.content][-1]
    assert final.content == DEFAULT_FALLBACK  # the caller can tell it from an answer
    assert final.response_metadata["clear_action"] == "abandon" and final.response_metadata["clear_account"] == "acme"
    assert 1 < len(model.calls) < 40  # steps ran, then the budget ended the loop (no GraphRecursionError)
    book.audit([model], paid=["acme"])
    last = agent.get_state(config).values["messages"][-1]  # the checkpoint has the merged fallback, no tool call
    assert isinstance(last, AIMessage) and not last.tool_calls and last.response_metadata["clear_action"] == "abandon"
