"""``ClearBudgetLLM``: a LlamaIndex LLM that wraps another and spends through the ledger.

Enforcement model. Each call (chat, completion, stream, sync or async) is:

1. **decided**: the payer is resolved (:mod:`.scope`), the prompt counted (with the wrapped LLM's own tokenizer
   when it has one), and :meth:`~clear_integrations.policy.BudgetController.begin` estimates the query's curve,
   prices it and reserves the prompt plus the completion cap on the tenant and the session, atomically;
2. **abandoned**, if the budget or the price says stop: the wrapped LLM is never called and the call returns a
   fallback ``ChatResponse`` / ``CompletionResponse`` (the decision's ``clear_*`` keys in ``additional_kwargs``),
   or raises :class:`~clear_integrations.errors.QueryAbandoned` with ``on_abandon="raise"``. In an agent the
   fallback is a final answer without tool calls, so the agent ends gracefully;
3. **capped**: otherwise the call goes to a copy of the wrapped LLM with the cap in its provider's own parameter
   (:func:`~.caps.cap_llm`: OpenAI/Anthropic ``max_tokens``, Ollama ``num_predict``, LlamaCPP
   ``generate_kwargs["max_tokens"]``, ...), because many LlamaIndex LLMs ignore a per-call ``max_tokens``;
4. **committed**: the usage the provider reported (:mod:`.usage`), or the answer counted and marked estimated, is
   committed, and what the reservation held beyond it goes back to the pool; an error releases the reservation.
   Streams are cut at the cap, even from an LLM that ignored it: after the cap, chunks without new tokens (a
   finish reason, a usage report) still pass, so a provider that honours the cap ends normally and reports its
   usage; the first chunk with a token beyond the cap is paid for but not delivered, and the stream is closed.
   What streamed is committed (a stream the consumer closes early commits what it delivered; one that failed
   before delivering anything is released). A non-streamed answer cut at its cap is
   continued while the policy's curve says the next tokens are still worth their price (each continuation
   reserved and committed like a call of its own).

Streams decide lazily, on their first ``next()``: a stream that is never iterated reserves nothing (and with
``on_abandon="raise"`` the first ``next()`` raises). The mechanics live in :mod:`.spend`.

Payer. The wrapper's ``tenant`` / ``session``, unless the current task names others with
:func:`~.scope.clear_scope` or with ``instrument_tags({"clear_tenant": ..., "clear_session": ...})`` (both are
``ContextVar`` values, so they follow ``FunctionAgent`` / ``AgentWorkflow`` steps; :func:`~.scope.clear_scope` wins).

Events. ``ClearBudgetLLM``'s own methods are **not** decorated with ``llm_chat_callback`` /
``llm_completion_callback``: the wrapped LLM's decorated methods emit the LLM events (legacy callbacks and
instrumentation) exactly as they would without the wrapper, so a handler sees one user call once (as often as the
wrapped LLM emits it). Those events carry the instrumentation tags ``clear_budgeted=True``, ``clear_tenant``,
``clear_session`` and ``clear_reservation``, which tell an accounting handler (``ClearEventHandler``) that the
call is already on the ledger. An abandoned call reaches no LLM and emits no LLM event.

Async paths use ``async_ledger`` natively when given; otherwise the sync ledger runs in a worker thread
(``anyio.to_thread``), never on the event loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import LLM, ToolSelection
from pydantic import Field, PrivateAttr

from ...estimators.base import Estimator
from ...ledger import AsyncLedger, Ledger
from ...ledger.accounts import parse_scope
from ...policy import AsyncBudgetController, BudgetController, BudgetPolicy
from .calls import Abandon, Call
from .scope import Payer, current_payer
from .spend import Spender
from .usage import llm_model_name, llm_tokenizer

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

__all__ = ["ClearBudgetLLM"]


class ClearBudgetLLM(FunctionCallingLLM):
    """Wrap ``llm`` so that every call is decided, capped and accounted for on ``ledger`` (module docstring).

    Args:
        llm: any LlamaIndex LLM; a function-calling one stays function-calling (``achat_with_tools``,
            ``astream_chat_with_tools``, ``FunctionAgent``, structured prediction).
        ledger: the budgets. ``tenant`` (and optionally ``session``) pay, unless :func:`~.scope.clear_scope` or the
            instrumentation tags ``clear_tenant`` / ``clear_session`` name others for the current task.
        policy: how calls are decided (default: capped to what the budgets have left); ``estimator`` is a
            shortcut for ``BudgetPolicy(estimator=...)``.
        on_abandon: what an abandoned call returns: ``"message"`` (a fallback answer), ``"raise"``
            (:class:`~clear_integrations.errors.QueryAbandoned`), any other string (that answer), or a callable
            from the :class:`~clear_integrations.policy.Decision` to the answer (text or a response).
        async_ledger: serves the async paths natively (default: the sync ledger in a worker thread).
        tokenizer: counts the wrapped LLM's tokens exactly (default: LlamaCPP's own, else tiktoken, estimated).

    The wrapper copies the wrapped LLM's prompt settings (``system_prompt``, ``messages_to_prompt``,
    ``completion_to_prompt``, ``output_parser``, ``pydantic_program_mode``, ``query_wrapper_prompt``) and its
    ``callback_manager``, so ``predict``, ``structured_predict`` and query engines format prompts as the wrapped
    LLM would.
    """

    llm: LLM = Field(description="The wrapped LLM.")
    tenant: str = Field(description="The tenant that pays by default.")
    session: str | None = Field(default=None, description="The session that pays by default.")

    _spender: Spender = PrivateAttr()

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
        if policy is None:
            policy = BudgetPolicy(estimator=estimator)
        elif estimator is not None:
            policy = dataclasses.replace(policy, estimator=estimator)
        parse_scope(Payer(tenant, session).scope, "tenant/session")  # a malformed id fails here, not at the first call
        if not (callable(on_abandon) or isinstance(on_abandon, str)):
            raise TypeError(f"on_abandon must be 'message', 'raise', a string or a callable, not {on_abandon!r}")
        settings = {
            name: getattr(llm, name)
            for name in (
                "callback_manager",
                "system_prompt",
                "messages_to_prompt",
                "completion_to_prompt",
                "output_parser",
                "pydantic_program_mode",
                "query_wrapper_prompt",
            )
        }
        super().__init__(llm=llm, tenant=tenant, session=session, **{**settings, **kwargs})
        self._spender = Spender(
            BudgetController(ledger, policy),
            None if async_ledger is None else AsyncBudgetController(async_ledger, policy),
            on_abandon,
            tokenizer if tokenizer is not None else llm_tokenizer(llm),
            llm_model_name(llm),
        )

    @classmethod
    def class_name(cls) -> str:
        return "ClearBudgetLLM"

    @property
    def ledger(self) -> Ledger:
        """The ledger the calls spend on."""
        return self._spender.controller.ledger

    @property
    def policy(self) -> BudgetPolicy:
        """The policy that decides each call."""
        return self._spender.controller.policy

    @property
    def metadata(self) -> LLMMetadata:
        """The wrapped LLM's metadata; function-calling only if the wrapped LLM is a ``FunctionCallingLLM``."""
        meta = self.llm.metadata
        calling = isinstance(self.llm, FunctionCallingLLM) and meta.is_function_calling_model
        return meta.model_copy(update={"is_function_calling_model": calling})

    def _payer(self) -> Payer:
        return current_payer(Payer(self.tenant, self.session))

    # -- tools: the wrapped LLM's own formats ----------------------------------------------------------------

    def _calling(self) -> FunctionCallingLLM:
        if not isinstance(self.llm, FunctionCallingLLM):
            raise TypeError(f"{type(self.llm).__name__} is not a FunctionCallingLLM: it cannot call tools")
        return self.llm

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
        return self._calling()._prepare_chat_with_tools_compat(
            tools,
            user_msg=user_msg,
            chat_history=chat_history,
            verbose=verbose,
            allow_parallel_tool_calls=allow_parallel_tool_calls,
            tool_required=tool_required,
            **kwargs,
        )

    def _validate_chat_with_tools_response(
        self, response: ChatResponse, tools: Sequence[BaseTool], allow_parallel_tool_calls: bool = False, **kwargs: Any
    ) -> ChatResponse:
        return self._calling()._validate_chat_with_tools_response(
            response, tools, allow_parallel_tool_calls=allow_parallel_tool_calls, **kwargs
        )

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        return self._calling().get_tool_calls_from_response(
            response, error_on_no_tool_call=error_on_no_tool_call, **kwargs
        )

    # -- the LLM interface (not decorated: the wrapped LLM emits the events, see the module docstring) --------

    def _chat_call(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> Call:
        return self._spender.chat_call(self.llm, self._payer(), messages, kwargs)

    def _completion_call(self, prompt: str, formatted: bool, kwargs: dict[str, Any]) -> Call:
        return self._spender.completion_call(self.llm, self._payer(), prompt, formatted, kwargs)

    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        spender, call = self._spender, self._chat_call(messages, kwargs)
        decision = spender.begin(call)
        if decision.abandoned:
            return spender.fallback(decision, chat=True)  # type: ignore[no-any-return]
        done = spender.run(self.llm, call, decision, lambda llm, kw: llm.chat(messages, **kw))
        return spender.extend(self.llm, call, decision, done, messages)

    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        spender, call = self._spender, self._chat_call(messages, kwargs)
        decision = await spender.abegin(call)
        if decision.abandoned:
            return spender.fallback(decision, chat=True)  # type: ignore[no-any-return]

        async def send(llm: LLM, kw: dict[str, Any]) -> ChatResponse:
            return await llm.achat(messages, **kw)

        done = await spender.arun(self.llm, call, decision, send)
        return await spender.aextend(self.llm, call, decision, done, messages)

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        spender, call = self._spender, self._completion_call(prompt, formatted, kwargs)
        decision = spender.begin(call)
        if decision.abandoned:
            return spender.fallback(decision, chat=False)  # type: ignore[no-any-return]
        done = spender.run(self.llm, call, decision, lambda llm, kw: llm.complete(prompt, formatted=formatted, **kw))
        return spender.extend(self.llm, call, decision, done, None)

    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        spender, call = self._spender, self._completion_call(prompt, formatted, kwargs)
        decision = await spender.abegin(call)
        if decision.abandoned:
            return spender.fallback(decision, chat=False)  # type: ignore[no-any-return]

        async def send(llm: LLM, kw: dict[str, Any]) -> CompletionResponse:
            return await llm.acomplete(prompt, formatted=formatted, **kw)

        done = await spender.arun(self.llm, call, decision, send)
        return await spender.aextend(self.llm, call, decision, done, None)

    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        call = self._chat_call(messages, kwargs)
        return self._spender.stream(self.llm, call, lambda llm, kw: llm.stream_chat(messages, **kw), chat=True)

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        call = self._completion_call(prompt, formatted, kwargs)
        return self._spender.stream(
            self.llm, call, lambda llm, kw: llm.stream_complete(prompt, formatted=formatted, **kw), chat=False
        )

    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        call = self._chat_call(messages, kwargs)

        async def open_stream(llm: LLM, kw: dict[str, Any]) -> AsyncIterator[ChatResponse]:
            return await llm.astream_chat(messages, **kw)

        return self._spender.astream(self.llm, call, open_stream, chat=True)

    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        call = self._completion_call(prompt, formatted, kwargs)

        async def open_stream(llm: LLM, kw: dict[str, Any]) -> AsyncIterator[CompletionResponse]:
            return await llm.astream_complete(prompt, formatted=formatted, **kw)

        return self._spender.astream(self.llm, call, open_stream, chat=False)
