"""Structured output as its users write it: ``prompt | llm.with_structured_output(Schema)``, with ``include_raw``.

A budgeted model's structured output is the wrapped model's own (its tool call), on a strict copy: when the budget
runs out the chain raises ``QueryAbandoned`` naming the account and what it has left; never ``None``, never a
parsing error from a tool call cut at its cap.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, Field

from clear_integrations import BudgetPolicy, QueryAbandoned
from clear_integrations.adapters.langchain import budgeted
from clear_integrations.testing import MeteredFakeChatModel

from .conftest import Book

PROMPT = ChatPromptTemplate.from_messages(
    [("system", "Extract the verdict on the claim."), ("human", "Claim: {claim}")]
)
ARGS = {"claim": "the sky is blue", "supported": True, "confidence": 0.9}
ANSWER_TOKENS = 10  # MeteredFakeChatModel: "Verdict" plus the words of the arguments' JSON


class Verdict(BaseModel):
    """A verdict on a claim."""

    claim: str = Field(description="the claim, restated")
    supported: bool
    confidence: float


def _model(calls: int) -> MeteredFakeChatModel:
    return MeteredFakeChatModel(tool_calls=[[{"name": "Verdict", "args": ARGS}]] * calls)


async def _run(chain: Any, mode: str, claim: str) -> Any:
    if mode == "sync":
        return chain.invoke({"claim": claim})
    return await chain.ainvoke({"claim": claim})


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.anyio
async def test_structured_output_in_a_chain_is_parsed_and_charged(book: Book, mode: str) -> None:
    book.budget("acme", 1_000)
    model = _model(3)
    llm = budgeted(model, ledger=book.ledger, tenant="acme", policy=BudgetPolicy(max_tokens=40))
    chain = PROMPT | llm.with_structured_output(Verdict)
    verdicts = [await _run(chain, mode, f"the sky is blue ({i})") for i in range(3)]
    assert verdicts == [Verdict(**ARGS)] * 3
    assert [call.tool_calls for call in model.calls] == [("Verdict",)] * 3
    assert all(call.output_tokens == ANSWER_TOKENS for call in model.calls)
    book.audit([model], paid=["acme"], unpaid=["default"], max_cap=40)


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.anyio
async def test_a_spent_budget_raises_query_abandoned_naming_the_account(book: Book, mode: str) -> None:
    book.budget("acme", 1_000)
    model = _model(10)
    llm = budgeted(model, ledger=book.ledger, tenant="acme")
    chain = PROMPT | llm.with_structured_output(Verdict)
    first = await _run(chain, mode, "the sky is blue")
    assert first == Verdict(**ARGS)
    spent = book.ledger.usage("acme").total
    book.budget("acme", spent + 5)  # less than the next prompt needs
    with pytest.raises(QueryAbandoned) as raised:
        await _run(chain, mode, "the sky is blue")
    assert raised.value.account == "acme" and raised.value.remaining == 5
    assert "acme" in str(raised.value) and "5" in str(raised.value)
    assert len(model.calls) == 1  # the refused call never reached the model
    book.audit([model], paid=["acme"])


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.anyio
async def test_a_tool_call_the_budget_would_cut_raises_instead_of_returning_none(book: Book, mode: str) -> None:
    """The budget leaves room for the prompt and a few tokens, fewer than the tool call needs: the call is granted
    a cap, the provider stops at it with no usable tool call; the parser would say ``None``. It must raise."""
    book.budget("acme", 1_000)
    model = _model(10)
    llm = budgeted(model, ledger=book.ledger, tenant="acme", policy=BudgetPolicy(min_tokens=2))
    chain = PROMPT | llm.with_structured_output(Verdict)
    await _run(chain, mode, "the sky is blue")
    messages = PROMPT.invoke({"claim": "the sky is blue"}).to_messages()
    held_for_prompt = llm._wired.prompt(messages, [convert_to_openai_tool(Verdict)])[0]  # as the model counts it
    assert held_for_prompt >= model.calls[0].prompt_tokens
    book.budget("acme", book.ledger.usage("acme").total + held_for_prompt + 3)  # 3 tokens for the answer
    left = book.ledger.balance("acme").remaining
    with pytest.raises(QueryAbandoned) as raised:  # not None, not a parsing error
        await _run(chain, mode, "the sky is blue")
    assert raised.value.account == "acme"
    assert raised.value.remaining is not None and raised.value.remaining < left
    last = model.calls[-1]
    assert last.finish_reason == "length" and last.cap is not None and last.cap < ANSWER_TOKENS
    book.audit([model], paid=["acme"])  # the cut call's tokens were spent: they are on the ledger


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.anyio
async def test_include_raw_returns_the_raw_message_with_the_decision(book: Book, mode: str) -> None:
    book.budget("acme", 1_000)
    model = _model(1)
    llm = budgeted(model, ledger=book.ledger, tenant="acme", policy=BudgetPolicy(max_tokens=30))
    chain = PROMPT | llm.with_structured_output(Verdict, include_raw=True)
    out = await _run(chain, mode, "the sky is blue")
    assert out["parsed"] == Verdict(**ARGS) and out["parsing_error"] is None
    raw = out["raw"]
    assert isinstance(raw, AIMessage) and raw.tool_calls[0]["name"] == "Verdict"
    assert raw.response_metadata["clear_action"] in ("allow", "cap")
    assert raw.response_metadata["clear_max_tokens"] == 30
    charged = raw.response_metadata["clear_usage"]
    assert charged["prompt"] + charged["completion"] == model.calls[0].total_tokens
    book.audit([model], paid=["acme"], max_cap=30)

    book.budget("acme", book.ledger.usage("acme").total)  # spent
    with pytest.raises(QueryAbandoned) as raised:
        await _run(chain, mode, "the sky is blue")
    assert raised.value.account == "acme" and raised.value.remaining == 0
    assert len(model.calls) == 1


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.anyio
async def test_streamed_structured_output_cut_by_the_budget_raises(book: Book, mode: str) -> None:
    """``chain.stream`` of a structured-output chain: parsed as it streams; cut at its cap by the budget it raises
    (an empty stream would be ``None`` in disguise)."""
    book.budget("acme", 1_000)
    model = _model(10)
    llm = budgeted(model, ledger=book.ledger, tenant="acme", policy=BudgetPolicy(min_tokens=2))
    chain = PROMPT | llm.with_structured_output(Verdict)

    async def streamed() -> list[Any]:
        if mode == "sync":
            return list(chain.stream({"claim": "the sky is blue"}))
        return [part async for part in chain.astream({"claim": "the sky is blue"})]

    assert (await streamed())[-1] == Verdict(**ARGS)
    messages = PROMPT.invoke({"claim": "the sky is blue"}).to_messages()
    held_for_prompt = llm._wired.prompt(messages, [convert_to_openai_tool(Verdict)])[0]
    book.budget("acme", book.ledger.usage("acme").total + held_for_prompt + 3)
    with pytest.raises(QueryAbandoned) as raised:  # not an empty stream
        await streamed()
    assert raised.value.account == "acme" and raised.value.remaining is not None
    assert [c.streamed for c in model.calls] == [True, True] and model.calls[-1].cap == 3
    book.audit([model], paid=["acme"])
