"""A hand-built LangGraph ``StateGraph`` as its users write it: ``MessagesState``, a function node that calls a model
with tools bound, ``tools_condition`` routing to a ``ToolNode``, a checkpointer and a ``thread_id``.

The thread is the session (``acme/<thread_id>``); a run's ``config["metadata"]["clear_tenant"]`` names who pays, and
two tenants sharing the graph never pay for each other. ``ClearBudget(compiled_graph)`` caps a node that is a runnable
(``prompt | model``), warns at construction about a function node calling an unwrapped model, accounts for that
model's calls and refuses them once the hard budget is spent.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from clear_integrations import BudgetPolicy, ClearWarning, QueryAbandoned
from clear_integrations.adapters.langchain import ClearBudget, budgeted
from clear_integrations.testing import MeteredCall, MeteredFakeChatModel

from .conftest import Book


@tool
def lookup(city: str) -> str:
    """Look up the weather in a city."""
    return f"It is sunny in {city}."


def _graph(llm: Any, mode: str) -> Any:
    """The graph of the LangGraph docs' quickstart: an agent node and a tools node, looping until no tool call."""
    bound = llm.bind_tools([lookup])

    def agent(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [bound.invoke(state["messages"])]}

    async def aagent(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [await bound.ainvoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent if mode == "sync" else aagent)
    builder.add_node("tools", ToolNode([lookup]))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=InMemorySaver())


async def _run(graph: Any, mode: str, text: str, config: RunnableConfig) -> dict[str, Any]:
    state = {"messages": [HumanMessage(text)]}
    if mode == "sync":
        return graph.invoke(state, config)  # type: ignore[no-any-return]
    return await graph.ainvoke(state, config)  # type: ignore[no-any-return]


@dataclass
class Calls:
    """A slice of a metered model's calls, for ``book.audit``."""

    calls: Sequence[MeteredCall] = field(default_factory=list)


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.anyio
async def test_the_thread_is_the_session_across_turns(book: Book, mode: str) -> None:
    book.budget("acme", 3_000)
    book.budget("acme/t-7", 1_500)  # a per-thread budget
    model = MeteredFakeChatModel(
        response_tokens=20, tool_calls=[[{"name": "lookup", "args": {"city": "Oslo"}}], [], []]
    )
    graph = _graph(budgeted(model, ledger=book.ledger, tenant="acme", policy=BudgetPolicy(max_tokens=15)), mode)
    thread: RunnableConfig = {"configurable": {"thread_id": "t-7"}}
    first = await _run(graph, mode, "Weather in Oslo?", thread)
    assert [type(m).__name__ for m in first["messages"]] == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    second = await _run(graph, mode, "And tomorrow?", thread)
    assert len(second["messages"]) == 6  # the checkpointer kept the first turn
    assert model.calls[2].prompt_tokens > model.calls[1].prompt_tokens  # the second turn sees the history
    book.audit([model], paid=["acme"], unpaid=["default", "acme/other"], max_cap=15)
    assert (
        book.ledger.usage("acme/t-7").total
        == book.ledger.usage("acme").total
        == sum(c.total_tokens for c in model.calls)
    )
    assert second["messages"][-1].response_metadata["clear_scope"] == "acme/t-7"


def _by_tenant(messages: Sequence[BaseMessage]) -> int:
    """Answer length by who asks: 5 words for acme, 9 for bravo, so the ledger shows who paid for what."""
    return 9 if str(messages[0].content).startswith("bravo") else 5


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.anyio
async def test_two_tenants_through_run_metadata_never_pay_for_each_other(book: Book, mode: str) -> None:
    model = MeteredFakeChatModel(response_tokens=_by_tenant)
    graph = _graph(budgeted(model, ledger=book.ledger, tenant="acme"), mode)
    book.budget("acme", 1_000)
    book.budget("bravo", 1_000)
    acme: RunnableConfig = {"configurable": {"thread_id": "a-1"}}
    bravo: RunnableConfig = {"configurable": {"thread_id": "b-1"}, "metadata": {"clear_tenant": "bravo"}}
    runs = [("acme asks: weather?", acme), ("bravo asks: weather?", bravo)]

    async def both() -> list[dict[str, Any]]:
        if mode == "sync":
            return [await _run(graph, mode, text, config) for text, config in runs]
        return list(await asyncio.gather(*(_run(graph, mode, text, config) for text, config in runs)))

    results = await both()
    book.budget("bravo", book.ledger.usage("bravo").total)  # bravo's budget is spent, acme's is not
    results += await both()
    answers = [r["messages"][-1] for r in results]
    assert [a.response_metadata["clear_scope"] for a in answers] == ["acme/a-1", "bravo/b-1"] * 2
    assert answers[3].response_metadata["clear_action"] == "abandon"  # bravo's second turn: bravo's budget is spent
    assert answers[3].response_metadata["clear_account"] == "bravo"
    assert answers[2].response_metadata["clear_action"] != "abandon"  # acme goes on
    acme_calls = [c for c in model.calls if c.output_tokens == 5]
    bravo_calls = [c for c in model.calls if c.output_tokens == 9]
    assert len(acme_calls) == 2 and len(bravo_calls) == 1 and len(model.calls) == 3
    book.audit([Calls(acme_calls)], paid=["acme"], unpaid=["default"])
    book.audit([Calls(bravo_calls)], paid=["bravo"])
    assert book.ledger.usage("acme/a-1").total == sum(c.total_tokens for c in acme_calls)
    assert book.ledger.usage("bravo/b-1").total == sum(c.total_tokens for c in bravo_calls)
    assert book.ledger.usage("acme/b-1").calls == 0 and book.ledger.usage("bravo/a-1").calls == 0


REVIEW = ChatPromptTemplate.from_messages([("system", "Improve the draft."), MessagesPlaceholder("messages")])


def _review_graph(drafter: MeteredFakeChatModel, checker: MeteredFakeChatModel, mode: str) -> Any:
    """A node that is a runnable (``prompt | model``) and a function node that calls an unwrapped model."""

    def check(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [checker.invoke(state["messages"])]}

    async def acheck(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [await checker.ainvoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("check", check if mode == "sync" else acheck)
    builder.add_node("draft", REVIEW | drafter | (lambda message: {"messages": [message]}))
    builder.add_edge(START, "check")
    builder.add_conditional_edges("check", lambda s: "draft" if s["messages"][-1].content else END, ["draft", END])
    builder.add_edge("draft", END)
    return builder.compile(checkpointer=InMemorySaver())


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.anyio
async def test_clear_budget_on_a_compiled_graph_caps_runnable_nodes_and_guards_function_nodes(
    book: Book, mode: str
) -> None:
    drafter = MeteredFakeChatModel(response_tokens=60)
    checker = MeteredFakeChatModel(response_tokens=6)
    graph = _review_graph(drafter, checker, mode)
    book.budget("acme", 400)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        budgeted_graph = ClearBudget(graph, ledger=book.ledger, tenant="acme", policy=BudgetPolicy(max_tokens=20))
    construction = [str(w.message) for w in caught if issubclass(w.category, ClearWarning)]
    assert len(construction) == 1 and "'checker'" in construction[0] and "'check'" in construction[0]
    assert drafter.calls == [] and checker.calls == []  # nothing ran yet

    config: RunnableConfig = {"configurable": {"thread_id": "r-1"}}
    with pytest.warns(ClearWarning, match="MeteredFakeChatModel"):  # the safety net: accounted, not capped
        result = await _run(budgeted_graph, mode, "Draft: budgets are per tenant.", config)
    draft = result["messages"][-1]
    assert isinstance(draft, AIMessage) and len(draft.content.split()) == 20
    assert [c.cap for c in drafter.calls] == [20]  # the runnable node was capped
    assert [c.cap for c in checker.calls] == [None]  # the function node's model was only accounted for
    book.audit([drafter, checker], paid=["acme"], unpaid=["default"], capped=False)
    assert book.ledger.usage("acme/r-1").calls == 2
    assert graph.nodes["draft"].bound.steps[1] is drafter  # the user's graph is untouched

    spent = book.ledger.usage("acme").total
    book.budget("acme", spent + 3)  # less than the checker's prompt: its next call must not happen
    with pytest.raises(QueryAbandoned) as raised:
        await _run(budgeted_graph, mode, "Draft: another one.", {"configurable": {"thread_id": "r-2"}})
    assert raised.value.account == "acme" and raised.value.remaining == 3
    assert len(checker.calls) == 1 and len(drafter.calls) == 1  # refused before the provider was called
    book.audit([drafter, checker], paid=["acme"], capped=False)
