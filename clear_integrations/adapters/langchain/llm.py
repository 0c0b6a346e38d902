"""``BudgetedLLM``: a real LangChain text LLM (``BaseLLM``) that spends through the ledger; the text-completion twin
of :class:`~.chat_model.BudgetedChatModel` (same lifecycle, same payer rules, same fallback).

Each prompt of a ``generate`` batch is a call of its own: decided, capped in the provider's field (LlamaCpp
``max_tokens``, ...), committed with the usage the provider reported (``llm_output["token_usage"]``) or its text
counted with the model's own tokenizer (LlamaCpp reports none), and continued with the text so far appended when it
was cut at its cap and the price says the next tokens pay.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from functools import cache
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from pydantic import PrivateAttr

from ...budgeting import Decision, Generate, Generated, Outcome, Request, Spender, StreamMeter
from ...budgeting.continuation import joined_text
from ...budgeting.streams import astream, stream
from ...ledger import Usage
from .caps import capped, split_cap
from .proxy import Proxy, Wiring, inherited
from .usage import usage_of_result

__all__ = ["BudgetedLLM"]


@cache
def _takes_run_manager(method: Callable[..., Any]) -> bool:
    return "run_manager" in inspect.signature(method).parameters


class BudgetedLLM(Proxy, BaseLLM):
    """A text LLM that budgets every call of ``model`` on a ledger (see the module docstring and
    :class:`~.chat_model.BudgetedChatModel`)."""

    model: BaseLLM
    strict: bool = False
    tenant_key: str | None = None
    session_key: str | None = "thread_id"

    _state: Wiring = PrivateAttr()

    @classmethod
    def wrap(
        cls, model: BaseLLM, spender: Spender, *, tenant_key: str | None = None, session_key: str | None = "thread_id"
    ) -> BudgetedLLM:
        """``model`` budgeted by ``spender`` (a model already budgeted is returned as it is)."""
        if isinstance(model, BudgetedLLM):
            return model
        proxy = cls(model=model, **inherited(model), tenant_key=tenant_key, session_key=session_key)
        proxy._state = Wiring.of(model, spender)
        return proxy

    def _request(self, prompt: str, kwargs: dict[str, Any], metadata: Any) -> tuple[Request, dict[str, Any]]:
        requested, ceiling, rest = split_cap(self.model, kwargs)
        text = prompt if self._wired.spender.policy.estimator is not None else ""
        tokens, exact = self._wired.prompt(prompt, None)
        return Request(self._payer(metadata).scope, text, tokens, not exact, requested, ceiling), rest

    def _target(self, prompt: str, op: Generate, rest: dict[str, Any]) -> tuple[BaseLLM, str, dict[str, Any]]:
        target, extra = capped(self.model, op.decision.max_tokens)
        so_far = "".join(result.generations[0][0].text for result in op.outputs)
        return target, prompt + so_far, {**rest, **extra}

    def _generated(self, prompt: str, op: Generate, result: LLMResult) -> Generated:
        decision = op.decision
        usage = usage_of_result(result)
        text = result.generations[0][0].text if result.generations and result.generations[0] else ""
        if usage is None:
            usage = Usage(
                decision.prompt_tokens,
                self._wired.completion(text) if text else 0,
                estimated=decision.prompt_estimated or not self._wired.exact,
            )
        info = (result.generations[0][0].generation_info or {}) if text else {}
        cut = info.get("finish_reason") == "length" or (
            decision.max_tokens is not None and usage.completion >= decision.max_tokens
        )
        again = (
            self._wired.prompt(prompt + "".join(r.generations[0][0].text for r in op.outputs) + text, None)[0]
            if cut
            else 0
        )
        return Generated(result, usage, cut, again)

    def _result(self, outcome: Outcome) -> list[Generation]:
        decision = outcome.decision
        if decision.abandoned:
            return [Generation(text=str(self._abandoned(decision)), generation_info=decision.metadata())]
        text = ""
        for result in outcome.outputs:
            text = joined_text(text, result.generations[0][0].text)
        info = {**(outcome.outputs[-1].generations[0][0].generation_info or {}), **decision.metadata()}
        info["clear_usage"] = {
            "prompt": outcome.usage.prompt,
            "completion": outcome.usage.completion,
            "estimated": outcome.usage.estimated,
        }
        return [Generation(text=text, generation_info=info)]

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        rows = []
        for prompt in prompts:
            request, rest = self._request(prompt, kwargs, None if run_manager is None else run_manager.metadata)

            def send(op: Generate, prompt: str = prompt, rest: dict[str, Any] = rest) -> Generated:
                target, text, kw = self._target(prompt, op, rest)
                if _takes_run_manager(type(target)._generate):
                    kw["run_manager"] = run_manager
                return self._generated(prompt, op, target._generate([text], stop=stop, **kw))

            rows.append(self._result(self._wired.spender.sync.call(request, send)))
        return LLMResult(generations=rows)

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        rows = []
        for prompt in prompts:
            request, rest = self._request(prompt, kwargs, None if run_manager is None else run_manager.metadata)

            async def send(op: Generate, prompt: str = prompt, rest: dict[str, Any] = rest) -> Generated:
                target, text, kw = self._target(prompt, op, rest)
                if _takes_run_manager(type(target)._agenerate):
                    kw["run_manager"] = run_manager
                return self._generated(prompt, op, await target._agenerate([text], stop=stop, **kw))

            rows.append(self._result(await self._wired.spender.asynchronous.call(request, send)))
        return LLMResult(generations=rows)

    def _meter(self, decision: Decision) -> StreamMeter:
        return StreamMeter(decision.max_tokens, self._wired.completion, exact=self._wired.exact)

    def _chunk(self, decision: Decision) -> GenerationChunk:
        return GenerationChunk(text=str(self._abandoned(decision)), generation_info=decision.metadata())

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        request, rest = self._request(prompt, kwargs, None if run_manager is None else run_manager.metadata)

        def open_stream(decision: Decision) -> Iterator[GenerationChunk]:
            target, text, kw = self._target(prompt, Generate(decision), rest)
            if type(self.model)._stream is BaseLLM._stream:  # a model that cannot stream: one chunk
                return iter(_chunks(target._generate([text], stop=stop, run_manager=run_manager, **kw)))
            return target._stream(text, stop=stop, run_manager=run_manager, **kw)

        yield from stream(self._wired.spender.sync, request, open_stream, _read, self._chunk, self._meter)

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        request, rest = self._request(prompt, kwargs, None if run_manager is None else run_manager.metadata)

        async def open_stream(decision: Decision) -> AsyncIterator[GenerationChunk]:
            target, text, kw = self._target(prompt, Generate(decision), rest)
            model = type(self.model)
            if model._stream is BaseLLM._stream and model._astream is BaseLLM._astream:
                return _aiter(_chunks(await target._agenerate([text], stop=stop, run_manager=run_manager, **kw)))
            return target._astream(text, stop=stop, run_manager=run_manager, **kw)

        async for chunk in astream(
            self._wired.spender.asynchronous, request, open_stream, _read, self._chunk, self._meter
        ):
            yield chunk


def _read(chunk: GenerationChunk) -> tuple[str, Usage | None]:
    return chunk.text, None


def _chunks(result: LLMResult) -> list[GenerationChunk]:
    return [GenerationChunk(text=g.text, generation_info=g.generation_info) for g in result.generations[0]]


async def _aiter(chunks: list[GenerationChunk]) -> AsyncIterator[GenerationChunk]:
    for chunk in chunks:
        yield chunk
