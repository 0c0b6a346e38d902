"""``langchain.agents.create_agent`` as its users write it: a model, tools, a checkpointer, a ``thread_id``.

One tool calls a model of its own (a summarizer). Two ways to budget it: the agent's model through ``budgeted()``,
or ``ClearBudgetMiddleware`` on an unwrapped model with a ``ClearCallbackHandler`` in the run's config beside it
(for whatever the middleware does not see). Either way every model step, the tool's included, is charged exactly
once, to the thread's session.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import StructuredTool, tool
from langgraph.checkpoint.memory import InMemorySaver
from pydantic import BaseModel

from clear_integrations import BudgetPolicy, QueryAbandoned
from clear_integrations.adapters.langchain import ClearBudgetMiddleware, ClearCallbackHandler, budgeted
from clear_integrations.adapters.langchain.middleware import DEFAULT_FINAL_MESSAGE
from clear_integrations.testing import MeteredFakeChatModel

from .conftest import Book

QUESTION = {"messages": [HumanMessage("Summarize the report, then add 2 and 3.")]}
SCRIPT = [
    [{"name": "summarize", "args": {"text": "budgets are kept per tenant and per session"}}],
    [{"name": "add", "args": {"a": 2, "b": 3}}],
    [],
]


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def _summarizer_tool(summarizer: Any) -> StructuredTool:
    """A tool that calls a model itself, sync and async, as tools that summarize or extract do."""

    def summarize(text: str) -> str:
        return str(summarizer.invoke(f"Summarize in one line: {text}").content)

    async def asummarize(text: str) -> str:
        return str((await summarizer.ainvoke(f"Summarize in one line: {text}")).content)

    return StructuredTool.from_function(
        func=summarize, coroutine=asummarize, name="summarize", description="Summarize a text."
    )


async def _run(agent: Any, mode: str, config: RunnableConfig) -> dict[str, Any]:
    if mode == "sync":
        return agent.invoke(QUESTION, config)  # type: ignore[no-any-return]
    return await agent.ainvoke(QUESTION, config)  # type: ignore[no-any-return]


def _check_answers(result: dict[str, Any], summarizer: MeteredFakeChatModel) -> None:
    tools = [m for m in result["messages"] if isinstance(m, ToolMessage)]
    assert [m.name for m in tools] == ["summarize", "add"]
    assert len(tools[0].content.split()) == summarizer.calls[0].output_tokens  # the summary, capped
    assert tools[1].content == "5"
    assert isinstance(result["messages"][-1], AIMessage) and not result["messages"][-1].tool_calls


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.anyio
async def test_budgeted_agent_model_and_a_tool_that_calls_a_budgeted_model(book: Book, mode: str) -> None:
    book.budget("acme", 2_000)
    model = MeteredFakeChatModel(response_tokens=40, tool_calls=SCRIPT)
    summarizer = MeteredFakeChatModel(response_tokens=30)
    agent = create_agent(
        budgeted(model, ledger=book.ledger, tenant="acme", policy=BudgetPolicy(max_tokens=25)),
        tools=[
            _summarizer_tool(
                budgeted(summarizer, ledger=book.ledger, tenant="acme", policy=BudgetPolicy(max_tokens=12))
            ),
            add,
        ],
        checkpointer=InMemorySaver(),
    )
    result = await _run(agent, mode, {"configurable": {"thread_id": "t-1"}})
    _check_answers(result, summarizer)
    assert [c.cap for c in model.calls] == [25, 25, 25] and [c.cap for c in summarizer.calls] == [12]
    assert summarizer.calls[0].output_tokens == 12 and summarizer.calls[0].finish_reason == "length"
    book.audit([model, summarizer], paid=["acme"], unpaid=["default"], max_cap=25)
    both = sum(c.total_tokens for c in [*model.calls, *summarizer.calls])
    thread = book.ledger.usage("acme/t-1")
    assert thread.total == both and thread.calls == 4  # the tool's model runs in the thread's session too
    assert book.ledger.usage("acme").calls == 4


@pytest.mark.parametrize("tool_model", ["budgeted", "unwrapped"])
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.anyio
async def test_middleware_and_a_callback_handler_charge_each_step_once(book: Book, mode: str, tool_model: str) -> None:
    """The middleware budgets the agent's steps, the handler in the config accounts for what it does not see (a
    tool's unwrapped model); the handler skips what budgeted models and the middleware already charged."""
    book.budget("acme", 2_000)
    model = MeteredFakeChatModel(response_tokens=40, tool_calls=SCRIPT)
    summarizer = MeteredFakeChatModel(response_tokens=30)
    inner: Any = summarizer
    if tool_model == "budgeted":
        inner = budgeted(summarizer, ledger=book.ledger, tenant="acme", policy=BudgetPolicy(max_tokens=12))
    middleware = ClearBudgetMiddleware(ledger=book.ledger, tenant="acme", policy=BudgetPolicy(max_tokens=25))
    agent = create_agent(
        model, tools=[_summarizer_tool(inner), add], middleware=[middleware], checkpointer=InMemorySaver()
    )
    handler = ClearCallbackHandler(book.ledger, tenant="acme")
    result = await _run(agent, mode, {"configurable": {"thread_id": "t-2"}, "callbacks": [handler]})
    _check_answers(result, summarizer)
    assert [c.cap for c in model.calls] == [25, 25, 25]
    assert result["clear_run_tokens"] == sum(c.total_tokens for c in model.calls)  # the agent's model steps
    book.audit([model, summarizer], paid=["acme"], unpaid=["default"], capped=tool_model == "budgeted")
    usage = book.ledger.usage("acme")
    assert usage.calls == 4  # three agent steps and the tool's call: once each
    totals = handler.totals()
    if tool_model == "budgeted":
        assert [c.cap for c in summarizer.calls] == [12]
        assert totals.calls == 0 and totals.unreserved == 0  # everything was charged by budgeted models
    else:
        assert summarizer.calls[0].cap is None  # not capped: only accounted for
        assert totals.calls == 1 and totals.prompt + totals.completion == summarizer.calls[0].total_tokens
    assert totals.in_flight == 0
    assert book.ledger.usage("acme/t-2").total == usage.total  # the thread is the session, for both


class Verdict(BaseModel):
    """The agent's structured answer."""

    total: int
    summary: str


FINAL = [{"name": "Verdict", "args": {"total": 5, "summary": "budgets per tenant"}}]


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.anyio
async def test_an_agent_with_a_response_format_raises_when_the_budget_runs_out(book: Book, mode: str) -> None:
    """``create_agent(..., response_format=Schema)`` forces a tool call every step: when the budget runs out, a
    fallback text would leave ``structured_response`` at ``None``; a budgeted model raises instead."""
    book.budget("acme", 2_000)
    model = MeteredFakeChatModel(response_tokens=10, tool_calls=[SCRIPT[1], FINAL, SCRIPT[1], FINAL])
    llm = budgeted(model, ledger=book.ledger, tenant="acme", policy=BudgetPolicy(max_tokens=40))
    agent = create_agent(llm, tools=[add], response_format=Verdict)
    result = await _run(agent, mode, {"configurable": {"thread_id": "s-1"}})
    assert result["structured_response"] == Verdict(total=5, summary="budgets per tenant")
    spent = book.ledger.usage("acme").total
    book.budget("acme", spent + 10)  # not enough for the next step's prompt
    with pytest.raises(QueryAbandoned) as raised:
        await _run(agent, mode, {"configurable": {"thread_id": "s-2"}})
    assert raised.value.account == "acme" and raised.value.remaining == 10
    assert len(model.calls) == 2
    book.audit([model], paid=["acme"], max_cap=40)


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.anyio
async def test_the_middleware_ends_a_response_format_agent_with_its_final_message(book: Book, mode: str) -> None:
    book.budget("acme", 2_000)
    model = MeteredFakeChatModel(response_tokens=10, tool_calls=[SCRIPT[1], FINAL])
    middleware = ClearBudgetMiddleware(ledger=book.ledger, tenant="acme", policy=BudgetPolicy(max_tokens=40))
    agent = create_agent(model, tools=[add], response_format=Verdict, middleware=[middleware])
    result = await _run(agent, mode, {"configurable": {"thread_id": "m-1"}})
    assert result["structured_response"] == Verdict(total=5, summary="budgets per tenant")
    book.budget("acme", book.ledger.usage("acme").total)  # spent
    result = await _run(agent, mode, {"configurable": {"thread_id": "m-2"}})
    assert result.get("structured_response") is None  # documented: the run ended, and says why
    last = result["messages"][-1]
    assert last.content == DEFAULT_FINAL_MESSAGE and last.response_metadata["clear_account"] == "acme"
    assert len(model.calls) == 2
    book.audit([model], paid=["acme"], max_cap=40)
