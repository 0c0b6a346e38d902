"""``BudgetedChatModel``: a real LangChain chat model that spends through the ledger, wherever a model is called.

It stands in for the chat model it wraps: a ``BaseChatModel`` itself, so it works in LCEL chains, as the model of a
LangGraph node, of ``create_agent`` and ``create_react_agent``, inside tools and lambdas, in ``Send`` fan-outs; and
``bind_tools``, ``with_structured_output``, ``batch``, streaming, token counting and ``model_name`` pass through to
the wrapped model. LangChain's machinery runs once, for the budgeted model: callbacks and tracers see one model run
(with the wrapped model's name and parameters), its cache and rate limiter apply, a stream cut at its cap ends
with ``on_llm_end``.

Each call runs the lifecycle of :mod:`clear_integrations.budgeting` (decide, reserve, call the wrapped model with
the cap in its provider's own field, commit the usage the provider reported, continue an answer cut at its cap
while the price says it pays); this module only translates: messages to a prompt, results to usage, a cap to a
field. The decision is in each answer's ``response_metadata`` (``clear_*`` keys, and ``clear_usage``: what was
charged). An abandoned call never reaches the wrapped model: it answers with a fallback ``AIMessage`` (no tool
calls, so an agent loop ends) or raises :class:`~clear_integrations.errors.QueryAbandoned`; structured output always
raises (a fallback text is not the schema asked for).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, get_buffer_string
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from pydantic import PrivateAttr

from ...budgeting import Decision, Generate, Generated, Outcome, Request, Spender, StreamMeter
from ...budgeting.continuation import CONTINUE, joined_text
from ...budgeting.streams import astream, stream
from ...ledger import Usage
from ...tokens import count_tokens
from .caps import capped, split_cap
from .proxy import BUDGETED_TAG, Proxy
from .runnables import replace_runnable
from .usage import (
    PromptCounter,
    generation_text,
    model_name,
    model_tokenizer,
    prompt_counter,
    usage_of_mapping,
    usage_of_result,
)

__all__ = ["BudgetedChatModel"]

_CUT = ("length", "max_tokens", "MAX_TOKENS")


@cache
def _takes_run_manager(method: Callable[..., Any]) -> bool:
    return "run_manager" in inspect.signature(method).parameters


@dataclass(frozen=True, slots=True)
class _Call:
    """One user call: its messages, the keywords that go on to the wrapped model, and the budgeting request."""

    messages: list[BaseMessage]
    rest: dict[str, Any]
    request: Request
    tools: Any = field(default=None, repr=False)


def _finish(message: BaseMessage) -> str | None:
    metadata = message.response_metadata
    reason = metadata.get("finish_reason") or metadata.get("stop_reason") or metadata.get("done_reason")
    return "length" if reason in _CUT else reason


def _usage_metadata(usage: Usage) -> dict[str, Any]:
    found: dict[str, Any] = {
        "input_tokens": usage.prompt,
        "output_tokens": usage.completion,
        "total_tokens": usage.total,
    }
    if usage.reasoning:
        found["output_token_details"] = {"reasoning": usage.reasoning}
    return found


def _charged(decision: Decision, usage: Usage) -> dict[str, Any]:
    return {
        **decision.metadata(),
        "clear_usage": {
            "prompt": usage.prompt,
            "completion": usage.completion,
            "reasoning": usage.reasoning,
            "estimated": usage.estimated,
        },
    }


class BudgetedChatModel(Proxy, BaseChatModel):
    """A chat model that budgets every call of ``model`` on a ledger (see the module docstring).

    Build one with :func:`~clear_integrations.adapters.langchain.budgeted`. ``strict`` makes an abandoned call raise
    (structured output uses a strict copy); ``tenant_key`` names a config value that is the tenant (e.g.
    ``"user_id"``), ``session_key`` one that is the session (default ``"thread_id"``).
    """

    model: BaseChatModel
    strict: bool = False
    tenant_key: str | None = None
    session_key: str | None = "thread_id"

    _spender: Spender = PrivateAttr()
    _count: PromptCounter = PrivateAttr()
    _completion: Callable[[str], int] = PrivateAttr()
    _exact: bool = PrivateAttr(default=False)

    @classmethod
    def wrap(
        cls,
        model: BaseChatModel,
        spender: Spender,
        *,
        tenant_key: str | None = None,
        session_key: str | None = "thread_id",
    ) -> BudgetedChatModel:
        """``model`` budgeted by ``spender`` (a model already budgeted is returned as it is)."""
        if isinstance(model, BudgetedChatModel):
            return model
        proxy = cls(
            model=model,
            callbacks=model.callbacks,
            tags=[*(model.tags or []), BUDGETED_TAG],
            metadata=model.metadata,
            verbose=model.verbose,
            cache=model.cache,
            rate_limiter=model.rate_limiter,
            disable_streaming=model.disable_streaming,
            output_version=model.output_version,
            tenant_key=tenant_key,
            session_key=session_key,
        )
        proxy._spender = spender
        proxy._count = prompt_counter(model)
        own, name = model_tokenizer(model), model_name(model)
        proxy._completion = lambda text: count_tokens(text, model=name, tokenizer=own).tokens
        proxy._exact = own is not None or not count_tokens("", model=name).estimated
        return proxy

    # -- what LangChain asks of a chat model -------------------------------------------------------------------------

    def _should_stream(self, *, async_api: bool, run_manager: Any = None, **kwargs: Any) -> bool:
        if not self.model._should_stream(async_api=async_api, run_manager=run_manager, **kwargs):
            return False
        return super()._should_stream(async_api=async_api, run_manager=run_manager, **kwargs)

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: str | None = None, **kwargs: Any) -> Runnable[Any, Any]:
        """The wrapped model's ``bind_tools``, bound to this budgeted model (its tool formats, its options)."""
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        bound: Runnable[Any, Any] = replace_runnable(self.model.bind_tools(tools, **kwargs), self.model, self)
        return bound

    def with_structured_output(
        self, schema: dict[str, Any] | type, *, include_raw: bool = False, **kwargs: Any
    ) -> Runnable[LanguageModelInput, Any]:
        """The wrapped model's structured output, on a strict copy of this model: an abandoned call raises
        :class:`~clear_integrations.errors.QueryAbandoned` instead of handing a fallback text to the parser."""
        strict = self.model_copy(update={"strict": True})
        chain = self.model.with_structured_output(schema, include_raw=include_raw, **kwargs)
        budgeted_chain: Runnable[LanguageModelInput, Any] = replace_runnable(chain, self.model, strict)
        return budgeted_chain

    # -- one call -----------------------------------------------------------------------------------------------------

    def _prepare(
        self, messages: list[BaseMessage], kwargs: Mapping[str, Any], metadata: Mapping[str, Any] | None
    ) -> _Call:
        requested, ceiling, rest = split_cap(self.model, kwargs)
        tools = rest.get("tools") or rest.get("functions")
        tokens, exact = self._count(messages, tools)
        text = get_buffer_string(messages) if self._spender.policy.estimator is not None else ""
        request = Request(
            self._payer(metadata).scope, text, tokens, not exact, requested, ceiling, extendable=not tools
        )
        return _Call(messages, rest, request, tools)

    def _target(self, call: _Call, op: Generate) -> tuple[BaseChatModel, list[BaseMessage], dict[str, Any]]:
        target, extra = capped(self.model, op.decision.max_tokens)
        messages = call.messages
        if op.outputs:
            so_far = "".join(result.generations[0].message.text for result in op.outputs)
            messages = [*messages, AIMessage(content=so_far), HumanMessage(content=CONTINUE)]
        return target, messages, {**call.rest, **extra}

    def _generated(self, call: _Call, op: Generate, result: ChatResult) -> Generated:
        decision = op.decision
        usage = usage_of_result(result)
        if usage is None:
            text = "".join(generation_text(g) for g in result.generations)
            usage = Usage(
                decision.prompt_tokens,
                self._completion(text) if text else 0,
                estimated=decision.prompt_estimated or not self._exact,
            )
        message = result.generations[0].message if result.generations else None
        cut = message is not None and _finish(message) == "length" and not getattr(message, "tool_calls", None)
        again = 0
        if cut and call.request.extendable:
            again = self._count(self._target(call, Generate(decision, (*op.outputs, result)))[1], None)[0]
        return Generated(result, usage, cut, again)

    def _send(self, call: _Call, op: Generate, stop: list[str] | None, run_manager: Any) -> Generated:
        target, messages, kwargs = self._target(call, op)
        if _takes_run_manager(type(target)._generate):
            kwargs["run_manager"] = run_manager
        return self._generated(call, op, target._generate(messages, stop=stop, **kwargs))

    async def _asend(self, call: _Call, op: Generate, stop: list[str] | None, run_manager: Any) -> Generated:
        target, messages, kwargs = self._target(call, op)
        if _takes_run_manager(type(target)._agenerate):
            kwargs["run_manager"] = run_manager
        return self._generated(call, op, await target._agenerate(messages, stop=stop, **kwargs))

    def _result(self, outcome: Outcome) -> ChatResult:
        decision = outcome.decision
        if decision.abandoned:
            answer = self._abandoned(decision)
            message = answer if isinstance(answer, AIMessage) else AIMessage(content=str(answer))
            message.response_metadata = {**message.response_metadata, **_charged(decision, Usage())}
            return ChatResult(generations=[ChatGeneration(message=message)])
        results: list[ChatResult] = list(outcome.outputs)
        if len(results) == 1:
            result = results[0]
            for generation in result.generations:
                generation.message.response_metadata = {
                    **generation.message.response_metadata,
                    **_charged(decision, outcome.usage),
                }
            return result
        parts = [result.generations[0].message for result in results]
        text = ""
        metadata: dict[str, Any] = {}
        for part in parts:
            text = joined_text(text, part.text)
            metadata.update(part.response_metadata)
        joined = AIMessage(
            content=text,
            id=parts[0].id,
            usage_metadata=_usage_metadata(outcome.usage),
            response_metadata={**metadata, **_charged(decision, outcome.usage)},
        )
        return ChatResult(generations=[ChatGeneration(message=joined)])

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call = self._prepare(messages, kwargs, None if run_manager is None else run_manager.metadata)
        outcome = self._spender.sync.call(call.request, lambda op: self._send(call, op, stop, run_manager))
        return self._result(outcome)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call = self._prepare(messages, kwargs, None if run_manager is None else run_manager.metadata)

        async def send(op: Generate) -> Generated:
            return await self._asend(call, op, stop, run_manager)

        return self._result(await self._spender.asynchronous.call(call.request, send))

    # -- streams ------------------------------------------------------------------------------------------------------

    def _meter(self, decision: Decision) -> StreamMeter:
        return StreamMeter(decision.max_tokens, self._completion, exact=self._exact)

    def _chunk(self, decision: Decision) -> ChatGenerationChunk:
        answer = self._abandoned(decision)
        content = answer.content if isinstance(answer, AIMessage) else str(answer)
        message = AIMessageChunk(content=content, response_metadata=_charged(decision, Usage()))
        return ChatGenerationChunk(message=message)

    def _streaming(self) -> bool:
        return type(self.model)._stream is not BaseChatModel._stream

    def _open(self, call: _Call, decision: Decision, stop: list[str] | None) -> Iterator[ChatGenerationChunk]:
        target, messages, kwargs = self._target(call, Generate(decision))
        if self._streaming():
            chunks = target._stream(messages, stop=stop, **kwargs)
        else:
            result = target._generate(messages, stop=stop, **kwargs)
            chunks = iter([_as_chunk(g) for g in result.generations])
        return _tagged(chunks, decision)

    async def _aopen(self, call: _Call, decision: Decision, stop: list[str] | None) -> AsyncIterator[Any]:
        target, messages, kwargs = self._target(call, Generate(decision))
        if type(self.model)._astream is not BaseChatModel._astream or self._streaming():
            return _atagged(target._astream(messages, stop=stop, **kwargs), decision)
        result = await target._agenerate(messages, stop=stop, **kwargs)
        return _atagged(_aiter([_as_chunk(g) for g in result.generations]), decision)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        call = self._prepare(messages, kwargs, None if run_manager is None else run_manager.metadata)
        yield from stream(
            self._spender.sync,
            call.request,
            lambda decision: self._open(call, decision, stop),
            _Reader(),
            self._chunk,
            self._meter,
        )

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        call = self._prepare(messages, kwargs, None if run_manager is None else run_manager.metadata)

        async def open_stream(decision: Decision) -> AsyncIterator[Any]:
            return await self._aopen(call, decision, stop)

        async for chunk in astream(
            self._spender.asynchronous, call.request, open_stream, _Reader(), self._chunk, self._meter
        ):
            yield chunk


class _Reader:
    """Reads a stream's chunks: the new text (tool-call arguments included) and the usage reported so far (chunks
    carry parts of it that add up)."""

    def __init__(self) -> None:
        self.usage: Usage | None = None

    def __call__(self, chunk: ChatGenerationChunk) -> tuple[str, Usage | None]:
        message = chunk.message
        part = usage_of_mapping(getattr(message, "usage_metadata", None))
        if part is not None:
            self.usage = part if self.usage is None else self.usage + part
        calls = getattr(message, "tool_call_chunks", None) or []
        text = message.text + "".join(str(c.get("name") or "") + str(c.get("args") or "") for c in calls)
        return text, self.usage


def _as_chunk(generation: ChatGeneration) -> ChatGenerationChunk:
    message = generation.message
    chunk = AIMessageChunk(
        content=message.content,
        additional_kwargs=message.additional_kwargs,
        response_metadata=message.response_metadata,
        id=message.id,
        usage_metadata=getattr(message, "usage_metadata", None),
        tool_call_chunks=[
            {"name": c["name"], "args": str(c["args"]), "id": c.get("id"), "index": i}
            for i, c in enumerate(getattr(message, "tool_calls", []))
        ],
    )
    return ChatGenerationChunk(message=chunk, generation_info=generation.generation_info)


def _tag(chunk: ChatGenerationChunk, decision: Decision) -> ChatGenerationChunk:
    chunk.message.response_metadata = {**chunk.message.response_metadata, **decision.metadata()}
    return chunk


def _tagged(chunks: Iterator[ChatGenerationChunk], decision: Decision) -> Iterator[ChatGenerationChunk]:
    """The chunks, the first one carrying the decision (chunks merge their metadata, so it appears once)."""
    first = True
    try:
        for chunk in chunks:
            yield _tag(chunk, decision) if first else chunk
            first = False
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


async def _atagged(chunks: AsyncIterator[ChatGenerationChunk], decision: Decision) -> AsyncIterator[Any]:
    first = True
    try:
        async for chunk in chunks:
            yield _tag(chunk, decision) if first else chunk
            first = False
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


async def _aiter(items: list[ChatGenerationChunk]) -> AsyncIterator[ChatGenerationChunk]:
    for item in items:
        yield item
