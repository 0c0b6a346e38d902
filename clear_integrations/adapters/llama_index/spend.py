"""``Spender``: the mechanics of one budgeted call to a LlamaIndex LLM, for ``ClearBudgetLLM``.

decide (:meth:`Spender.begin`) -> call a capped copy of the LLM (:meth:`~Spender.run`) -> commit the usage, or
release on error -> continue an answer cut at its cap while the curve says it pays (:meth:`~Spender.extend`);
streams (:meth:`~Spender.stream`) decide on their first ``next()``, stop at the cap and commit what streamed. Every
step has an async twin; the async ledger steps go through :class:`~.calls.Offloaded` when no async ledger is given.
The wrapped LLM is passed to each method (the wrapper's ``llm`` field), never kept here.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator, Iterator, Sequence
from typing import Any, TypeVar

import anyio
from llama_index.core.base.llms.types import ChatMessage, ChatResponse, CompletionResponse, MessageRole, ToolCallBlock
from llama_index.core.llms.llm import LLM

from ...ledger import Usage
from ...policy import AsyncBudgetController, BudgetController, Decision
from ...tokens import count_tokens
from .calls import CONTINUE, Abandon, Call, Meter, Offloaded, fallback, joined
from .caps import CAP_KWARGS, cap_kwargs, cap_llm, current_cap
from .scope import Payer, budget_tags
from .usage import finish_reason, prompt_of_messages, usage_from_response

__all__ = ["Spender"]

R = TypeVar("R", ChatResponse, CompletionResponse)
Send = Callable[[LLM, dict[str, Any]], R]
ASend = Callable[[LLM, dict[str, Any]], Awaitable[R]]


def _is_cap(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _plus(first: Usage, second: Usage) -> Usage:
    return Usage(
        prompt=first.prompt + second.prompt,
        completion=first.completion + second.completion,
        reasoning=first.reasoning + second.reasoning,
        estimated=first.estimated or second.estimated,
    )


def _continuing(prompt: Sequence[ChatMessage] | str) -> tuple[Send[Any], ASend[Any]]:
    """How to send a continuation: chat messages or a formatted completion prompt, sync and async."""
    if isinstance(prompt, str):
        text = prompt

        async def acomplete(llm: LLM, kw: dict[str, Any]) -> Any:
            return await llm.acomplete(text, formatted=True, **kw)

        return (lambda llm, kw: llm.complete(text, formatted=True, **kw)), acomplete
    turns = list(prompt)

    async def achat(llm: LLM, kw: dict[str, Any]) -> Any:
        return await llm.achat(turns, **kw)

    return (lambda llm, kw: llm.chat(turns, **kw)), achat


class Spender:
    """The ledger side of ``ClearBudgetLLM``: controllers, abandonment and token counting."""

    def __init__(
        self,
        controller: BudgetController,
        asynchronous: AsyncBudgetController | None,
        on_abandon: Abandon,
        tokenizer: Callable[[str], int] | None,
        model_name: str | None,
    ) -> None:
        self.controller = controller
        self.asynchronous: AsyncBudgetController | Offloaded = asynchronous or Offloaded(controller)
        self.on_abandon = on_abandon
        self.tokenizer = tokenizer
        self.model_name = model_name

    # -- preparing and deciding --------------------------------------------------------------------------------

    def count(self, text: str) -> int:
        return count_tokens(text, model=self.model_name, tokenizer=self.tokenizer).tokens

    def _call(self, llm: LLM, payer: Payer, prompt: str, kwargs: dict[str, Any], extra: str = "") -> Call:
        requested = [v for k, v in kwargs.items() if k in CAP_KWARGS and _is_cap(v)]
        own = current_cap(llm)
        requested += [own] if own is not None else []
        rest = {k: v for k, v in kwargs.items() if k not in CAP_KWARGS}
        exact = self.tokenizer is not None
        tokens = self.count(prompt + extra if not exact else prompt)
        return Call(payer, prompt, tokens, exact, min(requested) if requested else None, rest)

    def chat_call(self, llm: LLM, payer: Payer, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> Call:
        """A chat call; without an exact tokenizer the tool schemas count toward the prompt, as providers count them."""
        text = prompt_of_messages(llm, messages, exact=self.tokenizer is not None)
        tools = kwargs.get("tools")
        return self._call(llm, payer, text, kwargs, extra="" if not tools else "\n" + str(tools))

    def completion_call(self, llm: LLM, payer: Payer, prompt: str, formatted: bool, kwargs: dict[str, Any]) -> Call:
        """A completion call, counted as the LLM will send it (its ``completion_to_prompt`` unless ``formatted``)."""
        template = llm.completion_to_prompt
        sent = prompt if formatted or template is None else str(template(prompt))
        return self._call(llm, payer, sent, kwargs)

    def begin(self, call: Call) -> Decision:
        return self.controller.begin(
            call.payer.scope, call.prompt, requested=call.requested, prompt_tokens=call.prompt_tokens
        )

    async def abegin(self, call: Call) -> Decision:
        return await self.asynchronous.begin(
            call.payer.scope, call.prompt, requested=call.requested, prompt_tokens=call.prompt_tokens
        )

    def fallback(self, decision: Decision, *, chat: bool, stream: bool = False) -> Any:
        """The answer of an abandoned call, or :class:`~clear_integrations.errors.QueryAbandoned`."""
        return fallback(self.on_abandon, decision, chat=chat, stream=stream)

    # -- one call ------------------------------------------------------------------------------------------------

    @staticmethod
    def target(llm: LLM, decision: Decision) -> tuple[LLM, dict[str, Any]]:
        """The LLM to call (capped in its provider's field) and the per-call keywords for LLMs without one."""
        cap = decision.max_tokens
        return (llm, {}) if cap is None else (cap_llm(llm, cap), cap_kwargs(llm, cap))

    def usage(self, response: ChatResponse | CompletionResponse, call: Call) -> Usage:
        return usage_from_response(
            response,
            prompt_tokens=call.prompt_tokens,
            prompt_estimated=not call.exact,
            model=self.model_name,
            tokenizer=self.tokenizer,
        )

    def run(self, llm: LLM, call: Call, decision: Decision, send: Send[R]) -> tuple[R, Usage]:
        """Call the capped LLM, commit its usage (release everything if it raises)."""
        target, extra = self.target(llm, decision)
        try:
            with budget_tags(call.payer, decision):
                response = send(target, {**call.rest, **extra})
            usage = self.usage(response, call)
        except BaseException:
            self.controller.fail(decision)
            raise
        self.controller.end(decision, usage)
        return response, usage

    async def arun(self, llm: LLM, call: Call, decision: Decision, send: ASend[R]) -> tuple[R, Usage]:
        """The async twin of :meth:`run` (the release survives cancellation)."""
        target, extra = self.target(llm, decision)
        try:
            with budget_tags(call.payer, decision):
                response = await send(target, {**call.rest, **extra})
            usage = self.usage(response, call)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.asynchronous.fail(decision)
            raise
        await self.asynchronous.end(decision, usage)
        return response, usage

    # -- continuing an answer cut at its cap -----------------------------------------------------------------

    @staticmethod
    def _cut(response: ChatResponse | CompletionResponse, decision: Decision, used: int, call: Call) -> bool:
        """Whether an answer stopped at its cap and may be continued (never a tool call; only a priced decision
        carries the curve that can say the next tokens are worth their price)."""
        if decision.curve is None or decision.max_tokens is None or "tools" in call.rest:
            return False
        if isinstance(response, ChatResponse) and any(isinstance(b, ToolCallBlock) for b in response.message.blocks):
            return False
        reason = finish_reason(response)
        return reason == "length" if reason is not None else used >= decision.max_tokens

    def _again(
        self, llm: LLM, call: Call, base: Sequence[ChatMessage] | None, cut: ChatResponse | CompletionResponse
    ) -> tuple[Call, Sequence[ChatMessage] | str]:
        """A continuation: chat gets the answer so far and a "continue" turn; completion the formatted prompt with
        the answer so far appended (sent ``formatted=True``, so the template is not applied twice)."""
        if base is not None and isinstance(cut, ChatResponse):
            turns = [
                *base,
                ChatMessage(role=MessageRole.ASSISTANT, content=cut.message.content),
                ChatMessage(role=MessageRole.USER, content=CONTINUE),
            ]
            return self.chat_call(llm, call.payer, turns, call.rest), turns
        prompt = call.prompt + (cut.text if isinstance(cut, CompletionResponse) else "")
        return self.completion_call(llm, call.payer, prompt, True, call.rest), prompt

    def extend(
        self, llm: LLM, call: Call, decision: Decision, done: tuple[R, Usage], base: Sequence[ChatMessage] | None
    ) -> R:
        """Continue a cut answer while the next tokens still beat the price; returns the answers joined."""
        response, total = done
        while self._cut(response, decision, done[1].completion, call):
            more_call, prompt = self._again(llm, call, base, response)
            more = self.controller.extend(decision, used=total.completion, prompt_tokens=more_call.prompt_tokens)
            if more is None or more.max_tokens is None:
                break
            done = self.run(llm, more_call, more, _continuing(prompt)[0])
            response, total, decision = joined(response, done[0], (total, done[1])), _plus(total, done[1]), more
        return response

    async def aextend(
        self, llm: LLM, call: Call, decision: Decision, done: tuple[R, Usage], base: Sequence[ChatMessage] | None
    ) -> R:
        """The async twin of :meth:`extend`."""
        response, total = done
        while self._cut(response, decision, done[1].completion, call):
            more_call, prompt = self._again(llm, call, base, response)
            more = await self.asynchronous.extend(
                decision, used=total.completion, prompt_tokens=more_call.prompt_tokens
            )
            if more is None or more.max_tokens is None:
                break
            done = await self.arun(llm, more_call, more, _continuing(prompt)[1])
            response, total, decision = joined(response, done[0], (total, done[1])), _plus(total, done[1]), more
        return response

    # -- streams -------------------------------------------------------------------------------------------------

    def stream(
        self, llm: LLM, call: Call, open_stream: Callable[[LLM, dict[str, Any]], Iterator[R]], *, chat: bool
    ) -> Generator[R, None, None]:
        """Decide on the first ``next()``, stream from the capped LLM, stop at the cap, commit what streamed."""
        decision = self.begin(call)
        if decision.abandoned:
            yield self.fallback(decision, chat=chat, stream=True)
            return
        target, extra = self.target(llm, decision)
        meter, stream = Meter(decision, call, self.count), None
        try:
            with budget_tags(call.payer, decision):
                stream = open_stream(target, {**call.rest, **extra})
                iterator = iter(stream)
            while True:
                with budget_tags(call.payer, decision):
                    chunk = next(iterator, None)
                if chunk is None or meter.past_cap(chunk):
                    break  # the end, or a token beyond the cap from a model that ignored it: stop paying
                yield chunk
        except BaseException:
            self._settle(meter)
            raise
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                with budget_tags(call.payer, decision):
                    close()
        self.controller.end(decision, meter.usage())

    def _settle(self, meter: Meter) -> None:
        """A stream that failed or was closed early: commit what it delivered, or release all if nothing."""
        if meter.pieces:
            self.controller.end(meter.decision, meter.usage())
        else:
            self.controller.fail(meter.decision)

    async def _asettle(self, meter: Meter) -> None:
        with anyio.CancelScope(shield=True):
            if meter.pieces:
                await self.asynchronous.end(meter.decision, meter.usage())
            else:
                await self.asynchronous.fail(meter.decision)

    async def astream(
        self,
        llm: LLM,
        call: Call,
        open_stream: Callable[[LLM, dict[str, Any]], Awaitable[AsyncIterator[R]]],
        *,
        chat: bool,
    ) -> AsyncGenerator[R, None]:
        """The async twin of :meth:`stream`."""
        decision = await self.abegin(call)
        if decision.abandoned:
            yield self.fallback(decision, chat=chat, stream=True)
            return
        target, extra = self.target(llm, decision)
        meter, stream = Meter(decision, call, self.count), None
        try:
            with budget_tags(call.payer, decision):
                stream = await open_stream(target, {**call.rest, **extra})
            while True:
                with budget_tags(call.payer, decision):
                    chunk = await anext(stream, None)
                if chunk is None or meter.past_cap(chunk):
                    break  # the end, or a token beyond the cap from a model that ignored it: stop paying
                yield chunk
        except BaseException:
            await self._asettle(meter)
            raise
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True), budget_tags(call.payer, decision):
                    await aclose()
        await self.asynchronous.end(decision, meter.usage())
