"""``ClearEventHandler``: token accounting of any LlamaIndex app on the ledger, from the instrumentation events.

```python
with ClearEventHandler.install(ledger, tenant="acme"):      # on the root dispatcher for the block, then removed
    with instrument_tags({"clear_tenant": "globex"}):    # llama_index_instrumentation.dispatcher: this task pays
        await agent.run("...")
ledger.usage("globex")                                 # prompt, completion, reasoning, calls, estimated_calls
```

Or ``handler = ClearEventHandler(ledger, tenant="acme").attach()`` and ``handler.detach()``: ``attach`` adds this event
handler and its span handler (which tracks the span tree) to the dispatcher, ``detach`` removes both by identity.

* **Payer** (at the call's start, as ``ClearBudgetLLM`` resolves it: :func:`.scope.current_payer`): the tags
  ``clear_tenant`` / ``clear_session``, else ``clear_scope`` (ContextVars: they follow tasks and workflow steps), else
  ``tenant`` / ``session``.
* **One user call, one commit.** LlamaIndex nests LLM events within one call (``CustomLLM.chat`` -> ``complete``,
  ``achat`` -> ``chat`` -> ``complete``, ``astream_chat``'s generator -> ``stream_chat``, wrapper LLMs -> their inner
  LLM). Calls are keyed by their start event's ``span_id`` (one span per LLM method call). A call is nested in an open
  call (1) whose span is an ancestor of its own: the span handler keeps each open span's parent id (dropped when the
  span ends), which follows the ``active_span_id`` ContextVar into coroutines, tasks and ``asyncio.to_thread``; else
  (2) from whose stream it is started: the generator that call's span returned (held weakly) is running, with its
  frame on this thread's stack. A stream merely held open while another call starts is no ancestor, so that call
  counts. Not seen as nested: a call in a thread that does not copy the context (``run_in_executor``, a bare
  ``Thread``), or in a task started after its caller's span ended. Only outermost calls commit: their own usage or, if
  more, their nested calls' (each counted alike), so a report passed up a chain counts once and sibling calls add up.
* **Usage** is the provider's (streams: the latest a chunk reported): ``raw["usage"]`` / ``raw.usage`` (OpenAI, with
  ``completion_tokens_details.reasoning_tokens``; Anthropic, cache reads and writes counted as prompt),
  ``raw["usage_metadata"]`` (Gemini), Ollama's ``prompt_eval_count`` / ``eval_count``, flat ``additional_kwargs``
  (llama-index-llms-openai), ``message.additional_kwargs["usage"]`` (Anthropic streams). Else (MockLLM, OpenAI streams
  without ``stream_options={"include_usage": True}``) an offline :func:`~clear_integrations.tokens.count_tokens`
  (``estimated=True``) of the messages or prompt (tool schemas and calls included) and of the response: its text (a
  stream's joined deltas if longer, counted as one text, never delta by delta) and each tool call's name and
  arguments (``ToolCallBlock``s, else ``additional_kwargs["tool_calls"]``, of the final message).
* **Embeddings**: each ``EmbeddingEndEvent`` / ``SparseEmbeddingEndEvent`` is one call, charged to its start event's
  payer as prompt tokens (completion 0): its ``chunks`` counted offline with the start event's
  ``model_dict["model_name"]``, estimated unless the counts are exact (OpenAI models).
* **Streams** commit at their end event. A consumer that stops early closes the generator (explicitly, by garbage
  collection, or by asyncio's async-generator finaliser); LlamaIndex then sends an ``ExceptionEvent`` and what was
  streamed is committed (nothing if no chunk was read). A call with no event (its own or its nested calls') for
  ``stale_after`` seconds (checked at each new call), and every open call at :meth:`close` / :meth:`detach` / the end
  of :meth:`install`, is settled: committed as seen if output had arrived (its later events are ignored), else
  dropped (a stream never read; but also a call still running: a non-streamed call longer than ``stale_after`` is
  lost). A call that raises (``SpanDropEvent``) is not charged, nor counted in its outermost call if nested.
* **Committing** (no reservation before the call): :meth:`~clear_integrations.ledger.Ledger.charge` records the
  usage in full, past a hard limit too (as overage). When the ledger cannot be reached, the usage is kept
  (:meth:`unbilled`, ``ClearWarning``) and retried after each later call and by :meth:`flush`. One lock guards the
  state; ledger calls run outside it.

**Observation only**: the dispatcher swallows whatever a handler raises, so this handler cannot cap, refuse or stop a
call; enforcement needs the ``ClearBudgetLLM`` wrapper. Not to count the same calls twice, calls whose start event
carries the tag :data:`BUDGETED_TAG` (``"clear_budgeted": True``, set by the wrapper around its inner calls) or whose
model class is ``ClearBudgetLLM`` are skipped, with every call nested in them.
"""

from __future__ import annotations

import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Self

from llama_index.core.instrumentation.events import embedding as em
from llama_index.core.instrumentation.events import llm as ev
from llama_index.core.instrumentation.events.exception import ExceptionEvent
from llama_index_instrumentation import get_dispatcher
from llama_index_instrumentation.base import BaseEvent
from llama_index_instrumentation.dispatcher import Dispatcher
from llama_index_instrumentation.event_handlers import BaseEventHandler
from llama_index_instrumentation.events.span import SpanDropEvent
from pydantic import PrivateAttr

from ...errors import BudgetExceeded, ClearError, ClearWarning, LedgerUnavailable
from ...ledger import DEFAULT_LEASE, Ledger, Usage
from ...tokens import count_tokens
from .scope import BUDGETED_TAG, Payer, current_payer
from .spans import SpanTree, TrackedCall, completion_text, prompt_text
from .usage import reported_counts

__all__ = ["BUDGETED_TAG", "ClearEventHandler"]

_STARTS = (ev.LLMChatStartEvent, ev.LLMCompletionStartEvent)
_PROGRESS = (ev.LLMChatInProgressEvent, ev.LLMCompletionInProgressEvent)
_ENDS = (ev.LLMChatEndEvent, ev.LLMCompletionEndEvent)


def _embedding_events(*names: str) -> tuple[type[BaseEvent], ...]:
    """The classes of ``llama_index.core.instrumentation.events.embedding`` that the installed version has."""
    return tuple(getattr(em, name) for name in names if hasattr(em, name))


_EMBED_STARTS = _embedding_events("EmbeddingStartEvent", "SparseEmbeddingStartEvent")
_EMBED_ENDS = _embedding_events("EmbeddingEndEvent", "SparseEmbeddingEndEvent")


class ClearEventHandler(BaseEventHandler):
    """Accounts every outermost LLM call and every embedding call LlamaIndex instruments on ``ledger`` (the rules:
    module docstring).

    Args:
        ledger: a synchronous :class:`~clear_integrations.ledger.Ledger`.
        tenant, session: who pays by default (``tenant/session`` when ``session`` is set).
        lease: seconds the short accounting reservation may be held.
        stale_after: seconds without an event after which an open call is settled (a stream nobody reads any
            more is committed as seen so far; a call with no output is dropped); ``None``: only :meth:`close` does.
        clock: monotonic seconds for ``stale_after`` (default :func:`time.monotonic`).
    """

    ledger: Ledger
    tenant: str
    session: str | None = None
    lease: float = DEFAULT_LEASE
    stale_after: float | None = 600.0

    _clock: Callable[[], float] = PrivateAttr(default=time.monotonic)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _spans: SpanTree = PrivateAttr(default_factory=SpanTree)
    _calls: dict[str | None, TrackedCall] = PrivateAttr(default_factory=dict)  # open outermost calls by span id
    _nested: dict[str | None, TrackedCall] = PrivateAttr(default_factory=dict)  # their nested calls by span id
    # embedding calls started, by span id: (payer, model); payer None for a budgeted model (it charges itself)
    _embeds: dict[str | None, list[tuple[str | None, str | None]]] = PrivateAttr(default_factory=dict)
    _unbilled: list[tuple[str, Usage]] = PrivateAttr(default_factory=list)

    def __init__(
        self, ledger: Ledger, *, tenant: str, session: str | None = None, lease: float = DEFAULT_LEASE,
        stale_after: float | None = 600.0, clock: Callable[[], float] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(ledger=ledger, tenant=tenant, session=session, lease=lease, stale_after=stale_after)
        self._clock = clock or time.monotonic
        self._spans._returned_stream = self._returned_stream
        Payer(tenant, session).checked()

    @classmethod
    def class_name(cls) -> str:
        return "ClearEventHandler"

    def attach(self, dispatcher: Dispatcher | None = None) -> Self:
        """Add both handlers to ``dispatcher`` (default: the root one, which sees everything); idempotent."""
        target = get_dispatcher() if dispatcher is None else dispatcher
        if not any(handler is self._spans for handler in target.span_handlers):
            target.add_span_handler(self._spans)
        if not any(handler is self for handler in target.event_handlers):
            target.add_event_handler(self)
        return self

    def detach(self, dispatcher: Dispatcher | None = None) -> None:
        """Remove both handlers from ``dispatcher`` (by identity), then settle the open calls (:meth:`close`)."""
        target = get_dispatcher() if dispatcher is None else dispatcher
        target.event_handlers[:] = [handler for handler in target.event_handlers if handler is not self]
        target.span_handlers[:] = [handler for handler in target.span_handlers if handler is not self._spans]
        self._spans.forget()
        self.close()

    @classmethod
    @contextmanager
    def install(
        cls, ledger: Ledger, *, tenant: str, session: str | None = None, dispatcher: Dispatcher | None = None,
        **options: Any,
    ) -> Iterator[ClearEventHandler]:  # fmt: skip
        """A handler attached for the ``with`` block, detached after it (even on error); ``options``: ``__init__``'s."""
        handler = cls(ledger, tenant=tenant, session=session, **options).attach(dispatcher)
        try:
            yield handler
        finally:
            handler.detach(dispatcher)

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        """Track LLM start / in-progress / end events, the exceptions that end calls, and embedding calls."""
        sid = event.span_id
        if isinstance(event, _STARTS):
            self._start(event, sid)
        elif isinstance(event, _PROGRESS + _ENDS):
            self._progress(sid, event.response, final=isinstance(event, _ENDS))
        elif isinstance(event, _EMBED_STARTS):
            self._embed_start(event, sid)
        elif isinstance(event, _EMBED_ENDS):
            self._embed_end(sid, getattr(event, "chunks", None) or [])
        elif isinstance(event, ExceptionEvent | SpanDropEvent):  # a stream stopped early / a call that raised
            self._stop(sid, raised=isinstance(event, SpanDropEvent))

    def _start(self, event: ev.LLMChatStartEvent | ev.LLMCompletionStartEvent, sid: str | None) -> None:
        now = self._clock()
        if (limit := self.stale_after) is not None:
            self._drain(lambda call: now - call.touched > limit)
        info, tags = event.model_dict, event.tags
        skip = tags.get(BUDGETED_TAG) is True or info.get("class_name") == "ClearBudgetLLM"
        model = info.get("model") or info.get("model_name")
        prompt = event.messages if isinstance(event, ev.LLMChatStartEvent) else event.prompt
        payer = current_payer(Payer(self.tenant, self.session))
        call = TrackedCall(sid, payer.scope, model if isinstance(model, str) else None, prompt,
                     event.additional_kwargs.get("tools"), now, skip)  # fmt: skip
        with self._lock:
            if sid in self._calls or sid in self._nested:
                return
            call.parent = self._enclosing(sid)
            if call.parent is None:
                self._calls[sid] = call
            else:
                self._nested[sid] = call
                call.parent.kids.append(call)
                call.parent.root.touched = now

    def _enclosing(self, sid: str | None) -> TrackedCall | None:
        """The open call a call starting in span ``sid`` is nested in (lock held): one whose span is an ancestor of
        ``sid``, else one whose stream's generator is running on this thread's stack."""
        for span in self._spans.ancestors(sid):
            if (call := self._calls.get(span) or self._nested.get(span)) is not None:
                return call
        running = {frame: call for call in (*self._calls.values(), *self._nested.values())
                   if (frame := call.running_frame()) is not None}  # fmt: skip
        frame = sys._getframe(1) if running else None
        while frame is not None and frame not in running:
            frame = frame.f_back
        return None if frame is None else running[frame]

    def _returned_stream(self, sid: str, stream: Any) -> None:
        """The span handler saw span ``sid`` return a generator: if it is a call's, remember it (weakly)."""
        with self._lock:
            if (call := self._calls.get(sid) or self._nested.get(sid)) is not None:
                call.stream = weakref.ref(stream)

    def _progress(self, sid: str | None, response: Any, *, final: bool) -> None:
        reported = None if response is None else reported_counts(response)
        delta = None if final or response is None else response.delta
        with self._lock:
            call = self._calls.get(sid) or self._nested.get(sid)
            if call is None:  # not tracked (e.g. already settled)
                return
            call.root.touched = self._clock()
            call.reported = reported or call.reported
            if call.parent is not None:  # a nested call: only its usage counts, with its outermost call's
                return
            call.last = call.last if response is None else response
            if delta:
                call.deltas.append(delta)
            if final:
                self._pop(call)
        if final:
            self._settle(call)

    def _stop(self, sid: str | None, *, raised: bool) -> None:
        """A stream stopped early (committed as seen) or a call raised (not charged, nor its nested calls)."""
        with self._lock:
            if raised:
                self._embeds.pop(sid, None)
            call = self._calls.get(sid) or (self._nested.get(sid) if raised else None)
            if call is not None:
                self._pop(call)
        if call is not None and call.parent is None and call.seen and not raised:
            self._settle(call)

    def _pop(self, call: TrackedCall) -> None:
        """Forget a call and the calls nested in it; a nested call is detached from its parent (lock held)."""
        if call.parent is not None:
            call.parent.kids.remove(call)
        stack = [call]
        while stack:
            node = stack.pop()
            stack.extend(node.kids)
            found = self._calls if node.parent is None else self._nested
            if found.get(node.sid) is node:
                del found[node.sid]

    def _drain(self, which: Callable[[TrackedCall], bool]) -> None:
        """Remove the open calls ``which`` selects: commit those with output, drop those without (nothing seen)."""
        with self._lock:
            calls = [call for call in self._calls.values() if which(call)]
            for call in calls:
                self._pop(call)
        for call in calls:
            if call.seen:
                self._settle(call)

    def _settle(self, call: TrackedCall) -> None:
        """Commit the call's usage: the provider's if reported (own or nested), else an offline estimate."""
        if call.skip:
            return
        best = call.usage()
        if best is not None and best[0] is not None:
            usage = Usage(best[0], best[1], best[2])
        else:
            prompt = count_tokens(prompt_text(call), model=call.model).tokens
            text = completion_text(call)
            completion = (count_tokens(text, model=call.model).tokens if text else 0) if best is None else best[1]
            usage = Usage(prompt, completion, 0 if best is None else best[2], estimated=True)
        self._record(call.scope, usage)

    def _embed_start(self, event: BaseEvent, sid: str | None) -> None:
        info = getattr(event, "model_dict", {})
        model = info.get("model_name")
        budgeted = info.get("class_name") == "ClearBudgetEmbedding"  # it charges its own calls
        scope = None if budgeted else current_payer(Payer(self.tenant, self.session)).scope
        with self._lock:
            self._embeds.setdefault(sid, []).append((scope, model if isinstance(model, str) else None))

    def _embed_end(self, sid: str | None, chunks: list[str]) -> None:
        """One embedding call: its chunks' offline counts as prompt tokens, to the payer of its start event."""
        with self._lock:
            pending = self._embeds.get(sid)
            scope, model = pending.pop(0) if pending else (current_payer(Payer(self.tenant, self.session)).scope, None)
            if not pending:
                self._embeds.pop(sid, None)
        counts = [count_tokens(chunk, model=model) for chunk in chunks if isinstance(chunk, str)]
        if counts and scope is not None:
            self._record(scope, Usage(sum(c.tokens for c in counts), estimated=any(c.estimated for c in counts)))

    def _record(self, scope: str, usage: Usage, *, retry: bool = False) -> bool:
        """Charge ``usage`` in full (then retry the unbilled usage); when the ledger is unreachable keep it unbilled
        (and warn, unless retrying)."""
        try:
            self.ledger.charge(scope, usage, lease=self.lease)
        except ClearError as error:
            keep = isinstance(error, BudgetExceeded | LedgerUnavailable)
            if keep:
                with self._lock:
                    self._unbilled.append((scope, usage))
            if not (keep and retry):
                fate = "kept unbilled (see flush())" if keep else "not recorded"
                warnings.warn(f"ClearEventHandler: {usage.total} tokens of {scope!r} {fate}: {error}", ClearWarning, 4)
            return False
        if not retry and self._unbilled:
            self.flush()
        return True

    def flush(self) -> int:
        """Try again to record the unbilled usage (e.g. after a budget was raised); returns how many calls remain."""
        with self._lock:
            queue, self._unbilled = self._unbilled, []
        for scope, usage in queue:
            self._record(scope, usage, retry=True)
        with self._lock:
            return len(self._unbilled)

    def unbilled(self) -> list[tuple[str, Usage]]:
        """The ``(scope, usage)`` the ledger has refused to record so far."""
        with self._lock:
            return list(self._unbilled)

    @property
    def open_calls(self) -> int:
        """Outermost calls started and not settled yet (in flight, or streams still being read)."""
        with self._lock:
            return len(self._calls)

    def close(self) -> None:
        """Settle every open call: a stream begun is committed with what it streamed; a call with no output yet (a
        stream never read, or a call still in flight, whose end this handler will not see) is dropped."""
        with self._lock:
            self._embeds.clear()
        self._drain(lambda _: True)
