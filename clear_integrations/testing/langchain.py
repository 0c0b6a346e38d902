"""``MeteredFakeChatModel``: a LangChain chat model that counts tokens exactly and honours output caps.

Use it wherever your app takes a ``BaseChatModel`` (chains, ``create_agent``, LangGraph nodes) to test budgets,
caps, streaming and usage accounting without a network::

    from clear_integrations.testing import MeteredFakeChatModel

    model = MeteredFakeChatModel(response_tokens=400)
    reply = model.invoke("why is the sky blue?", max_tokens=50)
    assert reply.usage_metadata["output_tokens"] == 50
    assert reply.response_metadata["finish_reason"] == "length"
    assert model.calls[-1].cap == 50

One token is one whitespace-separated word (``len(text.split())``), for the prompt and the answer alike.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Self

import anyio
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolCall, UsageMetadata
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field, PrivateAttr, field_validator, model_validator

from ..errors import InvalidInput
from .script import (
    CAP_PARAMS,
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
    token_ids,
)

__all__ = ["MeteredFakeChatModel"]


def _message_tokens(message: BaseMessage) -> int:
    content = message.content
    if isinstance(content, str):
        return count_words(content)
    total = 0
    for block in content:
        if isinstance(block, str):
            total += count_words(block)
        elif isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str):
            total += count_words(block["text"])
    return total


def _tool_names(tools: Any) -> list[str] | None:
    if not tools:
        return None
    names: list[str] = []
    for tool in tools:
        if isinstance(tool, dict):
            name = (tool.get("function") or {}).get("name") or tool.get("name")
        else:
            name = getattr(tool, "name", None)
        if isinstance(name, str):
            names.append(name)
    return names


class MeteredFakeChatModel(BaseChatModel):
    """A deterministic chat model with exact token accounting, for testing apps that budget tokens.

    Each call answers with ``response_tokens`` words (after ``reasoning_tokens`` hidden reasoning tokens), cut at
    the smallest output cap in force. Caps are read in every provider's spelling, from the fields below and per call
    (``invoke(x, max_tokens=5)``, ``.bind(max_completion_tokens=5)``, ``options={"num_predict": 5}``); a per-call
    value replaces the field of the same spelling. A capped call ends after exactly ``cap`` output tokens with
    ``response_metadata["finish_reason"] == "length"`` (else ``"stop"``, or ``"tool_calls"``).

    Every answer carries ``usage_metadata`` (``input_tokens`` = words of the prompt messages' text, ``output_tokens``
    including reasoning, reported under ``output_token_details["reasoning"]``) and ``response_metadata["model_name"]``,
    so ``get_usage_metadata_callback()`` sees it. Streams yield one chunk per token; the last chunk carries the usage
    and finish reason, so a merged stream reports the same usage as ``invoke``.

    Tools: ``bind_tools`` works; with tools bound, each call takes the next entry of ``tool_calls`` and answers with
    those tool calls (an empty entry, or a used-up script, gives a text answer), so ``create_agent`` agents run::

        model = MeteredFakeChatModel(tool_calls=[[{"name": "add", "args": {"a": 1, "b": 2}}], []])
        agent = create_agent(model, tools=[add, multiply])

    ``model.calls`` lists a :class:`~clear_integrations.testing.MeteredCall` per finished call (thread-safe);
    ``reset()`` clears it and restarts the scripts.

    Args:
        response_tokens: visible answer length: an int, a list (entry *i* for call *i*; running out raises
            :class:`~clear_integrations.testing.ScriptExhausted`) or a function ``(messages) -> int``.
        reasoning_tokens: hidden reasoning tokens spent before the answer, same forms (default 0).
        tool_calls: the tool-call script, one entry per call made with tools bound.
        max_tokens, max_completion_tokens, max_new_tokens, num_predict, max_output_tokens: caps (``None``: none).
            A negative ``num_predict`` means no limit, as in Ollama.
        options: ChatOllama-style options; ``options["num_predict"]`` is a cap.
        model_name: reported as ``response_metadata["model_name"]`` and ``ls_model_name``.
        latency: seconds each call waits before answering (``time.sleep`` sync, ``anyio.sleep`` async).
    """

    response_tokens: AnswerLength[BaseMessage] = 400
    reasoning_tokens: AnswerLength[BaseMessage] = 0
    tool_calls: ToolCallScript | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    max_new_tokens: int | None = None
    num_predict: int | None = None
    max_output_tokens: int | None = None
    options: dict[str, Any] | None = None
    model_name: str = "metered-fake"
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

    # -- public helpers ------------------------------------------------------------------------------------------

    @property
    def calls(self) -> list[MeteredCall]:
        """A snapshot of the call records, in the order the calls finished."""
        return self._log.snapshot()

    def reset(self) -> None:
        """Forget the call records and start every script from its first entry."""
        self._log.clear()
        self._state.reset()

    def get_token_ids(self, text: str) -> list[int]:
        """One id per word (never the GPT-2 tokenizer)."""
        return token_ids(text)

    def get_num_tokens(self, text: str) -> int:
        """Words in ``text``."""
        return count_words(text)

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        """Words of the messages' text: exactly the ``input_tokens`` a call on them reports (tools are free)."""
        return sum(_message_tokens(message) for message in messages)

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (converted to OpenAI tool schemas, as providers do); extra kwargs are bound too."""
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.bind(tools=[convert_to_openai_tool(tool) for tool in tools], **kwargs)

    # -- LangChain hooks -----------------------------------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "metered-fake-chat-model"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, **{k: v for k, v in self._cap_fields().items() if v is not None}}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "metered_fake"
        params["ls_model_name"] = self.model_name
        params.pop("ls_max_tokens", None)
        try:
            cap = min(collect_caps(self._cap_fields(), kwargs).values(), default=None)
        except InvalidInput:  # the call itself reports it, with callbacks
            cap = None
        if cap is not None:
            params["ls_max_tokens"] = cap
        return params

    def _combine_llm_outputs(self, llm_outputs: list[dict[str, Any] | None]) -> dict[str, Any]:
        totals = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for output in llm_outputs:
            for key, value in ((output or {}).get("token_usage") or {}).items():
                totals[key] = totals.get(key, 0) + value
        return {"token_usage": totals, "model_name": self.model_name}

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        turn = self._begin(messages, stop, kwargs)
        if self.latency:
            time.sleep(self.latency)
        return self._result(turn)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        turn = self._begin(messages, stop, kwargs)
        await anyio.sleep(self.latency)
        return self._result(turn)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        turn = self._begin(messages, stop, kwargs)
        chunks = self._chunks(turn)
        delivered = 0
        try:
            if self.latency:
                time.sleep(self.latency)
            for chunk in chunks:
                if run_manager:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                delivered += 1
                yield chunk
        finally:
            self._log.append(turn.record(streamed=True, delivered=delivered))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        turn = self._begin(messages, stop, kwargs)
        chunks = self._chunks(turn)
        delivered = 0
        try:
            await anyio.sleep(self.latency)
            for chunk in chunks:
                if run_manager:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                delivered += 1
                yield chunk
        finally:
            self._log.append(turn.record(streamed=True, delivered=delivered))

    # -- internals -----------------------------------------------------------------------------------------------

    def _cap_fields(self) -> dict[str, Any]:
        return {**{name: getattr(self, name) for name in CAP_PARAMS}, "options": self.options}

    def _begin(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> Turn:
        return begin_call(
            self._state,
            messages=messages,
            prompt_tokens=self.get_num_tokens_from_messages(messages),
            response_tokens=self.response_tokens,
            reasoning_tokens=self.reasoning_tokens,
            tool_script=self.tool_calls,
            bound_tools=_tool_names(kwargs.get("tools")),
            fields=self._cap_fields(),
            call_kwargs=kwargs,
            stop=stop,
        )

    def _usage(self, turn: Turn) -> UsageMetadata:
        prompt, output, total = turn.usage()
        usage = UsageMetadata(input_tokens=prompt, output_tokens=output, total_tokens=total)
        if turn.plan.reasoning_tokens:
            usage["output_token_details"] = {"reasoning": turn.plan.reasoning_tokens}
        return usage

    def _info(self, turn: Turn) -> dict[str, Any]:
        return {"finish_reason": turn.plan.finish_reason, "model_name": self.model_name}

    def _result(self, turn: Turn) -> ChatResult:
        tool_calls = [ToolCall(name=c.name, args=c.args, id=c.id, type="tool_call") for c in turn.plan.tool_calls]
        message = AIMessage(
            content=turn.text,
            tool_calls=tool_calls,
            usage_metadata=self._usage(turn),
            response_metadata=self._info(turn),
        )
        self._log.append(turn.record(streamed=False))
        prompt, output, total = turn.usage()
        token_usage = {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": total}
        return ChatResult(
            generations=[ChatGeneration(message=message, generation_info=self._info(turn))],
            llm_output={"token_usage": token_usage, "model_name": self.model_name},
        )

    def _chunks(self, turn: Turn) -> list[ChatGenerationChunk]:
        pieces = turn.plan.pieces()
        chunks = [ChatGenerationChunk(message=AIMessageChunk(content=piece)) for piece in pieces[:-1]]
        last = AIMessageChunk(
            content=pieces[-1],
            usage_metadata=self._usage(turn),
            tool_call_chunks=[
                tool_call_chunk(name=c.name, args=json.dumps(c.args), id=c.id, index=i)
                for i, c in enumerate(turn.plan.tool_calls)
            ],
            chunk_position="last",
        )
        chunks.append(ChatGenerationChunk(message=last, generation_info=self._info(turn)))
        return chunks
