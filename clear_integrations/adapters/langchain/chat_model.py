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
calls, so an agent loop ends) or raises :class:`~clear_integrations.errors.QueryAbandoned`. A call that demands a
structured answer (``with_structured_output``, a ``response_format``, a ``tool_choice`` that forces a tool call, as
``create_agent`` with a ``response_format`` does) always raises, also when its answer was cut at its cap with no
tool call: a fallback text, ``None`` or a parsing error is not the schema asked for.
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
from ...errors import QueryAbandoned
from ...ledger import Balance, Usage
from ...ledger.accounts import parse_scope
from .caps import capped, split_cap
from .chunks import Reader, as_chunk, atagged, charged, chunks_of, finish_reason, tagged, usage_metadata
from .proxy import Proxy, Wiring, inherited
from .runnables import replace_runnable
from .usage import (
    generation_text,
    model_name,
    usage_of_result,
)

__all__ = ["BudgetedChatModel"]


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
    strict: bool = False  # an abandoned or cut answer raises: the caller demands a tool call or a format


def _forced(kwargs: Mapping[str, Any]) -> bool:
    """The call demands a structured answer: a ``response_format``, or a ``tool_choice`` that forces a tool call
    (``with_structured_output``, ``create_agent``'s ``response_format``): a fallback text cannot be that answer."""
    if kwargs.get("response_format") is not None:
        return True
    choice = kwargs.get("tool_choice")
    if isinstance(choice, Mapping):
        choice = choice.get("type")
    return choice is True or (isinstance(choice, str) and choice not in ("auto", "none"))


class BudgetedChatModel(Proxy, BaseChatModel):
    """A chat model that budgets every call of ``model`` on a ledger (see the module docstring).

    Build one with :func:`~clear_integrations.adapters.langchain.budgeted`. ``strict``: whether an abandoned call
    raises :class:`~clear_integrations.errors.QueryAbandoned` (and so does an answer cut at its cap with no tool
    call) instead of answering with ``on_abandon``'s fallback; ``None`` (the default) raises for calls that demand a
    structured answer (a ``response_format``, or a ``tool_choice`` forcing a tool call), ``with_structured_output``
    uses a strict copy. ``tenant_key`` names a config value that is the tenant (e.g. ``"user_id"``),
    ``session_key`` one that is the session (default ``"thread_id"``).
    """

    model: BaseChatModel
    strict: bool | None = None
    tenant_key: str | None = None
    session_key: str | None = "thread_id"

    _state: Wiring = PrivateAttr()

    @classmethod
    def wrap(
        cls,
        model: BaseChatModel,
        spender: Spender,
        *,
        tenant_key: str | None = None,
        session_key: str | None = "thread_id",
        strict: bool | None = None,
    ) -> BudgetedChatModel:
        """``model`` budgeted by ``spender`` (a model already budgeted is returned as it is)."""
        if isinstance(model, BudgetedChatModel):
            return model
        proxy = cls(
            model=model,
            **inherited(model),
            rate_limiter=model.rate_limiter,
            disable_streaming=model.disable_streaming,
            output_version=model.output_version,
            tenant_key=tenant_key,
            session_key=session_key,
            strict=strict,
        )
        proxy._state = Wiring.of(model, spender)
        return proxy

    # -- what LangChain asks of a chat model -------------------------------------------------------------------------

    def _should_stream(self, *, async_api: bool, run_manager: Any = None, **kwargs: Any) -> bool:
        """As the wrapped model would decide: whether it can stream, its ``streaming`` and ``disable_streaming``
        settings, a streaming callback handler in the run."""
        return bool(self.model._should_stream(async_api=async_api, run_manager=run_manager, **kwargs))

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
        tokens, exact = self._wired.prompt(messages, tools)
        text = get_buffer_string(messages) if self._wired.spender.policy.estimator is not None else ""
        request = Request(
            self._payer(metadata).scope, text, tokens, not exact, requested, ceiling, extendable=not tools
        )
        strict = self.strict if self.strict is not None else _forced(rest)
        return _Call(messages, rest, request, tools, strict)

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
        message = result.generations[0].message if result.generations else None
        if usage is None:
            text = "".join(generation_text(g) for g in result.generations)
            usage = Usage(
                decision.prompt_tokens,
                self._wired.completion(text) if text else 0,
                estimated=decision.prompt_estimated or not self._wired.exact,
            )
            if isinstance(message, AIMessage):  # the provider said nothing: what is charged, for usage callbacks
                message.usage_metadata = usage_metadata(usage)  # type: ignore[assignment]
                name = model_name(self.model)
                if name and "model_name" not in message.response_metadata:
                    message.response_metadata["model_name"] = name
        cut = message is not None and finish_reason(message) == "length" and not getattr(message, "tool_calls", None)
        again = 0
        if cut and call.request.extendable:
            again = self._wired.prompt(self._target(call, Generate(decision, (*op.outputs, result)))[1], None)[0]
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

    def _result(self, outcome: Outcome, strict: bool) -> ChatResult:
        decision = outcome.decision
        if decision.abandoned:
            answer = self._abandoned(decision, strict)
            message = answer if isinstance(answer, AIMessage) else AIMessage(content=str(answer))
            message.response_metadata = {**message.response_metadata, **charged(decision, Usage())}
            return ChatResult(generations=[ChatGeneration(message=message)])
        results: list[ChatResult] = list(outcome.outputs)
        if len(results) == 1:
            result = results[0]
            for generation in result.generations:
                generation.message.response_metadata = {
                    **generation.message.response_metadata,
                    **charged(decision, outcome.usage),
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
            usage_metadata=usage_metadata(outcome.usage),
            response_metadata={**metadata, **charged(decision, outcome.usage)},
        )
        return ChatResult(generations=[ChatGeneration(message=joined)])

    @staticmethod
    def _cut_short(outcome: Outcome, strict: bool) -> bool:
        """A strict call (structured output) whose answer stopped at its cap with no usable tool call: a parser
        would make ``None`` or a parsing error of it."""
        if not strict or outcome.decision.abandoned or not outcome.outputs:
            return False
        generations = outcome.outputs[-1].generations
        message = generations[0].message if generations else None
        return message is not None and finish_reason(message) == "length" and not getattr(message, "tool_calls", None)

    @staticmethod
    def _too_short(decision: Decision, balances: list[Balance]) -> QueryAbandoned:
        """The error of a strict call cut at its cap (its tokens are committed): the account with the least left."""
        limited = [b for b in balances if b.limit is not None and b.mode != "soft"]
        tightest = min(limited, key=lambda b: b.remaining or 0, default=None)
        return QueryAbandoned(
            f"the answer was cut at its cap of {decision.max_tokens} tokens, too few for a structured answer",
            scope=decision.scope,
            account=None if tightest is None else tightest.account,
            remaining=None if tightest is None else tightest.remaining,
        )

    def _short(self, decision: Decision) -> QueryAbandoned:
        ledger = self._wired.spender.ledger
        return self._too_short(decision, [ledger.balance(a) for a in parse_scope(decision.scope).path])

    async def _ashort(self, decision: Decision) -> QueryAbandoned:
        ledger = self._wired.spender.asynchronous.ledger
        return self._too_short(decision, [await ledger.balance(a) for a in parse_scope(decision.scope).path])

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call = self._prepare(messages, kwargs, None if run_manager is None else run_manager.metadata)
        outcome = self._wired.spender.sync.call(call.request, lambda op: self._send(call, op, stop, run_manager))
        if self._cut_short(outcome, call.strict):
            raise self._short(outcome.decision)
        return self._result(outcome, call.strict)

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

        outcome = await self._wired.spender.asynchronous.call(call.request, send)
        if self._cut_short(outcome, call.strict):
            raise await self._ashort(outcome.decision)
        return self._result(outcome, call.strict)

    # -- streams ------------------------------------------------------------------------------------------------------

    def _meter(self, decision: Decision) -> StreamMeter:
        return StreamMeter(decision.max_tokens, self._wired.completion, exact=self._wired.exact)

    def _chunk(self, decision: Decision, strict: bool) -> ChatGenerationChunk:
        answer = self._abandoned(decision, strict)
        content = answer.content if isinstance(answer, AIMessage) else str(answer)
        message = AIMessageChunk(content=content, response_metadata=charged(decision, Usage()))
        return ChatGenerationChunk(message=message)

    def _streaming(self) -> bool:
        return type(self.model)._stream is not BaseChatModel._stream

    def _open(self, call: _Call, decision: Decision, stop: list[str] | None) -> Iterator[ChatGenerationChunk]:
        target, messages, kwargs = self._target(call, Generate(decision))
        if self._streaming():
            chunks = target._stream(messages, stop=stop, **kwargs)
        else:
            result = target._generate(messages, stop=stop, **kwargs)
            chunks = iter([as_chunk(g) for g in result.generations])
        return tagged(chunks, decision)

    async def _aopen(self, call: _Call, decision: Decision, stop: list[str] | None) -> AsyncIterator[Any]:
        target, messages, kwargs = self._target(call, Generate(decision))
        if type(self.model)._astream is not BaseChatModel._astream or self._streaming():
            return atagged(target._astream(messages, stop=stop, **kwargs), decision)
        result = await target._agenerate(messages, stop=stop, **kwargs)
        return atagged(chunks_of([as_chunk(g) for g in result.generations]), decision)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        call = self._prepare(messages, kwargs, None if run_manager is None else run_manager.metadata)
        reader = Reader(self._meter, model_name(self.model))
        yield from stream(
            self._wired.spender.sync,
            call.request,
            lambda decision: self._open(call, decision, stop),
            reader,
            lambda decision: self._chunk(decision, call.strict),
            reader.meter,
        )
        decision = reader.decision
        if call.strict and decision is not None and reader.cut_short():  # structured output: no parser can use it
            raise self._short(decision)
        closing = reader.closing()
        if closing is not None:
            yield closing

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

        reader = Reader(self._meter, model_name(self.model))
        async for chunk in astream(
            self._wired.spender.asynchronous,
            call.request,
            open_stream,
            reader,
            lambda decision: self._chunk(decision, call.strict),
            reader.meter,
        ):
            yield chunk
        decision = reader.decision
        if call.strict and decision is not None and reader.cut_short():
            raise await self._ashort(decision)
        closing = reader.closing()
        if closing is not None:
            yield closing
