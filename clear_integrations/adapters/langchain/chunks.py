"""The chunks of a budgeted chat model's stream: what a chunk brings (text, tool-call arguments, usage), a whole answer
as one chunk (a model that does not stream), the decision on the first chunk (chunks merge their metadata), and a
closing chunk with the usage charged when the provider reported none; and the ``clear_*`` metadata of an answer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk

from ...budgeting import Decision, StreamMeter
from ...ledger import Usage
from .usage import usage_of_mapping

__all__ = ["Reader", "as_chunk", "atagged", "charged", "chunks_of", "finish_reason", "tagged", "usage_metadata"]

_CUT = ("length", "max_tokens", "MAX_TOKENS")


def finish_reason(message: BaseMessage, info: Mapping[str, Any] | None = None) -> str | None:
    """Why an answer ended (``"length"``: at its cap, in any provider's spelling), from its metadata or a chunk's
    ``generation_info``."""
    found = {**(info or {}), **message.response_metadata}
    reason = found.get("finish_reason") or found.get("stop_reason") or found.get("done_reason")
    return "length" if reason in _CUT else reason


def usage_metadata(usage: Usage) -> dict[str, Any]:
    """``usage`` as LangChain's ``UsageMetadata``."""
    found: dict[str, Any] = {
        "input_tokens": usage.prompt,
        "output_tokens": usage.completion,
        "total_tokens": usage.total,
    }
    if usage.reasoning:
        found["output_token_details"] = {"reasoning": usage.reasoning}
    return found


def charged(decision: Decision, usage: Usage) -> dict[str, Any]:
    """The ``response_metadata`` keys of a budgeted answer: the decision (``clear_*``) and ``clear_usage``, what was
    charged."""
    return {
        **decision.metadata(),
        "clear_usage": {
            "prompt": usage.prompt,
            "completion": usage.completion,
            "reasoning": usage.reasoning,
            "estimated": usage.estimated,
        },
    }


class Reader:
    """Reads a stream's chunks: the new text (tool-call arguments included) and the usage reported so far (chunks
    carry parts of it that add up). It also keeps the stream's meter (``meter`` makes it, from ``make``), so that a
    stream whose provider reported no usage can end with a :meth:`closing` chunk: what was charged."""

    def __init__(self, make: Callable[[Decision], StreamMeter], name: str | None = None) -> None:
        self.usage: Usage | None = None
        self.name, self.named = name, False
        self._make = make
        self._metered: tuple[Decision, StreamMeter] | None = None
        self.finish: str | None = None
        self.called = False  # a tool call began

    @property
    def decision(self) -> Decision | None:
        """The decision of the stream, once it was granted."""
        return None if self._metered is None else self._metered[0]

    def meter(self, decision: Decision) -> StreamMeter:
        meter = self._make(decision)
        self._metered = (decision, meter)
        return meter

    def __call__(self, chunk: ChatGenerationChunk) -> tuple[str, Usage | None]:
        message = chunk.message
        part = usage_of_mapping(getattr(message, "usage_metadata", None))
        if part is not None:
            self.usage = part if self.usage is None else self.usage + part
        self.named = self.named or "model_name" in message.response_metadata
        self.finish = finish_reason(message, chunk.generation_info) or self.finish
        calls = getattr(message, "tool_call_chunks", None) or []
        self.called = self.called or any(c.get("name") for c in calls)
        text = message.text + "".join(str(c.get("name") or "") + str(c.get("args") or "") for c in calls)
        return text, self.usage

    def cut_short(self) -> bool:
        """The stream stopped at its cap with no tool call: the provider said so, or it never said why and the meter
        stopped it there."""
        if self._metered is None or self.called:
            return False
        return self.finish == "length" or (self.finish is None and self._metered[1].reached)

    def closing(self) -> ChatGenerationChunk | None:
        """After a stream that delivered chunks but no usage (a provider silent about usage, or one cut at its cap
        before its report): a last, empty chunk with the usage charged, so that LangChain's callbacks and the merged
        message see what the ledger has (``model_name`` too, unless a chunk had it: chunks merge strings by
        concatenation). None otherwise."""
        if self._metered is None or self.usage is not None or not self._metered[1].delivered:
            return None
        decision, meter = self._metered
        usage = meter.usage(decision.prompt_tokens, decision.prompt_estimated)
        metadata: dict[str, Any] = {"clear_usage": charged(decision, usage)["clear_usage"]}
        if self.name and not self.named:
            metadata["model_name"] = self.name
        message = AIMessageChunk(content="", usage_metadata=usage_metadata(usage), response_metadata=metadata)
        return ChatGenerationChunk(message=message)


def as_chunk(generation: ChatGeneration) -> ChatGenerationChunk:
    message = generation.message
    chunk = AIMessageChunk(
        content=message.content,
        additional_kwargs=message.additional_kwargs,
        response_metadata=message.response_metadata,
        id=message.id,
        usage_metadata=getattr(message, "usage_metadata", None),
        tool_call_chunks=[
            {"name": c["name"], "args": str(c["args"]), "id": c.get("id"), "index": i}
            for i, c in enumerate(getattr(message, "tool_calls", []))
        ],
    )
    return ChatGenerationChunk(message=chunk, generation_info=generation.generation_info)


def _tag(chunk: ChatGenerationChunk, decision: Decision) -> ChatGenerationChunk:
    chunk.message.response_metadata = {**chunk.message.response_metadata, **decision.metadata()}
    return chunk


def tagged(chunks: Iterator[ChatGenerationChunk], decision: Decision) -> Iterator[ChatGenerationChunk]:
    """The chunks, the first one carrying the decision (chunks merge their metadata, so it appears once)."""
    first = True
    try:
        for chunk in chunks:
            yield _tag(chunk, decision) if first else chunk
            first = False
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


async def atagged(chunks: AsyncIterator[ChatGenerationChunk], decision: Decision) -> AsyncIterator[Any]:
    first = True
    try:
        async for chunk in chunks:
            yield _tag(chunk, decision) if first else chunk
            first = False
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


async def chunks_of(items: list[ChatGenerationChunk]) -> AsyncIterator[ChatGenerationChunk]:
    for item in items:
        yield item
