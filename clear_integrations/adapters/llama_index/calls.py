"""Pieces of one budgeted call, shared by the sync and async paths of ``ClearBudgetLLM``.

- :class:`Call`: who pays, the prompt as counted, the cap the caller asked for, the other keywords;
- :class:`Offloaded`: the sync :class:`~clear_integrations.policy.BudgetController` run in a worker thread, so that
  the async paths never block the event loop when no async ledger is given;
- :class:`Meter`: what a stream delivered so far (text, tokens, last response), and the usage to commit for it;
- :func:`fallback`: the answer of an abandoned call; :func:`joined`: a cut answer and its continuation as one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio.to_thread
from llama_index.core.base.llms.types import ChatMessage, ChatResponse, CompletionResponse, MessageRole

from ...errors import QueryAbandoned
from ...ledger import Usage
from ...policy import BudgetController, Decision
from .scope import Payer
from .usage import message_text, reported_usage, response_text

__all__ = ["CONTINUE", "DEFAULT_FALLBACK", "Abandon", "Call", "Meter", "Offloaded", "fallback", "joined"]

Abandon = Literal["message", "raise"] | str | Callable[[Decision], Any]
DEFAULT_FALLBACK = "I can't answer this within the token budget."
CONTINUE = "Continue exactly where you stopped."


@dataclass(frozen=True, slots=True)
class Call:
    """One user call before its decision: ``prompt`` (for the estimator), ``prompt_tokens`` as counted (with the
    LLM's own tokenizer when ``exact``, else tiktoken), ``requested`` cap, and ``rest``: the keywords that go on to
    the wrapped LLM (the cap keywords removed: the cap travels in the provider's field)."""

    payer: Payer
    prompt: str
    prompt_tokens: int
    exact: bool
    requested: int | None
    rest: dict[str, Any]


class Offloaded:
    """The async face of a sync controller: each ledger step runs in a worker thread (``anyio.to_thread``)."""

    def __init__(self, controller: BudgetController) -> None:
        self.controller = controller

    async def begin(self, scope: str, prompt: str, **kwargs: Any) -> Decision:
        return await anyio.to_thread.run_sync(functools.partial(self.controller.begin, scope, prompt, **kwargs))

    async def end(self, decision: Decision, usage: Usage) -> int:
        return await anyio.to_thread.run_sync(self.controller.end, decision, usage)

    async def fail(self, decision: Decision) -> int:
        return await anyio.to_thread.run_sync(self.controller.fail, decision)

    async def extend(self, decision: Decision, *, used: int, prompt_tokens: int) -> Decision | None:
        step = functools.partial(self.controller.extend, decision, used=used, prompt_tokens=prompt_tokens)
        return await anyio.to_thread.run_sync(step)


@dataclass
class Meter:
    """What a stream delivered: the text, the tokens counted delta by delta, the last response seen."""

    decision: Decision
    call: Call
    count: Callable[[str], int]
    text: str = ""
    tokens: int = 0
    pieces: int = 0
    last: ChatResponse | CompletionResponse | None = field(default=None, repr=False)

    def add(self, chunk: ChatResponse | CompletionResponse) -> int:
        """Count ``chunk`` in; returns the tokens it added."""
        delta = chunk.delta
        if delta is None:  # no delta: the part of the cumulative text not seen yet
            whole = response_text(chunk)
            delta = whole[len(self.text) :] if whole.startswith(self.text) else whole
        added = self.count(delta) if delta else 0
        self.text += delta
        self.tokens += added
        self.pieces += 1
        self.last = chunk
        return added

    def past_cap(self, chunk: ChatResponse | CompletionResponse) -> bool:
        """Count ``chunk`` in; True if it brings tokens beyond a cap already reached (it is paid, not delivered).

        Chunks without tokens after the cap (a finish reason, a usage report) still pass, so a provider that
        honours the cap ends its stream normally and its final usage is read."""
        reached = self.reached
        return self.add(chunk) > 0 and reached

    @property
    def reached(self) -> bool:
        """The cap is reached (even if the model ignored it): stop paying."""
        cap = self.decision.max_tokens
        return cap is not None and self.tokens >= cap

    def usage(self) -> Usage:
        """The provider's usage if the last response carries it, else the streamed text counted."""
        reported = reported_usage(self.last)
        if reported is not None:
            return reported
        tokens = min(self.count(self.text), self.tokens) if self.text else 0
        return Usage(prompt=self.call.prompt_tokens, completion=tokens, estimated=not self.call.exact)


def abandon_text(on_abandon: Abandon, decision: Decision) -> str | ChatResponse | CompletionResponse:
    if on_abandon == "raise":
        raise QueryAbandoned(
            decision.reason,
            shadow_price=decision.shadow_price or 0.0,
            expected_accuracy=decision.expected_accuracy or 0.0,
        )
    if callable(on_abandon):
        answer = on_abandon(decision)
        return answer if isinstance(answer, ChatResponse | CompletionResponse) else str(answer)
    return DEFAULT_FALLBACK if on_abandon == "message" else on_abandon


def fallback(on_abandon: Abandon, decision: Decision, *, chat: bool, stream: bool) -> Any:
    """The answer of an abandoned call (a ``ChatResponse`` or ``CompletionResponse`` with the decision's
    ``clear_*`` metadata in ``additional_kwargs``), or :class:`QueryAbandoned` when ``on_abandon="raise"``."""
    answer = abandon_text(on_abandon, decision)
    meta = decision.metadata()
    if isinstance(answer, ChatResponse):
        return answer if chat else CompletionResponse(text=message_text(answer.message), additional_kwargs=meta)
    if isinstance(answer, CompletionResponse):
        if not chat:
            return answer
        answer = answer.text
    delta = answer if stream else None
    if chat:
        message = ChatMessage(role=MessageRole.ASSISTANT, content=answer)
        return ChatResponse(message=message, delta=delta, additional_kwargs=meta)
    return CompletionResponse(text=answer, delta=delta, additional_kwargs=meta)


def _summed(first: Usage, second: Usage) -> dict[str, Any]:
    prompt, completion = first.prompt + second.prompt, first.completion + second.completion
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def joined(
    first: ChatResponse | CompletionResponse, second: ChatResponse | CompletionResponse, usage: tuple[Usage, Usage]
) -> Any:
    """One answer from a cut answer and its continuation: texts joined, the continuation's ``raw``, and the two
    calls' usage summed in ``additional_kwargs``."""
    text = response_text(first) + " " + response_text(second)
    extra = {**first.additional_kwargs, **second.additional_kwargs, **_summed(*usage)}
    if isinstance(first, ChatResponse):
        message = ChatMessage(role=MessageRole.ASSISTANT, content=text)
        return ChatResponse(message=message, raw=second.raw, additional_kwargs=extra)
    return CompletionResponse(text=text, raw=second.raw, additional_kwargs=extra)
