"""Legacy callbacks set after the ``ClearBudgetLLM`` was built: a ``TokenCountingHandler`` attached through
``Settings.callback_manager`` (with ``Settings.llm``) or through a synthesizer's ``callback_manager=`` counts the
same with and without the wrapper: two identical runs, one on the wrapped LLM and one on the bare LLM."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from llama_index.core import Document, Settings, SummaryIndex, get_response_synthesizer
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.core.llms.llm import LLM
from llama_index.core.query_engine import RetrieverQueryEngine

from clear_integrations import BudgetPolicy
from clear_integrations.adapters.llama_index import ClearBudgetLLM
from clear_integrations.testing import MeteredMockLLM

from .conftest import Book

pytestmark = pytest.mark.anyio

DOCS = [Document(text=f"Note {i}: budgets are kept per tenant and priced in tokens.") for i in range(3)]
Counts = tuple[int, int, int]
Run = Callable[[LLM, CallbackManager, bool], Awaitable[None]]


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``Settings`` as the test leaves it: its LLM and callback manager are put back afterwards."""
    monkeypatch.setattr(Settings, "_llm", None)
    monkeypatch.setattr(Settings, "_callback_manager", None)
    return Settings


async def _read(response: Any, streaming: bool) -> None:
    if not streaming:
        return
    if hasattr(response, "async_response_gen"):
        [piece async for piece in response.async_response_gen()]
    else:
        list(response.response_gen)


async def _query_through_settings(llm: LLM, manager: CallbackManager, aio: bool, streaming: bool = False) -> None:
    Settings.llm = llm  # the usual order: the LLM first, then the callbacks
    Settings.callback_manager = manager
    engine = SummaryIndex.from_documents(DOCS).as_query_engine(response_mode="refine", streaming=streaming)
    await _read(await engine.aquery("where?") if aio else engine.query("where?"), streaming)


async def _query_through_a_synthesizer(llm: LLM, manager: CallbackManager, aio: bool, streaming: bool = False) -> None:
    synthesizer = get_response_synthesizer(
        llm=llm, callback_manager=manager, response_mode="tree_summarize", streaming=streaming
    )
    engine = RetrieverQueryEngine(SummaryIndex.from_documents(DOCS).as_retriever(), synthesizer)
    await _read(await engine.aquery("where?") if aio else engine.query("where?"), streaming)


async def _chat_through_settings(llm: LLM, manager: CallbackManager, aio: bool, streaming: bool = False) -> None:
    Settings.llm = llm
    Settings.callback_manager = manager
    engine = SimpleChatEngine.from_defaults()
    for turn in ("hello there", "and again"):
        if streaming:
            response: Any = await engine.astream_chat(turn) if aio else engine.stream_chat(turn)
            await _read(response, True)
        else:
            await engine.achat(turn) if aio else engine.chat(turn)


async def _counted(run: Any, llm: LLM, aio: bool, streaming: bool) -> Counts:
    counter = TokenCountingHandler(tokenizer=str.split)
    await run(llm, CallbackManager([counter]), aio, streaming)
    return counter.prompt_llm_token_count, counter.completion_llm_token_count, len(counter.llm_token_counts)


@pytest.mark.parametrize("run", [_query_through_settings, _query_through_a_synthesizer, _chat_through_settings])
@pytest.mark.parametrize("streaming", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_token_counting_handler_counts_the_same_with_the_wrapper(
    book: Book, settings: Any, run: Any, streaming: bool, mode: str
) -> None:
    book.budget("acme", 100_000)
    bare = MeteredMockLLM(response_tokens=20)
    mock = MeteredMockLLM(response_tokens=20)
    wrapped = ClearBudgetLLM(mock, ledger=book.ledger, tenant="acme", policy=BudgetPolicy(max_tokens=30))

    without = await _counted(run, bare, mode == "async", streaming)
    with_wrapper = await _counted(run, wrapped, mode == "async", streaming)

    assert with_wrapper == without
    calls = len(mock.calls)
    assert calls >= 1 and with_wrapper == (sum(c.prompt_tokens for c in mock.calls), 20 * calls, calls)
    book.audit([mock], paid=["acme"], unpaid=["default"], max_cap=30)
