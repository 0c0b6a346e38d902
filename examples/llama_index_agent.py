"""A LlamaIndex FunctionAgent with two tools, each tenant under its own token budget.

Runs offline in a second: the LLM is the shipped `MeteredMockLLM`, scripted to call `add`, then `multiply`, then
answer. `ClearBudgetLLM` decides every agent step, caps it in the LLM's own `max_tokens`, commits the real usage,
and when a tenant's budget runs out the step returns a fallback final answer, so the agent ends gracefully.

    python examples/llama_index_agent.py
"""

from __future__ import annotations

import asyncio

from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult

from clear_integrations import Budget, BudgetPolicy, open_ledger
from clear_integrations.adapters.llama_index import ClearBudgetLLM, clear_scope
from clear_integrations.testing import MeteredMockLLM


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


def scripted_llm() -> MeteredMockLLM:
    """A fake LLM that calls add(1, 2), then multiply(3, 4), then answers in 60 tokens."""
    script = [[{"name": "add", "args": {"a": 1, "b": 2}}], [{"name": "multiply", "args": {"a": 3, "b": 4}}], []]
    return MeteredMockLLM(response_tokens=60, tool_calls=script)


async def ask(llm: ClearBudgetLLM, tenant: str, question: str) -> str:
    agent = FunctionAgent(tools=[add, multiply], llm=llm, system_prompt="Use the tools to compute.")
    with clear_scope(tenant=tenant):  # every step of this run is charged to `tenant`
        handler = agent.run(user_msg=question)
        async for event in handler.stream_events():
            if isinstance(event, ToolCallResult):
                print(f"  [{tenant}] {event.tool_name}({event.tool_kwargs}) -> {event.tool_output.content}")
        return str(await handler)


async def main() -> None:
    ledger = open_ledger("memory://")  # or sqlite:///budgets.db, redis://localhost:6379/0
    ledger.set_budget("acme", Budget(tokens=2_000, window="1d"))
    ledger.set_budget("tiny-co", Budget(tokens=60, window="1d"))  # enough for one step, not for three

    llm = ClearBudgetLLM(
        scripted_llm(),
        ledger=ledger,
        tenant="acme",
        policy=BudgetPolicy(max_tokens=40),  # each step capped at 40 tokens
    )
    for tenant in ("acme", "tiny-co"):
        llm.llm.reset()  # restart the fake LLM's tool script for the next run
        answer = await ask(llm, tenant, "What is (1 + 2) * 4?")
        print(f"{tenant}: {answer[:70]!r}")
    for tenant in ("acme", "tiny-co"):
        balance, usage = ledger.balance(tenant), ledger.usage(tenant)
        print(f"{tenant} spent {balance.spent} of {balance.limit} tokens today in {usage.calls} LLM calls "
              f"({balance.remaining} left, {balance.held} held)")


if __name__ == "__main__":
    asyncio.run(main())
