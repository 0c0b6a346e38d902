"""``astream_events(version="v2")`` over a budgeted chain, as UIs and servers consume it, with LangChain's own
``UsageMetadataCallbackHandler`` in the config.

Token events arrive one by one; a stream that stops at its cap, whether the provider stops it or the budgeted model
cuts a provider that ignores its cap, ends with ``on_chat_model_end`` (never an error event); the usage LangChain's
own handler records is exactly what the ledger charged.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler, UsageMetadataCallbackHandler
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import LLMResult
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableConfig

from clear_integrations import BudgetPolicy
from clear_integrations.adapters.langchain import ClearBudget, budgeted
from clear_integrations.testing import MeteredFakeChatModel

from .conftest import Book

PROMPT = ChatPromptTemplate.from_template("Tell me about {topic}")


class DeafModel(MeteredFakeChatModel):
    """A provider that ignores every cap: it streams its whole answer whatever ``max_tokens`` says."""

    def _cap_fields(self) -> dict[str, Any]:
        return {}


class Recorder(BaseCallbackHandler):
    """The sync twin of ``astream_events`` (v2 is async only): the same events, from streaming callbacks, as sync
    servers consume them while they iterate ``chain.stream(...)``."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def _add(self, name: str, **data: Any) -> None:
        self.events.append({"event": name, "data": data})

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        self._add("on_chat_model_start")

    def on_llm_new_token(self, token: Any, *, chunk: Any = None, **kwargs: Any) -> None:
        self._add("on_chat_model_stream", chunk=chunk.message)

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        self._add("on_chat_model_end", output=response.generations[0][0].message)

    def on_llm_error(self, error: BaseException, **kwargs: Any) -> None:
        self._add("on_chat_model_error", error=error)

    def on_chain_error(self, error: BaseException, **kwargs: Any) -> None:
        self._add("on_chain_error", error=error)

    def on_chain_end(self, outputs: Any, *, parent_run_id: Any = None, **kwargs: Any) -> None:
        if parent_run_id is None:
            self._add("on_chain_end", output=outputs)


async def _events(chain: Any, mode: str, usage: UsageMetadataCallbackHandler) -> list[dict[str, Any]]:
    """The events of one run: ``astream_events(version="v2")``, or the callbacks of a sync ``stream``."""
    question = {"topic": "budgets"}
    if mode == "async":
        config: RunnableConfig = {"callbacks": [usage]}
        return [event async for event in chain.astream_events(question, config, version="v2")]
    recorder = Recorder()
    pieces = list(chain.stream(question, {"callbacks": [usage, recorder]}))
    assert pieces
    return recorder.events


def _names(events: list[dict[str, Any]]) -> list[str]:
    return [event["event"] for event in events]


def _tokens(events: list[dict[str, Any]]) -> list[Any]:
    return [e["data"]["chunk"] for e in events if e["event"] == "on_chat_model_stream" and e["data"]["chunk"].content]


@pytest.mark.parametrize("wrap", ["budgeted", "ClearBudget"])
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.anyio
async def test_stream_events_of_a_budgeted_chain_and_langchains_usage_handler(book: Book, mode: str, wrap: str) -> None:
    book.budget("acme", 500)
    model = MeteredFakeChatModel(response_tokens=40)
    policy = BudgetPolicy(max_tokens=15)
    if wrap == "budgeted":
        chain: Any = PROMPT | budgeted(model, ledger=book.ledger, tenant="acme", policy=policy) | StrOutputParser()
    else:
        chain = ClearBudget(PROMPT | model | StrOutputParser(), ledger=book.ledger, tenant="acme", policy=policy)
    usage = UsageMetadataCallbackHandler()
    events = await _events(chain, mode, usage)
    names = _names(events)
    assert len(_tokens(events)) == 15  # one event per token, cut at the cap by the provider
    assert names.count("on_chat_model_start") == 1 and names.count("on_chat_model_end") == 1
    assert not [name for name in names if name.endswith("_error")]
    assert names.index("on_chat_model_start") < names.index("on_chat_model_stream") < names.index("on_chat_model_end")
    output = next(e for e in events if e["event"] == "on_chat_model_end")["data"]["output"]
    assert output.response_metadata["finish_reason"] == "length"
    assert output.response_metadata["clear_max_tokens"] == 15
    assert [c.cap for c in model.calls] == [15] and model.calls[0].streamed
    book.audit([model], paid=["acme"], unpaid=["default"], max_cap=15)
    recorded = usage.usage_metadata["metered-fake"]
    ledger = book.ledger.usage("acme")
    assert (recorded["input_tokens"], recorded["output_tokens"]) == (ledger.prompt, ledger.completion)


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.anyio
async def test_a_provider_that_ignores_its_cap_is_cut_and_the_run_still_ends(book: Book, mode: str) -> None:
    book.budget("acme", 500)
    model = DeafModel(response_tokens=40)
    chain = PROMPT | budgeted(model, ledger=book.ledger, tenant="acme", policy=BudgetPolicy(max_tokens=15))
    usage = UsageMetadataCallbackHandler()
    events = await _events(chain, mode, usage)
    names = _names(events)
    assert names.count("on_chat_model_end") == 1 and names[-1] == "on_chain_end"
    assert not [name for name in names if name.endswith("_error")]
    tokens = _tokens(events)
    assert len(tokens) == 15  # the meter delivered the cap, not the 40 tokens the provider sent
    call = model.calls[0]
    assert call.cap is None and call.finish_reason == "cancelled"  # deaf to the cap; the stream was closed
    ledger = book.ledger.usage("acme")
    assert ledger.completion == call.output_tokens == 16  # the 15 delivered and the one read past the cap
    assert ledger.estimated_calls == 1  # the provider's report never came: the prompt is a count of ours
    balance = book.ledger.balance("acme")
    assert balance.held == 0 and balance.spent <= 500
    recorded = usage.usage_metadata.get("metered-fake")
    assert recorded is not None, "LangChain's usage handler saw nothing of a charged call"
    assert (recorded["input_tokens"], recorded["output_tokens"]) == (ledger.prompt, ledger.completion)
