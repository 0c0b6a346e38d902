"""An ``AgentWorkflow`` that hands off between two ``FunctionAgent``s (``can_handoff_to``), each on its own budgeted
LLM, run under the user's ``clear_scope``: both agents' calls are charged to that user, under one hard budget."""

from __future__ import annotations

import pytest
from llama_index.core.agent.workflow import AgentOutput, AgentWorkflow, FunctionAgent, ToolCallResult

from clear_integrations import BudgetPolicy
from clear_integrations.adapters.llama_index import DEFAULT_FALLBACK, ClearBudgetLLM, clear_scope
from clear_integrations.testing import MeteredMockLLM

from .conftest import Book

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecationWarning"),  # workflows inspects agents
]

HANDOFF = [[{"name": "handoff", "args": {"to_agent": "calculator", "reason": "it is arithmetic"}}], []]
ADD = [[{"name": "add", "args": {"a": 1, "b": 2}}], []]


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def _workflow(book: Book) -> tuple[AgentWorkflow, MeteredMockLLM, MeteredMockLLM]:
    policy = BudgetPolicy(max_tokens=30, wait=0)
    triage_model, calculator_model = (
        MeteredMockLLM(response_tokens=20, tool_calls=HANDOFF),
        MeteredMockLLM(response_tokens=25, tool_calls=ADD),
    )
    triage = FunctionAgent(
        name="triage",
        description="Routes each question to the agent that can answer it.",
        system_prompt="Hand arithmetic to the calculator.",
        llm=ClearBudgetLLM(triage_model, ledger=book.ledger, tenant="default", policy=policy),
        can_handoff_to=["calculator"],
    )
    calculator = FunctionAgent(
        name="calculator",
        description="Does arithmetic with its tools.",
        system_prompt="Use the tools to compute.",
        tools=[add],
        llm=ClearBudgetLLM(calculator_model, ledger=book.ledger, tenant="default", policy=policy),
    )
    return AgentWorkflow(agents=[triage, calculator], root_agent="triage"), triage_model, calculator_model


async def _run(workflow: AgentWorkflow, user: str) -> tuple[AgentOutput, list[AgentOutput], list[str]]:
    with clear_scope(tenant=user):
        handler = workflow.run(user_msg="What is 1 + 2?")
    outputs, tools = [], []
    async for event in handler.stream_events():
        if isinstance(event, AgentOutput):
            outputs.append(event)
        elif isinstance(event, ToolCallResult):
            tools.append(event.tool_name)
    final = await handler
    assert isinstance(final, AgentOutput)
    return final, outputs, tools


async def test_a_hand_off_charges_both_agents_to_the_user(book: Book) -> None:
    book.budget("alice", 10_000)
    workflow, triage, calculator = _workflow(book)

    final, outputs, tools = await _run(workflow, "alice")

    assert tools == ["handoff", "add"]
    assert [o.current_agent_name for o in outputs] == ["triage", "calculator", "calculator"]
    assert final.current_agent_name == "calculator" and len(str(final.response.content).split()) == 25
    assert len(triage.calls) == 1 and len(calculator.calls) == 2
    book.audit([triage, calculator], paid=["alice"], unpaid=["default"], max_cap=30)


async def test_the_budget_runs_out_after_the_hand_off(book: Book) -> None:
    book.budget("alice", 70)  # the hand-off and one calculator step fit; the calculator's answer does not
    workflow, triage, calculator = _workflow(book)

    final, outputs, tools = await _run(workflow, "alice")

    assert tools == ["handoff", "add"] and [o.current_agent_name for o in outputs][-1] == "calculator"
    assert final.current_agent_name == "calculator" and str(final.response.content) == DEFAULT_FALLBACK
    assert final.raw["clear_action"] == "abandon" and final.raw["clear_account"] == "alice"
    assert len(triage.calls) == 1 and len(calculator.calls) == 1
    book.audit([triage, calculator], paid=["alice"], unpaid=["default"], max_cap=30)


async def test_the_budget_runs_out_before_the_hand_off(book: Book) -> None:
    book.budget("alice", 20)  # not even the triage step
    workflow, triage, calculator = _workflow(book)

    final, outputs, tools = await _run(workflow, "alice")

    assert (
        len(outputs) == 1
        and tools == []
        and final.current_agent_name == "triage"
        and str(final.response.content) == DEFAULT_FALLBACK
    )
    assert triage.calls == [] and calculator.calls == []
    assert book.ledger.balance("alice").spent == 0
