"""Translation of one LlamaIndex call for the budgeting lifecycle: the request, the answer of an abandoned call, a
continuation's prompt, a cut answer and its continuation as one.

- :class:`Call`: who pays (resolved when the call is made, so a stream read later is charged to whoever made it),
  the chat messages or completion prompt, the keywords that go on to the wrapped LLM (cap keywords removed: the cap
  travels in the provider's field) and the :class:`~clear_integrations.budgeting.Request`;
- :func:`fallback`: the ``ChatResponse`` / ``CompletionResponse`` of an abandoned call, with the decision's
  ``clear_*`` keys in ``additional_kwargs`` and as its ``raw`` (an agent's ``AgentOutput.raw`` keeps them);
- :func:`continuation`: the messages or prompt that continue a cut answer; :func:`joined`: the answer and its
  continuations as one response, their usage summed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, ChatResponse, CompletionResponse, MessageRole

from ...budgeting import Abandon, Decision, Payer, Request, abandon_answer
from ...budgeting.continuation import CONTINUE, joined_text
from ...ledger import Usage
from .usage import response_text

__all__ = ["Call", "continuation", "fallback", "joined"]

Response = ChatResponse | CompletionResponse


@dataclass(frozen=True, slots=True)
class Call:
    """One user call: ``messages`` (chat) or ``prompt`` (completion, as the LLM will send it), the keywords for the
    wrapped LLM, and the budgeting request."""

    payer: Payer
    request: Request
    rest: dict[str, Any]
    messages: Sequence[ChatMessage] | None = field(default=None, repr=False)
    prompt: str = ""

    @property
    def chat(self) -> bool:
        return self.messages is not None


def fallback(on_abandon: Abandon, decision: Decision, *, chat: bool, stream: bool = False) -> Response:
    """The answer of an abandoned call, or :class:`~clear_integrations.errors.QueryAbandoned` (``"raise"``)."""
    answer = abandon_answer(on_abandon, decision)
    meta = decision.metadata()
    if isinstance(answer, ChatResponse | CompletionResponse):
        if chat == isinstance(answer, ChatResponse):
            answer.additional_kwargs = {**answer.additional_kwargs, **meta}
            return answer
        answer = response_text(answer)
    text = str(answer)
    delta = text if stream else None
    if chat:
        message = ChatMessage(role=MessageRole.ASSISTANT, content=text)
        return ChatResponse(message=message, delta=delta, raw=meta, additional_kwargs=meta)
    return CompletionResponse(text=text, delta=delta, raw=meta, additional_kwargs=meta)


def continuation(call: Call, outputs: Sequence[Response]) -> Sequence[ChatMessage] | str:
    """What continues the answer so far: chat gets the answer and a "continue" turn; completion the prompt with the
    answer appended (sent ``formatted=True``, so the template is not applied twice)."""
    so_far = "".join(response_text(output) for output in outputs)
    if call.messages is not None:
        return [
            *call.messages,
            ChatMessage(role=MessageRole.ASSISTANT, content=so_far),
            ChatMessage(role=MessageRole.USER, content=CONTINUE),
        ]
    return call.prompt + so_far


def _usage_keys(usage: Usage) -> dict[str, Any]:
    return {"prompt_tokens": usage.prompt, "completion_tokens": usage.completion, "total_tokens": usage.total}


def joined(outputs: Sequence[Response], usage: Usage, decision: Decision) -> Response:
    """One answer from a cut answer and its continuations: texts joined, the last ``raw``, the calls' usage summed
    in ``additional_kwargs`` (as llama-index-llms-openai reports it) with the decision."""
    text = ""
    extra: dict[str, Any] = {}
    for output in outputs:
        text = joined_text(text, response_text(output))
        extra.update(output.additional_kwargs)
    extra |= {**_usage_keys(usage), **decision.metadata()}
    last = outputs[-1]
    if isinstance(last, ChatResponse):
        message = ChatMessage(role=MessageRole.ASSISTANT, content=text)
        return ChatResponse(message=message, raw=last.raw, additional_kwargs=extra)
    return CompletionResponse(text=text, raw=last.raw, additional_kwargs=extra)
