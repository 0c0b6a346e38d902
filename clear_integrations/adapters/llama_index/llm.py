"""``ClearBudgetLLM``: a LlamaIndex LLM that wraps another and spends through the ledger.

Each call (chat, completion, stream, sync or async) runs the lifecycle of :mod:`clear_integrations.budgeting`:

1. **decided**: the payer is resolved when the call is made (:mod:`.scope`), the prompt counted (with the wrapped
   LLM's own tokenizer when it has one), and the policy estimates the query's curve, prices it and reserves the
   prompt plus the completion cap on the tenant and the session, atomically;
2. **abandoned**, if the budget or the price says stop: the wrapped LLM is never called and the call returns a
   fallback ``ChatResponse`` / ``CompletionResponse`` (the decision's ``clear_*`` keys in ``additional_kwargs`` and
   ``raw``, and in a query engine's ``Response.metadata["clear_abandoned"]``), or raises
   :class:`~clear_integrations.errors.QueryAbandoned` with ``on_abandon="raise"``. In an agent the fallback is a
   final answer without tool calls, so the agent ends gracefully. Structured prediction (``structured_predict`` and
   its async and streaming twins, ``as_structured_llm``) always raises ``QueryAbandoned`` (:mod:`.structured`);
3. **capped**: otherwise the call goes to a copy of the wrapped LLM with the cap in its provider's own parameter
   (:func:`~.caps.cap_llm`), because many LlamaIndex LLMs ignore a per-call ``max_tokens``;
4. **committed**: the usage the provider reported (:mod:`.usage`), or the answer counted and marked estimated; an
   error releases the reservation. Streams are cut at the cap by the :class:`~clear_integrations.budgeting.StreamMeter`
   rule; what streamed is committed. A non-streamed answer cut at its cap is continued while the policy's curve
   says the next tokens are still worth their price.

Streams decide lazily, on their first ``next()``, but their payer is the one in force when the stream was created.

Events. ``ClearBudgetLLM``'s own methods are **not** decorated with ``llm_chat_callback`` and open no
instrumentation span: the wrapped LLM's decorated methods emit the LLM events (legacy callbacks and
instrumentation) and the span exactly as they would without the wrapper, so a handler (``TokenCountingHandler``,
``ClearEventHandler``) or a tracer sees one user call once. A callback manager
set on the wrapper after it was built (``Settings.callback_manager`` through ``Settings.llm``, a synthesizer's or
engine's ``callback_manager=``) is set on the wrapped LLM too. The inner events carry the instrumentation tags
``clear_budgeted=True``, ``clear_tenant``, ``clear_session`` and ``clear_reservation``.

Async paths use ``async_ledger`` when given; otherwise the ledger runs in worker threads, never on the event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    ToolCallBlock,
)
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import LLM
from llama_index_instrumentation.dispatcher import DISPATCHER_SPAN_DECORATED_ATTR
from pydantic import Field, PrivateAttr

from ...budgeting import (
    Abandon,
    BudgetPolicy,
    Decision,
    Generate,
    Generated,
    Outcome,
    Payer,
    Request,
    Spender,
    StreamMeter,
)
from ...budgeting.streams import astream, stream
from ...estimators.base import Estimator
from ...ledger import AsyncLedger, Ledger
from ...tokens import count_tokens
from .calls import Call, continuation, fallback, joined
from .caps import CAP_KWARGS, capped, current_cap, user_set_cap
from .chunks import Reader, atagged, tagged
from .responses import install_response_handler, record_abandoned, record_stream
from .scope import budget_tags, current_payer
from .structured import astrict_stream, is_strict, strict_stream, strictly
from .tools import WrappedTools
from .usage import finish_reason, llm_model_name, llm_tokenizer, prompt_of_messages, usage_from_response

if TYPE_CHECKING:
    pass

__all__ = ["ClearBudgetLLM"]

Response = ChatResponse | CompletionResponse
F = TypeVar("F", bound=Callable[..., Any])
_SETTINGS = (
    "callback_manager",
    "system_prompt",
    "messages_to_prompt",
    "completion_to_prompt",
    "output_parser",
    "pydantic_program_mode",
    "query_wrapper_prompt",
)


def _positive(value: Any) -> int | None:
    return value if type(value) is int and value > 0 else None


def _unspanned(method: F) -> F:
    """Keep LlamaIndex from opening an instrumentation span for the wrapper's own call (it wraps every LLM method
    of a subclass): the wrapped LLM's span and events are the call's, seen once, and a second span per call cost
    about a third of the wrapper's overhead. LlamaIndex's ``dispatcher.span`` leaves a method marked this way as it
    is."""
    setattr(method, DISPATCHER_SPAN_DECORATED_ATTR, True)
    return method


@dataclass(frozen=True, slots=True)
class _Wiring:
    spender: Spender
    tokenizer: Callable[[str], int] | None
    model_name: str | None


class ClearBudgetLLM(WrappedTools, FunctionCallingLLM):
    """Wrap ``llm`` so that every call is decided, capped and accounted for on ``ledger`` (module docstring).

    Args:
        llm: any LlamaIndex LLM; a function-calling one stays function-calling (``achat_with_tools``,
            ``astream_chat_with_tools``, ``FunctionAgent``, structured prediction).
        ledger: the budgets. ``tenant`` (and optionally ``session``) pay, unless the instrumentation tags
            ``clear_tenant`` / ``clear_session`` or :func:`~clear_integrations.budgeting.clear_scope` name others.
        policy: how calls are decided (default: capped to what the budgets have left); ``estimator`` is a
            shortcut for ``BudgetPolicy(estimator=...)``.
        on_abandon: what an abandoned call returns: ``"message"`` (a fallback answer), ``"raise"``
            (:class:`~clear_integrations.errors.QueryAbandoned`), any other string (that answer), or a callable
            from the :class:`~clear_integrations.budgeting.Decision` to the answer (text or a response).
        async_ledger: the same store as an async ledger (default: the ledger from worker threads).
        tokenizer: counts the wrapped LLM's tokens exactly (default: LlamaCPP's own, else tiktoken, estimated).

    The wrapper copies the wrapped LLM's prompt settings (``system_prompt``, ``messages_to_prompt``,
    ``completion_to_prompt``, ``output_parser``, ``pydantic_program_mode``, ``query_wrapper_prompt``) and its
    ``callback_manager``, so ``predict``, ``structured_predict`` and query engines format prompts as the wrapped
    LLM would.
    """

    llm: LLM = Field(description="The wrapped LLM.")
    tenant: str = Field(description="The tenant that pays by default.")
    session: str | None = Field(default=None, description="The session that pays by default.")

    _state: _Wiring = PrivateAttr()

    def __init__(
        self,
        llm: LLM,
        *,
        ledger: Ledger,
        tenant: str,
        session: str | None = None,
        policy: BudgetPolicy | None = None,
        estimator: Estimator | None = None,
        on_abandon: Abandon = "message",
        async_ledger: AsyncLedger | None = None,
        tokenizer: Callable[[str], int] | None = None,
        **kwargs: Any,
    ) -> None:
        spender = Spender.open(
            ledger,
            tenant=tenant,
            session=session,
            policy=policy,
            estimator=estimator,
            on_abandon=on_abandon,
            async_ledger=async_ledger,
        )
        settings = {name: getattr(llm, name) for name in _SETTINGS}
        super().__init__(llm=llm, tenant=tenant, session=session, **{**settings, **kwargs})
        if "callback_manager" in kwargs:
            llm.callback_manager = self.callback_manager
        self._state = _Wiring(spender, tokenizer if tokenizer is not None else llm_tokenizer(llm), llm_model_name(llm))
        install_response_handler()

    @property
    def _wired(self) -> _Wiring:
        """The spender and the counting, fixed at construction (read from pydantic's private storage directly: a hot
        path)."""
        return self.__pydantic_private__["_state"]  # type: ignore[index,no-any-return]

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name == "callback_manager" and "llm" in self.__dict__:  # events come from the wrapped LLM: it must see it
            self.llm.callback_manager = value

    @classmethod
    def class_name(cls) -> str:
        return "ClearBudgetLLM"

    @property
    def ledger(self) -> Ledger:
        """The ledger the calls spend on."""
        return self._wired.spender.ledger

    @property
    def policy(self) -> BudgetPolicy:
        """The policy that decides each call."""
        return self._wired.spender.policy

    @property
    def metadata(self) -> LLMMetadata:
        """The wrapped LLM's metadata; function-calling only if the wrapped LLM is a ``FunctionCallingLLM``."""
        meta = self.llm.metadata
        calling = isinstance(self.llm, FunctionCallingLLM) and meta.is_function_calling_model
        return meta.model_copy(update={"is_function_calling_model": calling})

    # -- translation: one call, its model calls, its answer ---------------------------------------------------

    def _count(self, text: str) -> int:
        return count_tokens(text, model=self._wired.model_name, tokenizer=self._wired.tokenizer).tokens

    def _call(self, kwargs: dict[str, Any], *, messages: Sequence[ChatMessage] | None = None, prompt: str = "") -> Call:
        """A call made now: its payer resolved now; tool schemas count toward the prompt (as providers count them)
        unless the LLM's own tokenizer counts."""
        caps = [_positive(value) for key, value in kwargs.items() if key in CAP_KWARGS]
        own = current_cap(self.llm)
        ceiling = None
        if own is not None and user_set_cap(self.llm):
            caps.append(own)
        else:
            ceiling = own
        found = [cap for cap in caps if cap is not None]
        rest = {key: value for key, value in kwargs.items() if key not in CAP_KWARGS}
        exact = self._wired.tokenizer is not None
        tools = rest.get("tools")
        text = prompt if messages is None else prompt_of_messages(self.llm, messages, exact=exact)
        counted = text + ("\n" + str(tools) if tools and not exact else "")
        payer = current_payer(Payer(self.tenant, self.session))
        shown = text if self._wired.spender.policy.estimator is not None else ""
        request = Request(
            payer.scope,
            shown,
            self._count(counted),
            not exact,
            min(found) if found else None,
            ceiling,
            extendable="tools" not in rest,
        )
        return Call(payer, request, rest, messages, text)

    def _chat_call(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> Call:
        return self._call(kwargs, messages=messages)

    def _completion_call(self, prompt: str, formatted: bool, kwargs: dict[str, Any]) -> Call:
        """A completion, counted as the LLM will send it (its ``completion_to_prompt`` unless ``formatted``)."""
        template = self.llm.completion_to_prompt
        return self._call(kwargs, prompt=prompt if formatted or template is None else str(template(prompt)))

    def _generated(self, call: Call, op: Generate, response: Response) -> Generated:
        decision = op.decision
        usage = usage_from_response(
            response,
            prompt_tokens=decision.prompt_tokens,
            prompt_estimated=decision.prompt_estimated,
            model=self._wired.model_name,
            tokenizer=self._wired.tokenizer,
        )
        tool_call = isinstance(response, ChatResponse) and any(
            isinstance(block, ToolCallBlock) for block in response.message.blocks
        )
        reason = finish_reason(response)
        cut = (
            decision.max_tokens is not None
            and not tool_call
            and (reason == "length" if reason is not None else usage.completion >= decision.max_tokens)
        )
        again = 0
        if cut and call.request.extendable:
            following = continuation(call, (*op.outputs, response))
            again = self._count(
                following
                if isinstance(following, str)
                else prompt_of_messages(self.llm, following, exact=self._wired.tokenizer is not None)
            )
        return Generated(response, usage, cut, again)

    def _sending(self, call: Call, op: Generate) -> tuple[LLM, Any, dict[str, Any]]:
        """The capped LLM, what to send (the caller's messages or formatted prompt, or a continuation), and the
        keywords (a completion is always sent formatted: ``call.prompt`` is already what the LLM would send)."""
        target, extra = capped(self.llm, op.decision.max_tokens)
        sent = continuation(call, op.outputs) if op.outputs else call.messages if call.chat else call.prompt
        return target, sent, {**call.rest, **extra} if call.chat else {**call.rest, **extra, "formatted": True}

    def _send(self, call: Call, op: Generate) -> Generated:
        target, sent, kwargs = self._sending(call, op)
        with budget_tags(call.payer, op.decision):
            response: Response = target.chat(sent, **kwargs) if call.chat else target.complete(sent, **kwargs)
        return self._generated(call, op, response)

    async def _asend(self, call: Call, op: Generate) -> Generated:
        target, sent, kwargs = self._sending(call, op)
        with budget_tags(call.payer, op.decision):
            if call.chat:
                response: Response = await target.achat(sent, **kwargs)
            else:
                response = await target.acomplete(sent, **kwargs)
        return self._generated(call, op, response)

    def _abandoned(self, decision: Decision, *, chat: bool, stream: bool = False) -> Any:
        record_abandoned(decision)
        if is_strict():  # structured prediction: a fallback text is not the schema asked for (.structured)
            raise decision.error()
        return fallback(self._wired.spender.on_abandon, decision, chat=chat, stream=stream)

    def _answer(self, call: Call, outcome: Outcome) -> Any:
        decision = outcome.decision
        if decision.abandoned:
            return self._abandoned(decision, chat=call.chat)
        if len(outcome.outputs) > 1:
            return joined(outcome.outputs, outcome.usage, decision)
        response: Response = outcome.outputs[0]
        response.additional_kwargs = {**response.additional_kwargs, **decision.metadata()}
        return response

    def _run(self, call: Call) -> Any:
        return self._answer(call, self._wired.spender.sync.call(call.request, lambda op: self._send(call, op)))

    async def _arun(self, call: Call) -> Any:
        async def send(op: Generate) -> Generated:
            return await self._asend(call, op)

        return self._answer(call, await self._wired.spender.asynchronous.call(call.request, send))

    # -- streams ------------------------------------------------------------------------------------------------

    def _meter(self, decision: Decision) -> StreamMeter:
        return StreamMeter(decision.max_tokens, self._count, exact=self._wired.tokenizer is not None)

    def _stream(self, call: Call) -> Iterator[Any]:
        def open_stream(decision: Decision) -> Iterator[Response]:
            target, sent, kwargs = self._sending(call, Generate(decision))
            with budget_tags(call.payer, decision):
                chunks = target.stream_chat(sent, **kwargs) if call.chat else target.stream_complete(sent, **kwargs)
            return tagged(chunks, call.payer, decision)

        def abandoned(decision: Decision) -> Any:
            return self._abandoned(decision, chat=call.chat, stream=True)

        chunks = stream(self._wired.spender.sync, call.request, open_stream, Reader(), abandoned, self._meter)
        record_stream(chunks)  # a streaming query's response closes it with its own stream (.responses)
        return chunks

    def _astream(self, call: Call) -> AsyncIterator[Any]:
        async def open_stream(decision: Decision) -> AsyncIterator[Response]:
            target, sent, kwargs = self._sending(call, Generate(decision))
            chunks: AsyncIterator[Response]
            with budget_tags(call.payer, decision):
                if call.chat:
                    chunks = await target.astream_chat(sent, **kwargs)
                else:
                    chunks = await target.astream_complete(sent, **kwargs)
            return atagged(chunks, call.payer, decision)

        def abandoned(decision: Decision) -> Any:
            return self._abandoned(decision, chat=call.chat, stream=True)

        chunks = astream(self._wired.spender.asynchronous, call.request, open_stream, Reader(), abandoned, self._meter)
        record_stream(chunks)
        return chunks

    # -- structured prediction: an abandoned call raises QueryAbandoned, whatever on_abandon says (.structured) ----

    def structured_predict(self, *args: Any, **kwargs: Any) -> Any:
        with strictly():
            return super().structured_predict(*args, **kwargs)

    async def astructured_predict(self, *args: Any, **kwargs: Any) -> Any:
        with strictly():
            return await super().astructured_predict(*args, **kwargs)

    def stream_structured_predict(self, *args: Any, **kwargs: Any) -> Any:
        return strict_stream(super().stream_structured_predict(*args, **kwargs))

    async def astream_structured_predict(self, *args: Any, **kwargs: Any) -> Any:
        with strictly():
            parts = await super().astream_structured_predict(*args, **kwargs)
        return astrict_stream(parts)

    # -- the LLM interface (no events, no span of its own: the wrapped LLM's, see the module docstring) --------

    @_unspanned
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._run(self._chat_call(messages, kwargs))  # type: ignore[no-any-return]

    @_unspanned
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await self._arun(self._chat_call(messages, kwargs))  # type: ignore[no-any-return]

    @_unspanned
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._run(self._completion_call(prompt, formatted, kwargs))  # type: ignore[no-any-return]

    @_unspanned
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await self._arun(self._completion_call(prompt, formatted, kwargs))  # type: ignore[no-any-return]

    @_unspanned
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return self._stream(self._chat_call(messages, kwargs))  # type: ignore[return-value]

    @_unspanned
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return self._stream(self._completion_call(prompt, formatted, kwargs))  # type: ignore[return-value]

    @_unspanned
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        return self._astream(self._chat_call(messages, kwargs))  # type: ignore[return-value]

    @_unspanned
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        return self._astream(self._completion_call(prompt, formatted, kwargs))  # type: ignore[return-value]
