"""Chat engines shared by two users at once, each under their own ``clear_scope``: a condense-plus-context engine
over an index and a ``SimpleChatEngine``, one engine (one memory) per user on one shared budgeted LLM; threads for
``chat`` / ``stream_chat`` (whose stream LlamaIndex consumes in a background thread), tasks for ``achat`` /
``astream_chat``. Nobody pays for the other, and each user's hard budget holds."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import anyio
import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.core.embeddings import MockEmbedding

from clear_integrations import BudgetPolicy
from clear_integrations.adapters.llama_index import DEFAULT_FALLBACK, ClearBudgetLLM, clear_scope
from clear_integrations.testing import MeteredMockLLM

from .conftest import Book

DOCS = [Document(text=f"Note {i}: budgets are kept per tenant, in tokens.") for i in range(3)]
WORDS = {"alice": 7, "bob": 13}  # each user's answers have their own length: the model's calls tell who asked


def _length(messages: Sequence[ChatMessage]) -> int:
    text = " ".join(str(message.content) for message in messages)
    return WORDS["alice"] if "alice" in text else WORDS["bob"]


def _engine(llm: ClearBudgetLLM, kind: str) -> Any:
    if kind == "simple":
        return SimpleChatEngine.from_defaults(llm=llm)
    index = VectorStoreIndex.from_documents(DOCS, embed_model=MockEmbedding(embed_dim=8))
    return index.as_chat_engine(chat_mode="condense_plus_context", llm=llm, similarity_top_k=1)


def _user_calls(mock: MeteredMockLLM, user: str) -> list[Any]:
    return [call for call in mock.calls if call.output_tokens == WORDS[user]]


def _audit_per_user(book: Book, mock: MeteredMockLLM) -> None:
    for user in WORDS:
        calls, usage = _user_calls(mock, user), book.ledger.usage(user)
        assert calls and usage.calls == len(calls), (user, usage, calls)
        assert usage.total == sum(call.total_tokens for call in calls), (user, usage)  # exactly their own calls
    book.audit([mock], paid=list(WORDS), unpaid=["default"], max_cap=30)


@pytest.mark.parametrize("kind", ["condense_plus_context", "simple"])
def test_two_users_chat_from_two_threads(book: Book, kind: str) -> None:
    for user in WORDS:
        book.budget(user, 5_000)
    mock = MeteredMockLLM(response_tokens=_length, latency=0.002)
    llm = ClearBudgetLLM(mock, ledger=book.ledger, tenant="default", policy=BudgetPolicy(max_tokens=30))
    replies: dict[str, list[str]] = {}
    barrier = threading.Barrier(2)

    def converse(user: str) -> None:
        engine = _engine(llm, kind)
        barrier.wait()  # both conversations run at once
        with clear_scope(tenant=user):
            turns = [str(engine.chat(f"{user} asks question {i}")) for i in range(3)]
            streamed = engine.stream_chat(f"{user} asks for a stream")  # consumed by LlamaIndex in a thread
        turns.append("".join(streamed.response_gen))  # read after the scope: the user's anyway
        replies[user] = turns

    threads = [threading.Thread(target=converse, args=(user,)) for user in WORDS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for user, words in WORDS.items():
        assert [len(turn.split()) for turn in replies[user]] == [words] * 4, replies[user]
    _audit_per_user(book, mock)


@pytest.mark.parametrize("kind", ["condense_plus_context", "simple"])
@pytest.mark.anyio
async def test_two_users_chat_from_two_tasks(book: Book, kind: str) -> None:
    for user in WORDS:
        book.budget(user, 5_000)
    mock = MeteredMockLLM(response_tokens=_length, latency=0.002)
    llm = ClearBudgetLLM(mock, ledger=book.ledger, tenant="default", policy=BudgetPolicy(max_tokens=30))
    replies: dict[str, list[str]] = {}

    async def converse(user: str) -> None:
        engine = _engine(llm, kind)
        with clear_scope(tenant=user):
            turns = [str(await engine.achat(f"{user} asks question {i}")) for i in range(3)]
            streamed = await engine.astream_chat(f"{user} asks for a stream")  # written to memory by a task
        turns.append("".join([piece async for piece in streamed.async_response_gen()]))
        replies[user] = turns

    async with anyio.create_task_group() as tasks:
        for user in WORDS:
            tasks.start_soon(converse, user)

    for user, words in WORDS.items():
        assert [len(turn.split()) for turn in replies[user]] == [words] * 4, replies[user]
    _audit_per_user(book, mock)


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.anyio
async def test_a_user_out_of_budget_gets_the_fallback_the_other_goes_on(book: Book, mode: str) -> None:
    book.budget("alice", 40)  # room for about one turn (prompt and answer)
    book.budget("bob", 10_000)
    mock = MeteredMockLLM(response_tokens=_length)
    llm = ClearBudgetLLM(mock, ledger=book.ledger, tenant="default", policy=BudgetPolicy(max_tokens=30, wait=0))
    engines = {user: _engine(llm, "simple") for user in WORDS}
    replies: dict[str, list[str]] = {user: [] for user in WORDS}
    for i in range(3):
        for user, engine in engines.items():
            with clear_scope(tenant=user):
                if mode == "sync":
                    streamed = engine.stream_chat(f"{user} turn {i}")
                    replies[user].append("".join(streamed.response_gen))
                else:
                    streamed = await engine.astream_chat(f"{user} turn {i}")
                    replies[user].append("".join([piece async for piece in streamed.async_response_gen()]))

    assert replies["alice"][0] != DEFAULT_FALLBACK and replies["alice"][-1] == DEFAULT_FALLBACK
    assert all(len(reply.split()) == WORDS["bob"] for reply in replies["bob"])
    _audit_per_user(book, mock)
