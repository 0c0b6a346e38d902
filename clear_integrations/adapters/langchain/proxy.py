"""``BudgetedModel``: a runnable that stands in for one chat model or LLM and spends through the ledger.

Each call: decide (the controller estimates the curve, prices it, reserves the prompt plus the cap on the tenant
and the session), then call a copy of the model capped in its provider's own parameter, then commit the real usage
(or release everything on error). A chat answer cut at its cap (``finish_reason`` ``length``) is continued, on
``invoke``, while the policy says the next tokens are still worth their price and the ledger has them: the cut
answer and a "continue" turn go back to the model, and the continuation is reserved and committed too.
An abandoned query never reaches the model: it gets the fallback answer, or
:class:`~clear_integrations.errors.QueryAbandoned`. Streams are cut when they reach their cap, even from a model
that ignored it, and what was streamed is committed. The decision is in the model run's metadata (``clear_*``
keys), so callbacks and tracers see it, and in the fallback message's ``response_metadata``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel, BaseLanguageModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    BaseMessageChunk,
    HumanMessage,
    convert_to_messages,
    get_buffer_string,
)
from langchain_core.messages.ai import add_usage
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import ensure_config

from ...errors import QueryAbandoned
from ...policy import AsyncBudgetController, BudgetController, Decision
from ...tokens import count_tokens
from .caps import CAP_FIELDS, cap_model, current_cap
from .usage import model_name, model_tokenizer, usage_from_output

__all__ = ["Abandon", "BudgetedModel", "Scope", "Spender", "prompt_text", "requested_cap"]

Abandon = Literal["message", "raise"] | str | Callable[[Decision], Any]
DEFAULT_FALLBACK = "I can't answer this within the token budget."
CONTINUE = "Continue exactly where you stopped."


@dataclass(frozen=True)
class Scope:
    """Who pays: ``tenant`` and optionally ``session``; a call's ``metadata`` may name others."""

    tenant: str
    session: str | None = None

    def of(self, config: RunnableConfig) -> str:
        metadata = config.get("metadata") or {}
        tenant = str(metadata.get("clear_tenant", self.tenant))
        session = metadata.get("clear_session", self.session)
        return tenant if session is None else f"{tenant}/{session}"


@dataclass(frozen=True)
class Spender:
    """Everything a proxy needs, shared by all proxies of one wrapped runnable."""

    sync: BudgetController
    scope: Scope
    on_abandon: Abandon = "message"
    asynchronous: AsyncBudgetController | None = None

    def abandon(self, decision: Decision, *, chat: bool) -> Any:
        if self.on_abandon == "raise":
            raise QueryAbandoned(
                decision.reason,
                shadow_price=decision.shadow_price or 0.0,
                expected_accuracy=decision.expected_accuracy or 0.0,
            )
        if callable(self.on_abandon):
            return self.on_abandon(decision)
        text = DEFAULT_FALLBACK if self.on_abandon == "message" else self.on_abandon
        return AIMessage(content=text, response_metadata=decision.metadata()) if chat else text


def requested_cap(model: BaseLanguageModel[Any], kwargs: dict[str, Any]) -> tuple[int | None, dict[str, Any]]:
    """The cap the caller asked for (smallest of the call's cap keywords and the model's field), and the other
    keywords: the cap travels in the model's own field instead."""
    caps = [v for k, v in kwargs.items() if k in CAP_FIELDS and isinstance(v, int) and v > 0]
    own = current_cap(model)
    caps += [own] if own is not None else []
    rest = {k: v for k, v in kwargs.items() if k not in CAP_FIELDS}
    return (min(caps) if caps else None), rest


def _with_decision(config: RunnableConfig, decision: Decision) -> RunnableConfig:
    metadata = {**(config.get("metadata") or {}), **decision.metadata()}
    return {**config, "metadata": metadata, "tags": [*(config.get("tags") or []), "clear:budgeted"]}


class BudgetedModel(Runnable[LanguageModelInput, Any]):
    """Stands in for ``model`` inside a user's chain (see the module docstring)."""

    def __init__(self, model: BaseLanguageModel[Any], spender: Spender) -> None:
        self.model = model
        self.spender = spender
        self.name = f"Budgeted{type(model).__name__}"
        self._chat = isinstance(model, BaseChatModel)
        self._model_name = model_name(model)
        self._tokenizer = model_tokenizer(model)

    @property
    def InputType(self) -> Any:  # noqa: N802 - LangChain's name
        return self.model.InputType

    @property
    def OutputType(self) -> Any:  # noqa: N802 - LangChain's name
        return self.model.OutputType

    def _prompt(self, value: LanguageModelInput) -> tuple[str, int, bool]:
        text = prompt_text(value)
        counted = count_tokens(text, model=self._model_name, tokenizer=self._tokenizer)
        return text, counted.tokens, counted.estimated

    def _target(self, decision: Decision) -> Runnable[Any, Any]:
        return self.model if decision.max_tokens is None else cap_model(self.model, decision.max_tokens)

    def _commit_usage(self, output: Any, decision: Decision) -> Any:
        return usage_from_output(
            output,
            prompt_tokens=decision.prompt_tokens,
            prompt_estimated=decision.prompt_estimated,
            model=self._model_name,
            tokenizer=self._tokenizer,
        )

    def _begin(self, value: LanguageModelInput, config: RunnableConfig, kwargs: dict[str, Any]) -> tuple[Any, ...]:
        requested, rest = requested_cap(self.model, kwargs)
        text, tokens, _ = self._prompt(value)
        return text, tokens, requested, rest

    def invoke(self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        config = ensure_config(config)
        text, tokens, requested, rest = self._begin(input, config, kwargs)
        control = self.spender.sync
        decision = control.begin(self.spender.scope.of(config), text, requested=requested, prompt_tokens=tokens)
        if decision.abandoned:
            return self.spender.abandon(decision, chat=self._chat)
        try:
            output = self._target(decision).invoke(input, _with_decision(config, decision), **rest)
        except BaseException:
            control.fail(decision)
            raise
        usage = self._commit_usage(output, decision)
        control.end(decision, usage)
        return self._extend(input, config, rest, decision, output, usage.completion)

    def _extend(
        self,
        value: LanguageModelInput,
        config: RunnableConfig,
        rest: dict[str, Any],
        decision: Decision,
        output: Any,
        used: int,
    ) -> Any:
        """Continue a chat answer cut at its cap while the next tokens still beat the price (each continuation is
        decided, reserved and committed like a call of its own); returns the answers joined."""
        control = self.spender.sync
        while self._chat and isinstance(output, AIMessage) and _finish_reason(output) == "length":
            partial = output.text
            prompt = [*_messages(value), AIMessage(content=partial), HumanMessage(content=CONTINUE)]
            _, prompt_tokens, _ = self._prompt(prompt)
            extension = control.extend(decision, used=used, prompt_tokens=prompt_tokens)
            if extension is None or extension.max_tokens is None:
                break
            try:
                more = self._target(extension).invoke(prompt, _with_decision(config, extension), **rest)
            except BaseException:
                control.fail(extension)
                raise
            usage = self._commit_usage(more, extension)
            control.end(extension, usage)
            used += usage.completion
            output = _joined(output, more)
            decision = extension
        return output

    async def ainvoke(self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        control = self.spender.asynchronous
        if control is None:
            return await super().ainvoke(input, config, **kwargs)  # the sync ledger, in a worker thread
        config = ensure_config(config)
        text, tokens, requested, rest = self._begin(input, config, kwargs)
        decision = await control.begin(self.spender.scope.of(config), text, requested=requested, prompt_tokens=tokens)
        if decision.abandoned:
            return self.spender.abandon(decision, chat=self._chat)
        try:
            output = await self._target(decision).ainvoke(input, _with_decision(config, decision), **rest)
        except BaseException:
            await control.fail(decision)
            raise
        await control.end(decision, self._commit_usage(output, decision))
        return output

    def _counter(self) -> Callable[[str], int]:
        return lambda piece: count_tokens(piece, model=self._model_name, tokenizer=self._tokenizer).tokens

    def stream(self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        config = ensure_config(config)
        text, tokens, requested, rest = self._begin(input, config, kwargs)
        control = self.spender.sync
        decision = control.begin(self.spender.scope.of(config), text, requested=requested, prompt_tokens=tokens)
        if decision.abandoned:
            yield self._as_chunk(self.spender.abandon(decision, chat=self._chat))
            return
        merged: Any = None
        streamed, count = 0, self._counter()
        stream = self._target(decision).stream(input, _with_decision(config, decision), **rest)
        try:
            for chunk in stream:
                merged = chunk if merged is None else merged + chunk
                streamed += count(_chunk_text(chunk))
                yield chunk
                if decision.max_tokens is not None and streamed >= decision.max_tokens:
                    break  # the cap is reached even if the model ignored it: stop paying
        except BaseException:
            control.end(decision, self._streamed_usage(merged, decision, streamed))
            raise
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        control.end(decision, self._streamed_usage(merged, decision, streamed))

    async def astream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        control = self.spender.asynchronous
        if control is None:
            for chunk in self.stream(input, config, **kwargs):  # no async ledger: decide synchronously
                yield chunk
            return
        config = ensure_config(config)
        text, tokens, requested, rest = self._begin(input, config, kwargs)
        decision = await control.begin(self.spender.scope.of(config), text, requested=requested, prompt_tokens=tokens)
        if decision.abandoned:
            yield self._as_chunk(self.spender.abandon(decision, chat=self._chat))
            return
        merged: Any = None
        streamed, count = 0, self._counter()
        stream = self._target(decision).astream(input, _with_decision(config, decision), **rest)
        try:
            async for chunk in stream:
                merged = chunk if merged is None else merged + chunk
                streamed += count(_chunk_text(chunk))
                yield chunk
                if decision.max_tokens is not None and streamed >= decision.max_tokens:
                    break
        except BaseException:
            await control.end(decision, self._streamed_usage(merged, decision, streamed))
            raise
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        await control.end(decision, self._streamed_usage(merged, decision, streamed))

    def _streamed_usage(self, merged: Any, decision: Decision, streamed: int) -> Any:
        if merged is not None and getattr(merged, "usage_metadata", None):
            return self._commit_usage(merged, decision)
        from ...ledger import Usage

        return Usage(prompt=decision.prompt_tokens, completion=streamed, estimated=True)

    def _as_chunk(self, answer: Any) -> Any:
        if isinstance(answer, AIMessage):
            return AIMessageChunk(content=answer.content, response_metadata=answer.response_metadata)
        return answer


def _finish_reason(message: AIMessage) -> str | None:
    reason = message.response_metadata.get("finish_reason") or message.response_metadata.get("stop_reason")
    return "length" if reason in ("length", "max_tokens") else reason


def _messages(value: LanguageModelInput) -> list[BaseMessage]:
    if isinstance(value, PromptValue):
        return value.to_messages()
    if isinstance(value, str):
        return [HumanMessage(content=value)]
    return convert_to_messages(value)


def _joined(first: AIMessage, second: Any) -> AIMessage:
    """One answer from a cut answer and its continuation: texts joined, usage added, the last finish reason."""
    usage = first.usage_metadata
    if usage is not None and getattr(second, "usage_metadata", None) is not None:
        usage = add_usage(usage, second.usage_metadata)
    return AIMessage(
        content=first.text + " " + second.text,
        usage_metadata=usage,
        response_metadata={**first.response_metadata, **second.response_metadata},
        id=first.id,
    )


def prompt_text(value: LanguageModelInput) -> str:
    if isinstance(value, PromptValue):
        return value.to_string()
    if isinstance(value, str):
        return value
    return get_buffer_string(convert_to_messages(value))


def _chunk_text(chunk: Any) -> str:
    if isinstance(chunk, BaseMessageChunk):
        return chunk.text
    return chunk if isinstance(chunk, str) else str(chunk)
