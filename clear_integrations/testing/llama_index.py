"""``MeteredMockLLM``: a LlamaIndex function-calling LLM that counts tokens exactly and honours output caps.

Use it wherever your app takes a LlamaIndex ``LLM`` (query engines, ``FunctionAgent``, workflows) to test budgets,
caps, streaming and usage accounting without a network::

    from clear_integrations.testing import MeteredMockLLM

    llm = MeteredMockLLM(response_tokens=400)
    reply = llm.complete("why is the sky blue?", max_tokens=50)
    assert reply.raw["usage"]["completion_tokens"] == 50
    assert llm.calls[-1].finish_reason == "length"

One token is one whitespace-separated word (``len(text.split())``), for the prompt and the answer alike.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

import anyio
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    TextBlock,
    ToolCallBlock,
)
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from pydantic import Field, PrivateAttr, field_validator, model_validator

from ..errors import InvalidInput
from .script import (
    AnswerLength,
    CallLog,
    MeteredCall,
    ScriptState,
    ToolCallScript,
    Turn,
    begin_call,
    check_length_spec,
    collect_caps,
    count_words,
)

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

__all__ = ["MeteredMockLLM"]

_F = TypeVar("_F", bound=Callable[..., Any])
_R = TypeVar("_R")


def _chat_event(f: _F) -> _F:
    return cast(_F, llm_chat_callback()(f))


def _completion_event(f: _F) -> _F:
    return cast(_F, llm_completion_callback()(f))


def _message_tokens(message: ChatMessage) -> int:
    return sum(count_words(block.text) for block in message.blocks if isinstance(block, TextBlock))


class MeteredMockLLM(FunctionCallingLLM):
    """A deterministic LlamaIndex LLM with exact token accounting, for testing apps that budget tokens.

    Each call answers with ``response_tokens`` words (after ``reasoning_tokens`` hidden reasoning tokens), cut at
    the smallest cap in force: the fields ``max_tokens`` / ``max_new_tokens`` and per-call kwargs in any provider's
    spelling (``complete(p, max_tokens=5)``, ``max_new_tokens``, ``max_completion_tokens``, ``num_predict``,
    ``max_output_tokens``); a per-call value replaces the field of the same spelling. A capped call ends after
    exactly ``cap`` output tokens with ``raw["finish_reason"] == "length"`` (else ``"stop"`` or ``"tool_calls"``).

    Usage is reported as ``raw={"usage": {"prompt_tokens", "completion_tokens", "total_tokens"}}`` (plus
    ``completion_tokens_details.reasoning_tokens`` when reasoning was spent) and, flat, in ``additional_kwargs``,
    where ``TokenCountingHandler`` and OpenAI-style readers look. ``prompt_tokens`` counts the words of the messages'
    text blocks (for ``complete``, of the prompt). Every method is native (sync, async, streaming, chat and
    completion), so one user call emits exactly one LLM event. Streams yield one delta per token; the last one
    carries ``raw`` and the usage.

    Tools: it is a ``FunctionCallingLLM``. With tools passed (``achat_with_tools``, ``FunctionAgent``), each call
    takes the next entry of ``tool_calls`` and answers with those calls as ``ToolCallBlock``s; an empty entry, or a
    used-up script, gives a text answer, so an agent ends::

        llm = MeteredMockLLM(tool_calls=[[{"name": "add", "args": {"a": 1, "b": 2}}], []])
        agent = FunctionAgent(tools=[add, multiply], llm=llm)

    ``llm.calls`` lists a :class:`~clear_integrations.testing.MeteredCall` per finished call (thread-safe);
    ``reset()`` clears it and restarts the scripts.

    Args:
        response_tokens: visible answer length: an int, a list (entry *i* for call *i*) or ``(messages) -> int``
            (``complete`` passes its prompt as one user message).
        reasoning_tokens: hidden reasoning tokens spent before the answer, same forms (default 0).
        tool_calls: the tool-call script, one entry per call made with tools.
        max_tokens, max_new_tokens: caps (``None``: none).
        context_window: reported in ``metadata``.
        model_name: reported in ``metadata`` and ``raw["model"]``.
        latency: seconds each call waits before answering (``time.sleep`` sync, ``anyio.sleep`` async).
    """

    response_tokens: AnswerLength[ChatMessage] = 400
    reasoning_tokens: AnswerLength[ChatMessage] = 0
    tool_calls: ToolCallScript | None = None
    max_tokens: int | None = None
    max_new_tokens: int | None = None
    context_window: int = Field(default=8192, gt=0)
    model_name: str = "metered-mock"
    latency: float = Field(default=0.0, ge=0.0)

    _state: ScriptState = PrivateAttr(default_factory=ScriptState)
    _log: CallLog = PrivateAttr(default_factory=CallLog)

    @field_validator("response_tokens", "reasoning_tokens", mode="before")
    @classmethod
    def _check_lengths(cls, value: Any, info: Any) -> Any:
        return check_length_spec(info.field_name, value)

    @model_validator(mode="after")
    def _check_caps(self) -> Self:
        collect_caps(self._cap_fields(), {})
        return self

    @classmethod
    def class_name(cls) -> str:
        return "MeteredMockLLM"

    @property
    def calls(self) -> list[MeteredCall]:
        """A snapshot of the call records, in the order the calls finished."""
        return self._log.snapshot()

    def reset(self) -> None:
        """Forget the call records and start every script from its first entry."""
        self._log.clear()
        self._state.reset()

    @property
    def metadata(self) -> LLMMetadata:
        cap = min(collect_caps(self._cap_fields(), {}).values(), default=None)
        if cap is None and isinstance(self.response_tokens, int) and isinstance(self.reasoning_tokens, int):
            cap = self.response_tokens + self.reasoning_tokens
        return LLMMetadata(
            context_window=self.context_window,
            num_output=256 if cap is None else cap,
            is_chat_model=True,
            is_function_calling_model=True,
            model_name=self.model_name,
        )

    # -- completion --------------------------------------------------------------------------------------------

    @_completion_event
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        turn = self._begin_completion(prompt, formatted, kwargs)
        if self.latency:
            time.sleep(self.latency)
        return self._completion(turn, turn.text, delta=None)

    @_completion_event
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        turn = self._begin_completion(prompt, formatted, kwargs)
        await anyio.sleep(self.latency)
        return self._completion(turn, turn.text, delta=None)

    @_completion_event
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        turn = self._begin_completion(prompt, formatted, kwargs)
        return self._pieces(turn, lambda text, piece, n: self._completion(turn, text, piece, True, n))

    @_completion_event
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        turn = self._begin_completion(prompt, formatted, kwargs)
        return self._apieces(turn, lambda text, piece, n: self._completion(turn, text, piece, True, n))

    # -- chat --------------------------------------------------------------------------------------------------

    @_chat_event
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        turn = self._begin(list(messages), kwargs)
        if self.latency:
            time.sleep(self.latency)
        return self._chat(turn, turn.text, delta=None)

    @_chat_event
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        turn = self._begin(list(messages), kwargs)
        await anyio.sleep(self.latency)
        return self._chat(turn, turn.text, delta=None)

    @_chat_event
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        turn = self._begin(list(messages), kwargs)
        return self._pieces(turn, lambda text, piece, n: self._chat(turn, text, piece, True, n))

    @_chat_event
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        turn = self._begin(list(messages), kwargs)
        return self._apieces(turn, lambda text, piece, n: self._chat(turn, text, piece, True, n))

    # -- tools -------------------------------------------------------------------------------------------------

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        messages = list(chat_history or [])
        if isinstance(user_msg, str):
            messages.append(ChatMessage(role=MessageRole.USER, content=user_msg))
        elif user_msg is not None:
            messages.append(user_msg)
        return {"messages": messages, "tools": list(tools), **kwargs}

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        blocks = [block for block in response.message.blocks if isinstance(block, ToolCallBlock)]
        if not blocks and error_on_no_tool_call:
            raise InvalidInput("response", response.message.content, "expected at least one tool call, but it has none")
        return [
            ToolSelection(
                tool_id=block.tool_call_id or "",
                tool_name=block.tool_name,
                tool_kwargs=block.tool_kwargs if isinstance(block.tool_kwargs, dict) else json.loads(block.tool_kwargs),
            )
            for block in blocks
        ]

    # -- internals ---------------------------------------------------------------------------------------------

    def _cap_fields(self) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "max_new_tokens": self.max_new_tokens}

    def _begin(self, messages: list[ChatMessage], kwargs: dict[str, Any]) -> Turn:
        tools = kwargs.get("tools")
        stop = kwargs.get("stop")
        return begin_call(
            self._state,
            messages=messages,
            prompt_tokens=sum(_message_tokens(message) for message in messages),
            response_tokens=self.response_tokens,
            reasoning_tokens=self.reasoning_tokens,
            tool_script=self.tool_calls,
            bound_tools=[tool.metadata.name or "" for tool in tools] if tools else None,
            fields=self._cap_fields(),
            call_kwargs=kwargs,
            stop=[stop] if isinstance(stop, str) else stop,
        )

    def _begin_completion(self, prompt: str, formatted: bool, kwargs: dict[str, Any]) -> Turn:
        if not formatted and self.completion_to_prompt is not None:
            prompt = self.completion_to_prompt(prompt)
        return self._begin([ChatMessage(role=MessageRole.USER, content=prompt)], kwargs)

    def _pieces(self, turn: Turn, make: Callable[[str, str, int], _R]) -> Generator[_R, None, None]:
        """One response per token (``make(text so far, delta, pieces delivered)``); records the call when closed."""
        delivered, text = 0, ""
        try:
            if self.latency:
                time.sleep(self.latency)
            for piece in turn.plan.pieces():
                text += piece
                delivered += 1
                yield make(text, piece, delivered)
        finally:
            self._log.append(turn.record(streamed=True, delivered=delivered))

    async def _apieces(self, turn: Turn, make: Callable[[str, str, int], _R]) -> AsyncGenerator[_R, None]:
        """The async twin of :meth:`_pieces`."""
        delivered, text = 0, ""
        try:
            await anyio.sleep(self.latency)
            for piece in turn.plan.pieces():
                text += piece
                delivered += 1
                yield make(text, piece, delivered)
        finally:
            self._log.append(turn.record(streamed=True, delivered=delivered))

    def _usage(self, turn: Turn) -> tuple[dict[str, Any], dict[str, Any]]:
        prompt, output, total = turn.usage()
        flat: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": total}
        usage = dict(flat)
        if turn.plan.reasoning_tokens:
            usage["completion_tokens_details"] = {"reasoning_tokens": turn.plan.reasoning_tokens}
        raw = {"model": self.model_name, "usage": usage, "finish_reason": turn.plan.finish_reason}
        return raw, flat

    def _final(self, turn: Turn, streamed: bool, delivered: int | None) -> bool:
        """Whether this response ends the call (then it carries raw and usage); records non-streamed calls."""
        if not streamed:
            self._log.append(turn.record(streamed=False))
            return True
        return delivered == len(turn.plan.pieces())

    def _completion(
        self, turn: Turn, text: str, delta: str | None, streamed: bool = False, delivered: int | None = None
    ) -> CompletionResponse:
        if not self._final(turn, streamed, delivered):
            return CompletionResponse(text=text, delta=delta)
        raw, flat = self._usage(turn)
        return CompletionResponse(text=text, delta=delta, raw=raw, additional_kwargs=flat)

    def _chat(
        self, turn: Turn, text: str, delta: str | None, streamed: bool = False, delivered: int | None = None
    ) -> ChatResponse:
        final = self._final(turn, streamed, delivered)
        blocks: list[Any] = [TextBlock(text=text)]
        if final and turn.plan.tool_calls:
            blocks = [
                ToolCallBlock(tool_call_id=call.id, tool_name=call.name, tool_kwargs=call.args)
                for call in turn.plan.tool_calls
            ]
        message = ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks)
        if not final:
            return ChatResponse(message=message, delta=delta)
        raw, flat = self._usage(turn)
        return ChatResponse(message=message, delta=delta, raw=raw, additional_kwargs=flat)
