"""``ClearEventHandler``: token accounting of any LlamaIndex app on the ledger, from the instrumentation events.

```python
with ClearEventHandler.install(ledger, tenant="acme"):      # on the root dispatcher for the block, then removed
    with instrument_tags({"clear_tenant": "globex"}):    # llama_index_instrumentation.dispatcher: this task pays
        await agent.run("...")
ledger.usage("globex")                                 # prompt, completion, reasoning, calls, estimated_calls
```

Or ``handler = ClearEventHandler(ledger, tenant="acme").attach()`` (``get_dispatcher().add_event_handler``) and
``handler.detach()``, which removes it by identity from the dispatcher's plain list ``event_handlers``.

* **Payer** (at the call's start, as ``ClearBudgetLLM`` resolves it: :func:`.scope.current_payer`): ``clear_scope``,
  else the tags ``clear_tenant`` / ``clear_session`` (ContextVars: they follow tasks and workflow steps), else
  ``tenant`` / ``session``.
* **One user call, one commit.** LlamaIndex nests LLM events within one call (``CustomLLM.chat`` -> ``complete``,
  ``achat`` -> ``chat``, ``astream_chat``'s generator -> ``stream_chat``, wrapper LLMs -> their inner LLM). A start
  event is nested when the callback wrapper of another open call (it keeps the call's ``span_id`` in a local) is on
  the Python stack dispatching it: inside that call's function or stream generator. A stream merely held open while
  another call starts is no ancestor, so that call counts. Only outermost calls commit, with the usage their nested
  calls reported if it exceeds their own. Calls are keyed by ``span_id`` (one span per LLM method call). Not seen as
  nested: an inner call run in another thread.
* **Usage** is the provider's (streams: the latest a chunk reported): ``raw["usage"]`` / ``raw.usage`` (OpenAI, with
  ``completion_tokens_details.reasoning_tokens``; Anthropic, cache reads and writes counted as prompt),
  ``raw["usage_metadata"]`` (Gemini), Ollama's ``prompt_eval_count`` / ``eval_count``, flat ``additional_kwargs``
  (llama-index-llms-openai), ``message.additional_kwargs["usage"]`` (Anthropic streams). Else (MockLLM, OpenAI streams
  without ``stream_options={"include_usage": True}``) an offline :func:`~clear_integrations.tokens.count_tokens` of the
  messages or prompt (tool schemas included) and of the response text or joined deltas, with ``estimated=True``.
* **Streams** commit at their end event. A consumer that stops early closes the generator (explicitly, by garbage
  collection, or by asyncio's async-generator finaliser); LlamaIndex then sends an ``ExceptionEvent`` and what was
  streamed is committed (nothing if no chunk was read: it generated nothing). A call with no event for
  ``stale_after`` seconds (checked at each new call), and every open call at :meth:`close` / :meth:`detach` / the end
  of :meth:`install`, is settled: committed as seen if output had arrived (a stream held but no longer read; its
  later events are ignored), else dropped (a stream never read; but also a call still running, so a non-streamed
  call longer than ``stale_after`` is lost). A call that raises (``SpanDropEvent``) is not charged.
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

import json
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Self

from llama_index.core.base.llms.types import ChatResponse, TextBlock, ThinkingBlock, ToolCallBlock
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
from ...ledger.accounts import parse_scope
from ...tokens import count_tokens
from .scope import BUDGETED_TAG, Payer, current_payer

__all__ = ["BUDGETED_TAG", "ClearEventHandler"]

_PROMPT = ("prompt_tokens", "input_tokens", "prompt_token_count", "prompt_eval_count")
_COMPLETION = ("completion_tokens", "output_tokens", "candidates_token_count", "eval_count")
_CACHE = ("cache_creation_input_tokens", "cache_read_input_tokens")
_STARTS = (ev.LLMChatStartEvent, ev.LLMCompletionStartEvent)
_PROGRESS = (ev.LLMChatInProgressEvent, ev.LLMCompletionInProgressEvent)
_ENDS = (ev.LLMChatEndEvent, ev.LLMCompletionEndEvent)
_Reported = tuple[int | None, int, int]  # prompt (None: not reported), completion, reasoning


@dataclass(slots=True)
class _Call:
    scope: str
    model: str | None
    prompt: Any  # the start event's messages or prompt: counted only when no usage is reported
    tools: Any
    touched: float
    skip: bool
    last: Any = None  # the latest response: its text is read only when no usage is reported
    deltas: list[str] = field(default_factory=list)
    reported: _Reported | None = None
    children: dict[str | None, _Reported | None] = field(default_factory=dict)  # nested calls' latest usage

    @property
    def seen(self) -> bool:
        """Whether any output arrived: a stream began, or a nested call reported usage."""
        return bool(self.last is not None or self.deltas or self.reported or any(self.children.values()))


def _get(source: Any, key: str) -> Any:
    return source.get(key) if isinstance(source, Mapping) else getattr(source, key, None)


def _int(source: Any, *keys: str) -> int | None:
    values = (_get(source, key) for key in keys)
    return next((v for v in values if type(v) is int and v >= 0), None)


def _parse(source: Any) -> _Reported | None:
    completion = None if isinstance(source, str | bytes | int | float) else _int(source, *_COMPLETION)
    if completion is None:
        return None
    prompt = _int(source, *_PROMPT)
    prompt = None if prompt is None else prompt + sum(_int(source, key) or 0 for key in _CACHE)
    completion += (thoughts := _int(source, "thoughts_token_count") or 0)  # Gemini: not in candidates_token_count
    details = _get(source, "completion_tokens_details") or _get(source, "output_tokens_details")
    return prompt, completion, min(thoughts or _int(details, "reasoning_tokens") or 0, completion)


def _reported(response: Any) -> _Reported | None:
    raw, extra = getattr(response, "raw", None), getattr(response, "additional_kwargs", None)
    message_extra = getattr(getattr(response, "message", None), "additional_kwargs", None)
    sources = (_get(raw, "usage"), _get(raw, "usage_metadata"), raw, extra, _get(message_extra, "usage"))
    return next((found for found in map(_parse, sources) if found is not None), None)


def _add(a: _Reported | None, b: _Reported | None) -> _Reported | None:
    if a is None or b is None:
        return a or b
    prompt = None if a[0] is None or b[0] is None else a[0] + b[0]
    return prompt, a[1] + b[1], a[2] + b[2]


def _message_text(message: Any) -> str:
    parts = []
    for block in getattr(message, "blocks", ()):
        if isinstance(block, TextBlock | ThinkingBlock):
            parts.append((block.text if isinstance(block, TextBlock) else block.content) or "")
        elif isinstance(block, ToolCallBlock):
            parts.append(json.dumps([block.tool_name, block.tool_kwargs], default=str))
    return "".join(parts)


def _response_text(response: Any) -> str:
    return _message_text(response.message) if isinstance(response, ChatResponse) else str(response.text or "")


def _prompt_text(call: _Call) -> str:
    prompt = call.prompt
    text = prompt if isinstance(prompt, str) else "\n".join(f"{m.role.value}: {_message_text(m)}" for m in prompt)
    try:  # LlamaIndex tools, or provider tool specs (dicts, as OpenAI's _prepare_chat_with_tools passes them)
        schemas = [t.metadata.to_openai_tool() if hasattr(t, "metadata") else t for t in call.tools or ()]
    except Exception:  # a tool that cannot describe itself is left out of the estimate
        schemas = []
    return text + ("\n" + json.dumps(schemas, default=str) if schemas else "")


def _stack_spans(own: str | None) -> list[str]:
    """The span ids (other than ``own``) that frames on the current stack hold in a ``span_id`` local."""
    found: list[str] = []
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        code = frame.f_code
        if "span_id" in code.co_varnames or "span_id" in code.co_cellvars or "span_id" in code.co_freevars:
            value = frame.f_locals.get("span_id")
            if isinstance(value, str) and value != own:
                found.append(value)
        frame = frame.f_back
    return found


class ClearEventHandler(BaseEventHandler):
    """Accounts every outermost LLM call LlamaIndex instruments on ``ledger`` (the rules: module docstring).

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
    _calls: dict[str | None, _Call] = PrivateAttr(default_factory=dict)  # open outermost calls by span id
    _nested: dict[str | None, str | None] = PrivateAttr(default_factory=dict)  # open nested span -> outermost span
    _unbilled: list[tuple[str, Usage]] = PrivateAttr(default_factory=list)

    def __init__(
        self, ledger: Ledger, *, tenant: str, session: str | None = None, lease: float = DEFAULT_LEASE,
        stale_after: float | None = 600.0, clock: Callable[[], float] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(ledger=ledger, tenant=tenant, session=session, lease=lease, stale_after=stale_after)
        self._clock = clock or time.monotonic
        parse_scope(Payer(tenant, session).scope, "tenant")

    @classmethod
    def class_name(cls) -> str:
        return "ClearEventHandler"

    def attach(self, dispatcher: Dispatcher | None = None) -> Self:
        """Add this handler to ``dispatcher`` (default: the root one, which sees every event); idempotent."""
        target = get_dispatcher() if dispatcher is None else dispatcher
        if not any(handler is self for handler in target.event_handlers):
            target.add_event_handler(self)
        return self

    def detach(self, dispatcher: Dispatcher | None = None) -> None:
        """Remove this handler from ``dispatcher`` (by identity), then settle its open calls (:meth:`close`)."""
        handlers = (get_dispatcher() if dispatcher is None else dispatcher).event_handlers
        handlers[:] = [handler for handler in handlers if handler is not self]
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
        """Track LLM start / in-progress / end events and the exceptions that end calls."""
        sid = event.span_id
        if isinstance(event, _STARTS):
            self._start(event, sid)
        elif isinstance(event, _PROGRESS + _ENDS):
            self._progress(sid, event.response, final=isinstance(event, _ENDS))
        elif isinstance(event, ExceptionEvent | SpanDropEvent):  # a stream stopped early / a call that raised
            with self._lock:
                call, _ = self._pop(sid), self._nested.pop(sid, None)
            if call and call.seen and isinstance(event, ExceptionEvent):
                self._settle(call)

    def _start(self, event: ev.LLMChatStartEvent | ev.LLMCompletionStartEvent, sid: str | None) -> None:
        now = self._clock()
        if (limit := self.stale_after) is not None:
            self._drain(lambda call: now - call.touched > limit)
        info, tags = event.model_dict, event.tags
        skip = tags.get(BUDGETED_TAG) is True or info.get("class_name") == "ClearBudgetLLM"
        model = info.get("model") or info.get("model_name")
        prompt = event.messages if isinstance(event, ev.LLMChatStartEvent) else event.prompt
        payer = current_payer(Payer(self.tenant, self.session))
        call = _Call(payer.scope, model if isinstance(model, str) else None, prompt,
                     event.additional_kwargs.get("tools"), now, skip)  # fmt: skip
        ancestors = _stack_spans(sid)
        with self._lock:
            if sid in self._calls or sid in self._nested:
                return
            outer = next((span for span in ancestors if span in self._calls), None)
            if outer is None:
                self._calls[sid] = call
            else:
                self._nested[sid] = outer
                self._calls[outer].children[sid] = None

    def _progress(self, sid: str | None, response: Any, *, final: bool) -> None:
        reported = None if response is None else _reported(response)
        delta = None if final or response is None else response.delta
        with self._lock:
            call = self._calls.get(sid)
            if call is None:  # a nested call (its usage goes to its outermost call), or one not tracked
                if sid in self._nested:
                    outer = self._calls.get(self._nested.pop(sid) if final else self._nested[sid])
                    if outer is not None and reported is not None:
                        outer.children[sid] = reported
                return
            call.touched = self._clock()
            call.reported, call.last = reported or call.reported, call.last if response is None else response
            if delta:
                call.deltas.append(delta)
            if final:
                self._pop(sid)
        if final:
            self._settle(call)

    def _pop(self, sid: str | None) -> _Call | None:
        """Remove an open call and forget its nested calls (lock held)."""
        call = self._calls.pop(sid, None)
        for child in call.children if call is not None else ():
            self._nested.pop(child, None)
        return call

    def _drain(self, which: Callable[[_Call], bool]) -> None:
        """Remove the open calls ``which`` selects: commit those with output, drop those without (nothing seen)."""
        with self._lock:
            calls = [self._pop(sid) for sid, call in list(self._calls.items()) if which(call)]
        for call in calls:
            if call is not None and call.seen:
                self._settle(call)

    def _settle(self, call: _Call) -> None:
        """Commit the call's usage: the provider's if reported (own or nested), else an offline estimate."""
        if call.skip:
            return
        nested = None
        for child in call.children.values():
            nested = _add(nested, child)
        best = max((u for u in (call.reported, nested) if u), key=lambda u: (u[0] or 0) + u[1], default=None)
        if best is not None and best[0] is not None:
            usage = Usage(best[0], best[1], best[2])
        else:
            prompt = count_tokens(_prompt_text(call), model=call.model).tokens
            joined = "".join(call.deltas)
            text = "" if call.last is None else _response_text(call.last)
            text = text if len(text) >= len(joined) else joined
            completion = (count_tokens(text, model=call.model).tokens if text else 0) if best is None else best[1]
            usage = Usage(prompt, completion, 0 if best is None else best[2], estimated=True)
        if self._record(call.scope, usage) and self._unbilled:
            self.flush()

    def _record(self, scope: str, usage: Usage, *, retry: bool = False) -> bool:
        """Charge ``usage`` in full; when the ledger is unreachable keep it unbilled (and warn, unless retrying)."""
        try:
            self.ledger.charge(scope, usage, lease=self.lease)
            return True
        except ClearError as error:
            keep = isinstance(error, BudgetExceeded | LedgerUnavailable)
            if keep:
                with self._lock:
                    self._unbilled.append((scope, usage))
            if not (keep and retry):
                fate = "kept unbilled (see flush())" if keep else "not recorded"
                warnings.warn(f"ClearEventHandler: {usage.total} tokens of {scope!r} {fate}: {error}", ClearWarning, 3)
            return False

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
        self._drain(lambda _: True)
