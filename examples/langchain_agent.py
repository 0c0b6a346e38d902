"""A LangChain agent (`create_agent`) with two tools, capped step by step and stopped gracefully by its budget.

Runs offline: the model is the shipped `MeteredFakeChatModel`, scripted to call the `add` tool, then `multiply`,
then answer. The first run fits its budget; the second, on a tenant with a tiny budget, ends with the middleware's
final message instead of an exception.

    python examples/langchain_agent.py
"""

from __future__ import annotations

from langchain.agents import create_agent
from langchain_core.tools import tool

from clear_integrations import Budget, BudgetPolicy, open_ledger
from clear_integrations.adapters.langchain import ClearBudgetMiddleware
from clear_integrations.testing import MeteredFakeChatModel


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


def run(tenant: str, budget: int) -> None:
    ledger = open_ledger("memory://")
    ledger.set_budget(tenant, Budget(tokens=budget))
    model = MeteredFakeChatModel(
        response_tokens=30,
        tool_calls=[
            [{"name": "add", "args": {"a": 2, "b": 3}}],
            [{"name": "multiply", "args": {"a": 5, "b": 7}}],
            [],
        ],
    )
    agent = create_agent(
        model,
        tools=[add, multiply],
        middleware=[ClearBudgetMiddleware(ledger=ledger, tenant=tenant, policy=BudgetPolicy(max_tokens=64))],
    )
    result = agent.invoke({"messages": [("user", "What is (2 + 3) * 7?")]})
    final = result["messages"][-1]
    balance = ledger.balance(tenant)
    caps = [call.cap for call in model.calls]
    print(f"{tenant}: {len(model.calls)} model steps, caps {caps}, spent {balance.spent} of {balance.limit}")
    print(f"  final answer: {final.text[:70]!r}")
    assert balance.spent <= budget
    assert balance.held == 0


if __name__ == "__main__":
    run("acme", budget=2_000)
    run("tiny", budget=90)
