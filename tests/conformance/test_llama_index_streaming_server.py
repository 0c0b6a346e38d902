"""A streaming query engine behind a web server, the FastAPI way: the request handler runs the query under the
user's ``clear_scope`` and returns the response stream; the server reads the body afterwards, outside that scope
(sync handlers and their body in worker threads, as Starlette does). The user who asked pays, and their hard budget
holds. Driven over ASGI with httpx's ``ASGITransport`` (a plain ASGI app: starlette is not a dependency)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from typing import Any
from urllib.parse import parse_qs

import anyio
import httpx
import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.response.schema import AsyncStreamingResponse, StreamingResponse
from llama_index.core.embeddings import MockEmbedding

from clear_integrations import BudgetPolicy
from clear_integrations.adapters.llama_index import DEFAULT_FALLBACK, ClearBudgetLLM, clear_scope
from clear_integrations.testing import MeteredMockLLM

from .conftest import Book

pytestmark = pytest.mark.anyio

DOCS = [Document(text=f"Note {i}: budgets are kept per tenant.") for i in range(3)]
ANSWER = 60  # words the model would stream without a cap


def _engine(llm: ClearBudgetLLM, response_mode: str) -> Any:
    index = VectorStoreIndex.from_documents(DOCS, embed_model=MockEmbedding(embed_dim=8))
    return index.as_query_engine(llm=llm, streaming=True, response_mode=response_mode, similarity_top_k=1)


def _server(engine: Any, mode: str, *, stop_after: int | None = None, kept: list[Any] | None = None) -> Any:
    """An ASGI app with one endpoint, ``GET /ask?q=...`` and the user in ``x-user``: the handler returns the lazy
    body, and the server streams it after the handler (and its scope) returned. ``stop_after``: the client goes away
    after that many pieces (the server closes the body); ``kept``: the app keeps each response (for its sources)."""

    def ask(user: str, question: str) -> Iterator[str]:  # a sync endpoint: Starlette runs it in a worker thread
        with clear_scope(tenant=user):
            response = engine.query(question)
        assert isinstance(response, StreamingResponse)
        if kept is not None:
            kept.append(response)
        return response.response_gen

    async def aask(user: str, question: str) -> AsyncGenerator[str, None]:
        with clear_scope(tenant=user):
            response = await engine.aquery(question)
        assert isinstance(response, AsyncStreamingResponse)
        if kept is not None:
            kept.append(response)
        return response.async_response_gen()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http" and scope["path"] == "/ask"
        user = dict(scope["headers"])[b"x-user"].decode()
        question = parse_qs(scope["query_string"].decode())["q"][0]
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        sent = 0
        if mode == "async":
            body = await aask(user, question)
            async for piece in body:
                await send({"type": "http.response.body", "body": piece.encode(), "more_body": True})
                if (sent := sent + 1) == stop_after:
                    await body.aclose()
                    break
        else:
            chunks = await anyio.to_thread.run_sync(ask, user, question)
            while (piece := await anyio.to_thread.run_sync(next, chunks, None)) is not None:  # iterate_in_threadpool
                await send({"type": "http.response.body", "body": piece.encode(), "more_body": True})
                if (sent := sent + 1) == stop_after:
                    await anyio.to_thread.run_sync(chunks.close)  # type: ignore[attr-defined]
                    break
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


async def _get(client: httpx.AsyncClient, user: str, question: str) -> str:
    reply = await client.get("/ask", params={"q": question}, headers={"x-user": user})
    assert reply.status_code == 200
    return reply.text


@pytest.mark.parametrize("response_mode", ["compact", "refine", "tree_summarize"])
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_the_user_who_asked_pays_for_a_body_read_after_the_handler(
    book: Book, mode: str, response_mode: str
) -> None:
    book.budget("alice", 120)  # one prompt (about 90 words) and a few dozen words: the cap comes from her budget
    book.budget("bob", 10_000)
    mock = MeteredMockLLM(response_tokens=ANSWER)
    llm = ClearBudgetLLM(mock, ledger=book.ledger, tenant="default")  # "default" has no budget: it would not cap
    transport = httpx.ASGITransport(app=_server(_engine(llm, response_mode), mode))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        alice, bob = await _get(client, "alice", "where are budgets kept?"), await _get(client, "bob", "and mine?")
        again = await _get(client, "alice", "where are budgets kept, again?")

    assert 0 < len(alice.split()) < ANSWER  # capped by alice's budget, though read outside her scope
    assert len(bob.split()) == ANSWER  # bob's budget is large: his answer is whole
    assert again == DEFAULT_FALLBACK  # alice's budget is spent: her next body is the fallback
    # the cap reached the model: what alice's budget had left, and what bob's call holds (nothing else caps it)
    assert [call.cap for call in mock.calls] == [len(alice.split()), BudgetPolicy().reserve_tokens]
    book.audit([mock], paid=["alice", "bob"], unpaid=["default"])
    assert book.ledger.usage("bob").total == mock.calls[1].total_tokens


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_concurrent_requests_each_charge_their_own_user(book: Book, mode: str) -> None:
    users = {f"user{i}": 110 + 5 * i for i in range(4)}  # each: a prompt of 88 and a few words
    for user, tokens in users.items():
        book.budget(user, tokens)
    mock = MeteredMockLLM(response_tokens=ANSWER, latency=0.001)
    llm = ClearBudgetLLM(mock, ledger=book.ledger, tenant="default")
    transport = httpx.ASGITransport(app=_server(_engine(llm, "compact"), mode))
    bodies: dict[str, str] = {}
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:

        async def one(user: str) -> None:
            bodies[user] = await _get(client, user, "where are budgets kept?")

        async with anyio.create_task_group() as tasks:
            for user in users:
                tasks.start_soon(one, user)

    for user, tokens in users.items():  # each user's stream was cut by their own budget and charged to them
        usage = book.ledger.usage(user)
        assert usage.calls == 1 and usage.completion == len(bodies[user].split()) < ANSWER, (user, usage)
        assert book.ledger.balance(user).spent == usage.total <= tokens
    book.audit([mock], paid=list(users), unpaid=["default"])


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_client_that_goes_away_pays_for_what_streamed_and_holds_nothing(book: Book, mode: str) -> None:
    book.budget("alice", 1_000)
    mock = MeteredMockLLM(response_tokens=ANSWER)
    llm = ClearBudgetLLM(mock, ledger=book.ledger, tenant="default")
    kept: list[Any] = []  # the app keeps its responses: their streams must not keep holding tokens
    app = _server(_engine(llm, "refine"), mode, stop_after=5, kept=kept)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        body = await _get(client, "alice", "where are budgets kept?")

    assert len(body.split()) == 5 and len(kept) == 1
    assert [(call.output_tokens, call.finish_reason) for call in mock.calls] == [(5, "cancelled")]
    assert book.ledger.usage("alice").completion == 5  # what streamed, not the cap the call held
    book.audit([mock], paid=["alice"], unpaid=["default"])  # and nothing is held


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_calls_abandoned_while_the_body_streams_are_on_the_response(book: Book, mode: str) -> None:
    book.budget("alice", 200)  # the first refine call fits, not the ones streamed after it
    mock = MeteredMockLLM(response_tokens=30)
    llm = ClearBudgetLLM(mock, ledger=book.ledger, tenant="default", policy=BudgetPolicy(max_tokens=30))
    index = VectorStoreIndex.from_documents(DOCS, embed_model=MockEmbedding(embed_dim=8))
    kept: list[Any] = []
    engine = index.as_query_engine(llm=llm, streaming=True, response_mode="refine", similarity_top_k=len(DOCS))
    app = _server(engine, mode, kept=kept)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        body = await _get(client, "alice", "where are budgets kept?")

    assert body == DEFAULT_FALLBACK and len(mock.calls) == 1
    abandoned = kept[0].metadata["clear_abandoned"]
    assert len(abandoned) == len(DOCS) - 1  # every refine step after the first, the streamed last one included
    assert all(d["clear_account"] == "alice" for d in abandoned)
    book.audit([mock], paid=["alice"], unpaid=["default"], max_cap=30)
