"""Structured prediction under a budget: an abandoned call raises instead of answering with a fallback text.

A fallback text is not the schema asked for: handed to LlamaIndex's output parsers (``FunctionCallingProgram``
expects a tool call, ``LLMTextCompletionProgram`` parses JSON) it fails with a parsing error that hides why. So
while ``ClearBudgetLLM.structured_predict`` / ``astructured_predict`` / ``stream_structured_predict`` /
``astream_structured_predict`` run (and what calls them: ``as_structured_llm``, ``FunctionAgent(output_cls=...)``,
query engines with ``output_cls``), an abandoned call raises
:class:`~clear_integrations.errors.QueryAbandoned` whatever ``on_abandon`` says, as the LangChain adapter does for
``with_structured_output``. :func:`strictly` marks such a block (a ``ContextVar``: it follows the program's awaits
and the tasks it starts); :func:`strict_stream` / :func:`astrict_stream` keep a structured stream strict while it is
read.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

__all__ = ["astrict_stream", "is_strict", "strict_stream", "strictly"]

T = TypeVar("T")
_strict: ContextVar[bool] = ContextVar("clear_strict_structured", default=False)


def is_strict() -> bool:
    """Whether the call being made belongs to a structured prediction (an abandoned call then raises)."""
    return _strict.get()


@contextmanager
def strictly() -> Iterator[None]:
    """Mark the calls made in this block as structured prediction's."""
    token = _strict.set(True)
    try:
        yield
    finally:
        _strict.reset(token)


def strict_stream(parts: Iterator[T]) -> Generator[T, None, None]:
    """``parts``, each read :func:`strictly` (a stream makes its calls while it is read, maybe elsewhere)."""
    try:
        while True:
            with strictly():
                try:
                    part = next(parts)
                except StopIteration:
                    return
            yield part
    finally:
        close = getattr(parts, "close", None)
        if close is not None:
            close()


async def astrict_stream(parts: AsyncIterator[T]) -> AsyncGenerator[T, None]:
    """The async twin of :func:`strict_stream`."""
    try:
        while True:
            with strictly():
                try:
                    part = await anext(parts)
                except StopAsyncIteration:
                    return
            yield part
    finally:
        aclose = getattr(parts, "aclose", None)
        if aclose is not None:
            await aclose()
