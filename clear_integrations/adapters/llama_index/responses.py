"""What a LlamaIndex query engine's response carries: the payer of a lazy stream, and the calls that were abandoned.

A streaming query engine (``as_query_engine(streaming=True)``) returns before its LLM is called: the refine and
tree-summarize synthesizers call it when ``response.response_gen`` is read, which a web framework does after the
request handler, and its ``clear_scope`` block, have returned. :class:`ResponseHandler`, an instrumentation event
handler that :class:`~.llm.ClearBudgetLLM` adds once to the root dispatcher, sees each query's and synthesis's end
event and wraps the stream of a ``StreamingResponse`` / ``AsyncStreamingResponse`` so that it is read with the
payer names (``clear_scope`` and the ``clear_tenant`` / ``clear_session`` instrumentation tags) in force when the
engine returned it.

It also collects the decisions of the calls ``ClearBudgetLLM`` abandons during a query or a synthesis and puts them
in the response's ``metadata["clear_abandoned"]`` (a list of the decisions' ``clear_*`` keys), so a caller can tell
a fallback from an answer on the ``Response`` itself (a stream's calls happen after the response is returned: their
fallback is in the text and in each call's ``additional_kwargs``).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from llama_index.core.base.response.schema import AsyncStreamingResponse, StreamingResponse
from llama_index.core.instrumentation.events.query import QueryEndEvent, QueryStartEvent
from llama_index.core.instrumentation.events.synthesis import SynthesizeEndEvent, SynthesizeStartEvent
from llama_index_instrumentation import get_dispatcher
from llama_index_instrumentation.base import BaseEvent
from llama_index_instrumentation.dispatcher import active_instrument_tags, instrument_tags
from llama_index_instrumentation.event_handlers import BaseEventHandler

from ...budgeting import Decision, Names
from ...budgeting.payer import scope_names, scope_restored

__all__ = ["ResponseHandler", "install_response_handler", "record_abandoned"]

_log: ContextVar[tuple[list[Decision], ...]] = ContextVar("clear_abandoned", default=())
_wrapped: weakref.WeakSet[Any] = weakref.WeakSet()
_install_lock = threading.Lock()
_PAYER_TAGS = ("clear_tenant", "clear_session")


def record_abandoned(decision: Decision) -> None:
    """Note an abandoned call for the response of the query (or synthesis) in progress, if any."""
    log = _log.get()
    if log:
        log[-1].append(decision)


@contextmanager
def _restored(names: Names | None, tags: dict[str, Any]) -> Iterator[None]:
    with scope_restored(names), instrument_tags(tags):
        yield


def _pinned(chunks: Iterator[str], names: Names | None, tags: dict[str, Any]) -> Generator[str, None, None]:
    try:
        while True:
            with _restored(names, tags):
                try:
                    chunk = next(chunks)
                except StopIteration:
                    return
            yield chunk
    finally:
        with _restored(names, tags):
            getattr(chunks, "close", lambda: None)()


async def _apinned(
    chunks: AsyncIterator[str], names: Names | None, tags: dict[str, Any]
) -> AsyncGenerator[str, None]:
    try:
        while True:
            with _restored(names, tags):
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    return
            yield chunk
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            with _restored(names, tags):
                await aclose()


class ResponseHandler(BaseEventHandler):
    """Pins the payer of lazy response streams and records abandoned calls on responses (module docstring)."""

    @classmethod
    def class_name(cls) -> str:
        return "ClearResponseHandler"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        if isinstance(event, QueryStartEvent | SynthesizeStartEvent):
            _log.set((*_log.get(), []))
        elif isinstance(event, QueryEndEvent | SynthesizeEndEvent):
            log = _log.get()
            decisions = log[-1] if log else []
            _log.set(log[:-1])
            if len(log) > 1:
                log[-2].extend(decisions)
            self._finish(event.response, decisions)

    @staticmethod
    def _finish(response: Any, decisions: list[Decision]) -> None:
        if decisions and hasattr(response, "metadata"):
            response.metadata = {**(response.metadata or {}), "clear_abandoned": [d.metadata() for d in decisions]}
        if not isinstance(response, StreamingResponse | AsyncStreamingResponse):
            return
        chunks = response.response_gen
        names, tags = scope_names(), dict(active_instrument_tags.get())
        pinned = {key: tags[key] for key in _PAYER_TAGS if key in tags}
        if chunks is None or chunks in _wrapped or (names is None and not pinned):
            return
        if isinstance(response, StreamingResponse) and isinstance(chunks, Generator):
            response.response_gen = _pinned(chunks, names, tags)
        elif isinstance(response, AsyncStreamingResponse) and isinstance(chunks, AsyncGenerator):
            response.response_gen = _apinned(chunks, names, tags)
        _wrapped.add(response.response_gen)


_handler = ResponseHandler()


def install_response_handler() -> None:
    """Add the :class:`ResponseHandler` to the root dispatcher (once per process)."""
    dispatcher = get_dispatcher()
    with _install_lock:
        if not any(handler is _handler for handler in dispatcher.event_handlers):
            dispatcher.add_event_handler(_handler)
