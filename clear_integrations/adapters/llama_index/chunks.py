"""Reading the wrapped LLM's streams for ``ClearBudgetLLM``: each chunk's new text and the usage reported so far
(:class:`Reader`, for the :class:`~clear_integrations.budgeting.StreamMeter`), and the chunks read under the budget
tags with the decision on each (:func:`tagged`, :func:`atagged`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from llama_index.core.base.llms.types import ChatResponse, CompletionResponse

from ...budgeting import Decision, Payer
from ...ledger import Usage
from .scope import budget_tags
from .usage import reported_usage, response_text

__all__ = ["Reader", "atagged", "tagged"]

Response = ChatResponse | CompletionResponse


class Reader:
    """Reads a stream's responses: the new text (``delta``, or the part of the cumulative text not seen yet; tool
    calls count too) and the usage the provider reported so far (LlamaIndex responses carry it whole)."""

    def __init__(self) -> None:
        self.text = ""

    def __call__(self, chunk: Response) -> tuple[str, Usage | None]:
        delta = chunk.delta
        if delta is None:
            whole = response_text(chunk)
            delta = whole[len(self.text) :] if whole.startswith(self.text) else whole
        self.text += delta
        return delta, reported_usage(chunk)


def tagged(chunks: Iterator[Response], payer: Payer, decision: Decision) -> Iterator[Response]:
    """The wrapped LLM's stream, read with the budget tags (its events are the wrapper's), the decision on each."""
    try:
        while True:
            with budget_tags(payer, decision):
                chunk = next(chunks, None)
            if chunk is None:
                return
            chunk.additional_kwargs = {**chunk.additional_kwargs, **decision.metadata()}
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            with budget_tags(payer, decision):
                close()


async def atagged(chunks: AsyncIterator[Response], payer: Payer, decision: Decision) -> AsyncIterator[Response]:
    try:
        while True:
            with budget_tags(payer, decision):
                chunk = await anext(chunks, None)
            if chunk is None:
                return
            chunk.additional_kwargs = {**chunk.additional_kwargs, **decision.metadata()}
            yield chunk
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            with budget_tags(payer, decision):
                await aclose()
