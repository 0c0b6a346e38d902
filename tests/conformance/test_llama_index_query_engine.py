"""Query engines as LlamaIndex users build them: an index over a few documents, ``as_query_engine`` with the refine
and tree-summarize synthesizers, ``query`` and ``aquery``, on a budget that runs out in the middle of the query."""

from __future__ import annotations

from typing import Any

import pytest
from llama_index.core import Document, SummaryIndex, VectorStoreIndex
from llama_index.core.base.response.schema import Response
from llama_index.core.embeddings import MockEmbedding

from clear_integrations import BudgetPolicy
from clear_integrations.adapters.llama_index import DEFAULT_FALLBACK, ClearBudgetLLM
from clear_integrations.testing import MeteredMockLLM

from .conftest import Book

pytestmark = pytest.mark.anyio

DOCS = [Document(text=f"Note {i}: " + "budgets are kept per tenant and priced in tokens " * 5) for i in range(6)]
QUESTION = "Where are budgets kept?"


async def _ask(engine: Any, mode: str) -> Response:
    response = await engine.aquery(QUESTION) if mode == "async" else engine.query(QUESTION)
    assert isinstance(response, Response)
    return response


def _abandoned(response: Response, tenant: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = (response.metadata or {}).get("clear_abandoned", [])
    assert all(d["clear_action"] == "abandon" and d["clear_account"] == tenant for d in found), found
    return found


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_refine_over_a_vector_index_runs_out_mid_query(book: Book, mode: str) -> None:
    book.budget("acme", 600)
    mock = MeteredMockLLM(response_tokens=40)
    llm = ClearBudgetLLM(mock, ledger=book.ledger, tenant="acme", policy=BudgetPolicy(max_tokens=30))
    index = VectorStoreIndex.from_documents(DOCS, embed_model=MockEmbedding(embed_dim=8))
    engine = index.as_query_engine(llm=llm, response_mode="refine", similarity_top_k=6)

    response = await _ask(engine, mode)

    abandoned = _abandoned(response, "acme")
    assert len(response.source_nodes) == 6
    assert len(mock.calls) >= 2 and abandoned  # it ran out in the middle of the query
    assert len(mock.calls) + len(abandoned) == 6  # refine: one call per node, made or abandoned, none lost
    assert str(response) == DEFAULT_FALLBACK  # the last refine step was abandoned: a fallback, told by metadata
    book.audit([mock], paid=["acme"], unpaid=["default"], max_cap=30)


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_tree_summarize_over_a_summary_index_runs_out_mid_query(book: Book, mode: str) -> None:
    book.budget("acme", 600)
    mock = MeteredMockLLM(response_tokens=40, context_window=300)  # a small window: several chunks, then a summary
    llm = ClearBudgetLLM(mock, ledger=book.ledger, tenant="acme", policy=BudgetPolicy(max_tokens=30))
    engine = SummaryIndex.from_documents(DOCS).as_query_engine(llm=llm, response_mode="tree_summarize")

    response = await _ask(engine, mode)

    abandoned = _abandoned(response, "acme")
    assert len(mock.calls) >= 2 and abandoned
    assert all(call.cap == 30 and call.output_tokens == 30 for call in mock.calls)
    book.audit([mock], paid=["acme"], unpaid=["default"], max_cap=30)


@pytest.mark.parametrize("response_mode", ["refine", "tree_summarize"])
async def test_a_query_within_budget_carries_no_abandoned_calls(book: Book, response_mode: str) -> None:
    book.budget("acme", 100_000)
    window = 300 if response_mode == "tree_summarize" else 8192  # refine: one node per call; tree: packed chunks
    mock = MeteredMockLLM(response_tokens=20, context_window=window)
    llm = ClearBudgetLLM(mock, ledger=book.ledger, tenant="acme", policy=BudgetPolicy(max_tokens=30))
    engine = SummaryIndex.from_documents(DOCS).as_query_engine(llm=llm, response_mode=response_mode)

    response = await engine.aquery(QUESTION)

    assert "clear_abandoned" not in (response.metadata or {})
    assert len(str(response).split()) == 20  # the model's answer, not a fallback
    assert len(mock.calls) >= 3 and all(call.output_tokens == 20 for call in mock.calls)
    book.audit([mock], paid=["acme"], unpaid=["default"], max_cap=30)
