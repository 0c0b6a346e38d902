"""Embeddings: ``ClearBudgetEmbedding(MockEmbedding(...))`` builds a ``VectorStoreIndex`` and embeds each question of
its query engine, with a ``ClearBudgetLLM`` answering, and a ``ClearEventHandler`` installed at the same time (on the
same tenant, so a double count would show). Input tokens are charged once, each text as the embedding model's
tokenizer counts it; past a hard budget the embedding is refused with :class:`QueryAbandoned`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.embeddings.base import Embedding
from llama_index.core.embeddings import MockEmbedding
from pydantic import PrivateAttr

from clear_integrations import BudgetPolicy, QueryAbandoned
from clear_integrations.adapters.llama_index import ClearBudgetEmbedding, ClearBudgetLLM, ClearEventHandler
from clear_integrations.testing import MeteredMockLLM
from clear_integrations.tokens import count_tokens

from .conftest import Book

pytestmark = pytest.mark.anyio

MODEL = "text-embedding-3-small"  # an OpenAI name: tiktoken counts it exactly, as the provider would
DOCS = [Document(text=f"Note {i}: budgets are kept per tenant and priced in tokens.") for i in range(4)]


@dataclass(frozen=True)
class Embedded:
    """One call the embedding model received, as ``Book.audit`` reads a model's calls (an embedding has no output,
    and no cap: ``cap=0``)."""

    texts: tuple[str, ...]
    cap: int = 0
    output_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        return sum(count_tokens(text, model=MODEL).tokens for text in self.texts)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens


class RecordingEmbedding(MockEmbedding):
    """``MockEmbedding`` that records the texts of each call it receives."""

    _calls: list[Embedded] = PrivateAttr(default_factory=list)

    @property
    def calls(self) -> list[Embedded]:
        return list(self._calls)

    def _get_query_embedding(self, query: str) -> Embedding:
        self._calls.append(Embedded((query,)))
        return super()._get_query_embedding(query)

    async def _aget_query_embedding(self, query: str) -> Embedding:
        self._calls.append(Embedded((query,)))
        return await super()._aget_query_embedding(query)

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        self._calls.append(Embedded(tuple(texts)))
        return super()._get_text_embeddings(texts)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        self._calls.append(Embedded(tuple(texts)))
        return await super()._aget_text_embeddings(texts)


def _models(book: Book) -> tuple[RecordingEmbedding, ClearBudgetEmbedding, MeteredMockLLM, ClearBudgetLLM]:
    recorder = RecordingEmbedding(embed_dim=8, model_name=MODEL)
    embed_model = ClearBudgetEmbedding(recorder, ledger=book.ledger, tenant="acme")
    mock = MeteredMockLLM(response_tokens=10)
    llm = ClearBudgetLLM(mock, ledger=book.ledger, tenant="acme", policy=BudgetPolicy(max_tokens=20, wait=0))
    return recorder, embed_model, mock, llm


async def _build(embed_model: ClearBudgetEmbedding, aio: bool) -> VectorStoreIndex:
    return VectorStoreIndex.from_documents(DOCS, embed_model=embed_model, use_async=aio)


async def _ask(engine: Any, question: str, aio: bool) -> Any:
    return await engine.aquery(question) if aio else engine.query(question)


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_an_index_and_its_questions_are_charged_once(book: Book, mode: str) -> None:
    book.budget("acme", 10_000)
    recorder, embed_model, mock, llm = _models(book)
    with ClearEventHandler.install(book.ledger, tenant="acme") as observer:
        index = await _build(embed_model, mode == "async")
        engine = index.as_query_engine(llm=llm, similarity_top_k=2)
        answers = [await _ask(engine, f"Where are budgets kept? ({i})", mode == "async") for i in range(3)]
        assert observer.open_calls == 0 and observer.unbilled() == []

    assert all(len(str(answer).split()) == 10 for answer in answers)
    embedded = [text for call in recorder.calls for text in call.texts]
    assert sorted(embedded[: len(DOCS)]) == sorted(node.get_content(metadata_mode="embed") for node in _nodes(index))
    assert len(recorder.calls) == 1 + 3  # the documents in one batch, then one query embedding per question
    usage = book.ledger.usage("acme")
    assert usage.calls == len(recorder.calls) + len(mock.calls)  # one charge per call, none from the observer
    book.audit([mock, recorder], paid=["acme"], unpaid=["default"], max_cap=20)


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_embeddings_past_a_hard_budget_are_refused(book: Book, mode: str) -> None:
    recorder, embed_model, mock, llm = _models(book)
    index_tokens = sum(count_tokens(doc.get_content(metadata_mode="embed"), model=MODEL).tokens for doc in DOCS)
    book.budget("acme", index_tokens + 8)  # the index, and a question or so
    with ClearEventHandler.install(book.ledger, tenant="acme"):
        index = await _build(embed_model, mode == "async")
        engine = index.as_query_engine(llm=llm, similarity_top_k=2)
        with pytest.raises(QueryAbandoned) as refused:
            await _ask_until_refused(engine, mode == "async")

    assert refused.value.account == "acme" and refused.value.remaining is not None
    assert refused.value.remaining < count_tokens("Where are budgets kept? (4)", model=MODEL).tokens
    assert len(recorder.calls) >= 2  # the index was built and at least one question embedded
    book.audit([mock, recorder], paid=["acme"], unpaid=["default"])


async def _ask_until_refused(engine: Any, aio: bool) -> None:
    for i in range(5):
        await _ask(engine, f"Where are budgets kept? ({i})", aio)


def _nodes(index: VectorStoreIndex) -> list[Any]:
    return list(index.docstore.docs.values())
