"""LCEL chains as their users write them: a prompt, a model, a parser; RAG with a retriever; batch; streams."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from clear_integrations import BudgetPolicy
from clear_integrations.adapters.langchain import ClearBudget, budgeted
from clear_integrations.testing import MeteredFakeChatModel

from .conftest import Book

PROMPT = ChatPromptTemplate.from_template("Answer from the context.\nContext: {context}\nQuestion: {question}")
DOCS = ["Budgets are kept per tenant.", "A shadow price prices tokens.", "Caps go in the provider's field."]


def _rag(model: object) -> object:
    store = InMemoryVectorStore.from_texts(DOCS, DeterministicFakeEmbedding(size=16))
    retriever = store.as_retriever(search_kwargs={"k": 2})

    def join(docs: list[Document]) -> str:
        return "\n".join(d.page_content for d in docs)

    return {"context": retriever | join, "question": RunnablePassthrough()} | PROMPT | model | StrOutputParser()


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.anyio
async def test_rag_chain_wrapped_with_clear_budget(book: Book, mode: str) -> None:
    book.budget("acme", 1_000)
    model = MeteredFakeChatModel(response_tokens=150)
    chain = ClearBudget(_rag(model), ledger=book.ledger, tenant="acme", policy=BudgetPolicy(max_tokens=120))
    questions = [f"where are budgets kept? ({i})" for i in range(8)]
    if mode == "sync":
        answers = chain.batch(questions)
    else:
        answers = await chain.abatch(questions)
    assert any("budget" in a for a in answers) and any(len(a.split()) == 120 for a in answers)
    book.audit([model], paid=["acme"], unpaid=["default"], max_cap=120)


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.anyio
async def test_budgeted_model_streamed_through_a_chain_read_lazily(book: Book, mode: str) -> None:
    book.budget("acme", 400)
    model = MeteredFakeChatModel(response_tokens=300)
    chain = PROMPT | budgeted(model, ledger=book.ledger, tenant="acme") | StrOutputParser()
    question = {"context": "none", "question": "stream it"}
    sync = mode == "sync"
    pieces = list(chain.stream(question)) if sync else [piece async for piece in chain.astream(question)]
    assert 0 < len(pieces) <= 400
    book.audit([model], paid=["acme"])
