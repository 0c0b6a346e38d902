"""``ClearBudgetEmbedding``: a LlamaIndex embedding model whose input tokens are charged on the ledger.

Each embedding call (a query, a text, a batch; sync and async) reserves its input tokens, counted offline with
tiktoken for the model's name (exact for OpenAI embedding models, an estimate otherwise: embedding providers report
no usage through LlamaIndex), calls the wrapped model, and commits. A hard budget that cannot pay refuses the call
with :class:`~clear_integrations.errors.QueryAbandoned` (there is no fallback for a vector). The wrapper's own
public methods emit LlamaIndex's embedding events once; it calls the wrapped model's private methods, so a
``TokenCountingHandler`` counts the same with and without it. The payer is resolved as for
:class:`~.llm.ClearBudgetLLM`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from pydantic import Field, PrivateAttr

from ...budgeting import Generate, Generated, Outcome, Payer, Request, Spender
from ...ledger import AsyncLedger, Ledger, Usage
from ...tokens import count_tokens
from .scope import current_payer

__all__ = ["ClearBudgetEmbedding"]

T = TypeVar("T")


class ClearBudgetEmbedding(BaseEmbedding):
    """``embed_model`` with its input tokens charged to ``tenant`` (and ``session``) on ``ledger``."""

    embed_model: BaseEmbedding = Field(description="The wrapped embedding model.")
    tenant: str = Field(description="The tenant that pays by default.")
    session: str | None = Field(default=None, description="The session that pays by default.")

    _spender: Spender = PrivateAttr()

    def __init__(
        self,
        embed_model: BaseEmbedding,
        *,
        ledger: Ledger,
        tenant: str,
        session: str | None = None,
        async_ledger: AsyncLedger | None = None,
        **kwargs: Any,
    ) -> None:
        spender = Spender.open(ledger, tenant=tenant, session=session, async_ledger=async_ledger)
        settings = {
            "model_name": embed_model.model_name,
            "embed_batch_size": embed_model.embed_batch_size,
            "callback_manager": embed_model.callback_manager,
        }
        super().__init__(embed_model=embed_model, tenant=tenant, session=session, **{**settings, **kwargs})
        self._spender = spender

    @classmethod
    def class_name(cls) -> str:
        return "ClearBudgetEmbedding"

    def _request(self, texts: list[str]) -> Request:
        counts = [count_tokens(text, model=self.model_name) for text in texts]
        scope = current_payer(Payer(self.tenant, self.session)).scope
        return Request(
            scope, "", sum(c.tokens for c in counts), any(c.estimated for c in counts), embedding=True, extendable=False
        )

    @staticmethod
    def _vectors(outcome: Outcome) -> Any:
        if outcome.decision.abandoned:
            raise outcome.decision.error()
        return outcome.outputs[0]

    def _charged(self, texts: list[str], embed: Callable[[], T]) -> T:
        request = self._request(texts)

        def send(_op: Generate) -> Generated:
            return Generated(embed(), Usage(request.prompt_tokens, estimated=request.estimated))

        return self._vectors(self._spender.sync.call(request, send))  # type: ignore[no-any-return]

    async def _acharged(self, texts: list[str], embed: Callable[[], Awaitable[T]]) -> T:
        request = self._request(texts)

        async def send(_op: Generate) -> Generated:
            return Generated(await embed(), Usage(request.prompt_tokens, estimated=request.estimated))

        return self._vectors(await self._spender.asynchronous.call(request, send))  # type: ignore[no-any-return]

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._charged([query], lambda: self.embed_model._get_query_embedding(query))

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await self._acharged([query], lambda: self.embed_model._aget_query_embedding(query))

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._charged([text], lambda: self.embed_model._get_text_embedding(text))

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await self._acharged([text], lambda: self.embed_model._aget_text_embedding(text))

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._charged(texts, lambda: self.embed_model._get_text_embeddings(texts))

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await self._acharged(texts, lambda: self.embed_model._aget_text_embeddings(texts))
