"""``BudgetedEmbeddings``: LangChain embeddings charged on the ledger (LangChain embeddings fire no callbacks, so
wrapping them is the only way to see their tokens).

Each ``embed_documents`` / ``embed_query`` call (and async twin) reserves its input tokens (counted offline with
tiktoken for the model's name: exact for OpenAI embedding models, an estimate otherwise, since providers report no
usage through LangChain's interface), calls the wrapped embeddings, and commits. When the budget refuses, the call
raises :class:`~clear_integrations.errors.QueryAbandoned`: there is no fallback for a vector.
"""

from __future__ import annotations

from typing import Any

from langchain_core.embeddings import Embeddings

from ...budgeting import Generate, Generated, Outcome, Request, Spender
from ...budgeting.payer import resolve_payer
from ...ledger import Usage
from ...tokens import count_tokens
from .usage import model_name

__all__ = ["BudgetedEmbeddings"]


class BudgetedEmbeddings(Embeddings):
    """``embeddings`` with every call charged on the spender's ledger (see the module docstring)."""

    def __init__(self, embeddings: Embeddings, spender: Spender) -> None:
        self.embeddings = embeddings
        self.spender = spender
        self._model = model_name(embeddings)  # type: ignore[arg-type]

    @classmethod
    def wrap(cls, embeddings: Embeddings, spender: Spender) -> BudgetedEmbeddings:
        return embeddings if isinstance(embeddings, BudgetedEmbeddings) else cls(embeddings, spender)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["embeddings"], name)

    def _request(self, texts: list[str]) -> Request:
        counts = [count_tokens(text, model=self._model) for text in texts]
        tokens = sum(c.tokens for c in counts)
        scope = resolve_payer(self.spender.payer).scope
        return Request(scope, "", tokens, any(c.estimated for c in counts), embedding=True, extendable=False)

    @staticmethod
    def _vectors(outcome: Outcome) -> Any:
        if outcome.decision.abandoned:
            raise outcome.decision.error()
        return outcome.outputs[0]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        request = self._request(texts)

        def send(_op: Generate) -> Generated:
            usage = Usage(request.prompt_tokens, estimated=request.estimated)
            return Generated(self.embeddings.embed_documents(texts), usage)

        return self._vectors(self.spender.sync.call(request, send))  # type: ignore[no-any-return]

    def embed_query(self, text: str) -> list[float]:
        request = self._request([text])

        def send(_op: Generate) -> Generated:
            return Generated(
                self.embeddings.embed_query(text), Usage(request.prompt_tokens, estimated=request.estimated)
            )

        return self._vectors(self.spender.sync.call(request, send))  # type: ignore[no-any-return]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        request = self._request(texts)

        async def send(_op: Generate) -> Generated:
            usage = Usage(request.prompt_tokens, estimated=request.estimated)
            return Generated(await self.embeddings.aembed_documents(texts), usage)

        return self._vectors(await self.spender.asynchronous.call(request, send))  # type: ignore[no-any-return]

    async def aembed_query(self, text: str) -> list[float]:
        request = self._request([text])

        async def send(_op: Generate) -> Generated:
            vector = await self.embeddings.aembed_query(text)
            return Generated(vector, Usage(request.prompt_tokens, estimated=request.estimated))

        return self._vectors(await self.spender.asynchronous.call(request, send))  # type: ignore[no-any-return]
