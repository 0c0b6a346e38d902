"""What a LlamaIndex query engine's response carries: the payer of a lazy stream, the calls that were abandoned, and
the budgeted streams it must close.

A streaming query engine (``as_query_engine(streaming=True)``) returns before its LLM has streamed: the synthesizers
read the LLM's stream, or even call the LLM, when ``response.response_gen`` is read, which a web framework does after
the request handler, and its ``clear_scope`` block, have returned. :class:`ResponseHandler`, an instrumentation event
handler that :class:`~.llm.ClearBudgetLLM` adds once to the root dispatcher, sees each query's and synthesis's start
and end events and:

- wraps the stream of a ``StreamingResponse`` / ``AsyncStreamingResponse`` so that it is read with the payer names
  (``clear_scope`` and the ``clear_tenant`` / ``clear_session`` instrumentation tags) in force when the engine
  returned it;
- collects the decisions of the calls ``ClearBudgetLLM`` abandons during a query or a synthesis, and while its
  stream is read, into the response's ``metadata["clear_abandoned"]`` (a list of the decisions' ``clear_*`` keys),
  so a caller can tell a fallback from an answer on the ``Response`` itself;
- closes the budgeted LLM streams opened for a response when its stream is closed, so what they streamed is
  committed at once (LlamaIndex's own readers iterate with ``async for``, which does not close what it reads). An
  ``AsyncStreamingResponse``'s reader (``async_response_gen()``) that is closed, or left by ``break`` and dropped,
  closes the response's stream: nobody can read the rest of it, and it would hold its
  reservation for as long as the response is kept.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from llama_index.core.base.response.schema import AsyncStreamingResponse, StreamingResponse
from llama_index.core.instrumentation.events.query import QueryEndEvent, QueryStartEvent
from llama_index.core.instrumentation.events.synthesis import SynthesizeEndEvent, SynthesizeStartEvent
from llama_index_instrumentation import get_dispatcher
from llama_index_instrumentation.base import BaseEvent
from llama_index_instrumentation.dispatcher import active_instrument_tags, instrument_tags
from llama_index_instrumentation.event_handlers import BaseEventHandler
from llama_index_instrumentation.events.span import SpanDropEvent

from ...budgeting import Decision, Names
from ...budgeting.payer import scope_names, scope_restored

__all__ = ["ResponseHandler", "install_response_handler", "record_abandoned", "record_stream"]

_PAYER_TAGS = ("clear_tenant", "clear_session")
_wrapped: weakref.WeakSet[Any] = weakref.WeakSet()
_install_lock = threading.Lock()


@dataclass(eq=False)
class _Frame:
    """One query or synthesis in progress, or one streaming response being read: the calls abandoned and the
    budgeted streams opened there; ``response`` (weakly) when its stream is being read."""

    abandoned: list[Decision] = field(default_factory=list)
    streams: list[weakref.ref[Any]] = field(default_factory=list)
    response: weakref.ref[Any] | None = None
    span: str | None = None  # the span of the query or synthesis


_log: ContextVar[tuple[_Frame, ...]] = ContextVar("clear_responses", default=())


def _note(response: Any, decisions: list[Decision]) -> None:
    if decisions and hasattr(response, "metadata"):
        noted = list((response.metadata or {}).get("clear_abandoned", []))
        response.metadata = {**(response.metadata or {}), "clear_abandoned": noted + [d.metadata() for d in decisions]}


def record_abandoned(decision: Decision) -> None:
    """Note an abandoned call for the response of the query (or synthesis, or stream being read) in progress."""
    log = _log.get()
    if log:
        log[-1].abandoned.append(decision)
        response = None if log[-1].response is None else log[-1].response()
        if response is not None:  # read from a streaming response, after it was returned: noted on it now
            _note(response, [decision])


def record_stream(stream: Any) -> None:
    """Note a budgeted LLM stream opened for the response of the query (or stream being read) in progress."""
    log = _log.get()
    if log:
        log[-1].streams.append(weakref.ref(stream))


@contextmanager
def _restored(names: Names | None, tags: dict[str, Any], frame: _Frame) -> Iterator[None]:
    token = _log.set((frame,))
    try:
        with scope_restored(names), instrument_tags(tags):
            yield
    finally:
        _log.reset(token)


def _opened(frame: _Frame) -> list[Any]:
    return [stream for ref in frame.streams if (stream := ref()) is not None]


def _pinned(
    chunks: Iterator[str], names: Names | None, tags: dict[str, Any], frame: _Frame
) -> Generator[str, None, None]:
    try:
        while True:
            with _restored(names, tags, frame):
                try:
                    chunk = next(chunks)
                except StopIteration:
                    return
            yield chunk
    finally:
        with _restored(names, tags, frame):
            for stream in (chunks, *_opened(frame)):
                getattr(stream, "close", lambda: None)()


async def _apinned(
    chunks: AsyncIterator[str], names: Names | None, tags: dict[str, Any], frame: _Frame
) -> AsyncGenerator[str, None]:
    try:
        while True:
            with _restored(names, tags, frame):
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    return
            yield chunk
    finally:
        with _restored(names, tags, frame):
            for stream in (chunks, *_opened(frame)):
                if (aclose := getattr(stream, "aclose", None)) is not None:
                    await aclose()
                elif (close := getattr(stream, "close", None)) is not None:
                    close()


async def _read_closing(response: AsyncStreamingResponse | None) -> AsyncGenerator[str, None]:
    """LlamaIndex's own reader of ``response`` (its lock, its ``response_txt``), closing the response's stream when
    it is closed (nobody can read the rest: it would hold its reservation for as long as the response is kept)."""
    if response is None:  # the method outlived its response: nothing left to read
        return
    own = getattr(AsyncStreamingResponse, "_yield_response", AsyncStreamingResponse.async_response_gen)
    inner: AsyncGenerator[str, None] = own(response)
    try:
        async for text in inner:
            yield text
    finally:
        await inner.aclose()
        if isinstance(stream := response.response_gen, AsyncGenerator):
            await stream.aclose()


def _closing_reader(ref: weakref.ref[AsyncStreamingResponse]) -> Callable[[], AsyncGenerator[str, None]]:
    """``async_response_gen`` for the response ``ref`` points to: set on the response, it holds it weakly (no
    cycle); each reader it makes holds it (a reader may outlive every other reference to its response)."""

    def async_response_gen() -> AsyncGenerator[str, None]:
        return _read_closing(ref())

    return async_response_gen


class ResponseHandler(BaseEventHandler):
    """Pins the payer of lazy response streams, records abandoned calls on responses and closes their budgeted
    streams with them (module docstring)."""

    @classmethod
    def class_name(cls) -> str:
        return "ClearResponseHandler"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        if isinstance(event, QueryStartEvent | SynthesizeStartEvent):
            _log.set((*_log.get(), _Frame(span=event.span_id)))
        elif isinstance(event, QueryEndEvent | SynthesizeEndEvent):
            frame = self._pop(event.span_id, ended=True) or _Frame()
            if log := _log.get():
                log[-1].abandoned.extend(frame.abandoned)
                log[-1].streams.extend(frame.streams)
            self._finish(event.response, frame)
        elif isinstance(event, SpanDropEvent):  # a query or synthesis that raised has no end event: its frame goes
            self._pop(event.span_id, ended=False)

    @staticmethod
    def _pop(span: str | None, *, ended: bool) -> _Frame | None:
        """Take the frame of ``span`` off the stack, with the frames above it (left by queries that raised); an end
        event with no frame of its span takes the top one."""
        log = _log.get()
        at = next((i for i in range(len(log) - 1, -1, -1) if log[i].span == span), None)
        if at is None and ended and log:
            at = len(log) - 1
        if at is None:
            return None
        _log.set(log[:at])
        return log[at]

    @staticmethod
    def _finish(response: Any, frame: _Frame) -> None:
        if frame.abandoned and hasattr(response, "metadata"):
            metadata = {key: value for key, value in (response.metadata or {}).items() if key != "clear_abandoned"}
            response.metadata = {**metadata, "clear_abandoned": [d.metadata() for d in frame.abandoned]}
        if not isinstance(response, StreamingResponse | AsyncStreamingResponse):
            return
        chunks = response.response_gen
        if chunks is None or chunks in _wrapped:
            return
        names, tags = scope_names(), dict(active_instrument_tags.get())
        reading = _Frame(streams=list(frame.streams), response=weakref.ref(response))
        if isinstance(response, StreamingResponse) and isinstance(chunks, Generator):
            response.response_gen = _pinned(chunks, names, tags, reading)
        elif isinstance(response, AsyncStreamingResponse) and isinstance(chunks, AsyncGenerator):
            response.response_gen = _apinned(chunks, names, tags, reading)
            response.async_response_gen = _closing_reader(weakref.ref(response))  # type: ignore[method-assign]
        else:
            return
        _wrapped.add(response.response_gen)


_handler = ResponseHandler()


def install_response_handler() -> None:
    """Add the :class:`ResponseHandler` to the root dispatcher (once per process)."""
    dispatcher = get_dispatcher()
    with _install_lock:
        if not any(handler is _handler for handler in dispatcher.event_handlers):
            dispatcher.add_event_handler(_handler)
