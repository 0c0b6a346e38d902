"""What :class:`~.events.ClearEventHandler` tracks: the span tree (which open call another is nested in) and each
open LLM call (who pays, what it was asked, what it has returned, what its provider reported).

LlamaIndex opens one instrumentation span per LLM method call; :class:`SpanTree`, a span handler registered with the
event handler, keeps each open span's parent so a start event can be placed under the open call it is nested in.
Calls started inside a stream's generator run in the consumer's context instead, so the spans that return
generators are reported too, and :meth:`TrackedCall.running_frame` finds a running one on the stack.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import AsyncGeneratorType, FrameType, GeneratorType
from typing import Any

from llama_index.core.base.llms.types import ChatResponse
from llama_index_instrumentation.span_handlers import BaseSpanHandler
from pydantic import PrivateAttr

from .usage import Reported, message_text, tool_calls_text

__all__ = ["SpanTree", "TrackedCall", "add_reported", "completion_text", "prompt_text"]


@dataclass(slots=True, eq=False)
class TrackedCall:
    """An LLM call the handler follows from its start event: who pays, what it was asked, where it sits in the tree
    of open calls, and what it has returned so far."""

    sid: str | None
    scope: str
    model: str | None
    prompt: Any  # the start event's messages or prompt: counted only when no usage is reported
    tools: Any
    touched: float
    skip: bool
    parent: TrackedCall | None = None  # the open call it is nested in (None: an outermost call)
    kids: list[TrackedCall] = field(default_factory=list)  # the calls nested directly in it
    stream: weakref.ref[Any] | None = None  # the generator its span returned
    last: Any = None  # the latest response: its text is read only when no usage is reported
    deltas: list[str] = field(default_factory=list)
    reported: Reported | None = None

    @property
    def root(self) -> TrackedCall:
        call = self
        while call.parent is not None:
            call = call.parent
        return call

    def usage(self) -> Reported | None:
        """Its own reported usage or, if more, its nested calls' together (each counted the same way)."""
        nested = None
        for kid in self.kids:
            nested = add_reported(nested, kid.usage())
        return max((u for u in (self.reported, nested) if u), key=lambda u: (u[0] or 0) + u[1], default=None)

    @property
    def seen(self) -> bool:
        """Whether any output arrived: a stream began, or a nested call reported usage."""
        return bool(self.last is not None or self.deltas or self.usage())

    def running_frame(self) -> FrameType | None:
        """The frame of its stream's generator while that generator runs (on some thread)."""
        gen = None if self.stream is None else self.stream()
        if isinstance(gen, GeneratorType) and gen.gi_running:
            return gen.gi_frame
        return gen.ag_frame if isinstance(gen, AsyncGeneratorType) and gen.ag_running else None


class SpanTree(BaseSpanHandler[Any]):
    """The parent id of every open span (forgotten when it exits or drops), and the streams spans return."""

    _parents: dict[str, str | None] = PrivateAttr(default_factory=dict)
    _returned_stream: Callable[[str, Any], None] | None = PrivateAttr(default=None)

    def forget(self) -> None:
        """Drop every parent id (detached: the ends of the spans open now will not be seen)."""
        self._parents.clear()

    def ancestors(self, sid: str | None) -> Iterator[str]:
        parent = None if sid is None else self._parents.get(sid)
        while parent is not None:
            yield parent
            parent = self._parents.get(parent)

    def new_span(self, id_: str, *args: Any, **kwargs: Any) -> None:  # returns no span: the base keeps none open
        self._parents[id_] = kwargs.get("parent_span_id")

    def prepare_to_exit_span(self, id_: str, *args: Any, **kwargs: Any) -> None:
        self._parents.pop(id_, None)
        if isinstance(result := kwargs.get("result"), GeneratorType | AsyncGeneratorType) and self._returned_stream:
            self._returned_stream(id_, result)

    def prepare_to_drop_span(self, id_: str, *args: Any, **kwargs: Any) -> None:
        self._parents.pop(id_, None)


def add_reported(a: Reported | None, b: Reported | None) -> Reported | None:
    if a is None or b is None:
        return a or b
    prompt = None if a[0] is None or b[0] is None else a[0] + b[0]
    return prompt, a[1] + b[1], a[2] + b[2]


def completion_text(call: TrackedCall) -> str:
    """The response's text, or a stream's joined deltas if longer (one text), and its tool calls."""
    last = call.last
    message = last.message if isinstance(last, ChatResponse) else None
    text = "" if last is None else message_text(message, thinking=True) if message is not None else str(last.text or "")
    return max(text, "".join(call.deltas), key=len) + tool_calls_text(message)


def prompt_text(call: TrackedCall) -> str:
    prompt = call.prompt
    text = prompt if isinstance(prompt, str) else "\n".join(
        f"{m.role.value}: {message_text(m, thinking=True)}{tool_calls_text(m)}" for m in prompt
    )  # fmt: skip
    try:  # LlamaIndex tools, or provider tool specs (dicts, as OpenAI's _prepare_chat_with_tools passes them)
        schemas = [t.metadata.to_openai_tool() if hasattr(t, "metadata") else t for t in call.tools or ()]
    except Exception:  # a tool that cannot describe itself is left out of the estimate
        schemas = []
    return text + ("\n" + json.dumps(schemas, default=str) if schemas else "")
