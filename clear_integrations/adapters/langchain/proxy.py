"""What a budgeted LangChain model does besides generating: pin the payer, delegate to the wrapped model, abandon.

:class:`Proxy` is the part :class:`~.chat_model.BudgetedChatModel` and :class:`~.llm.BudgetedLLM` share:

- its entry points (``invoke``, ``ainvoke``, ``stream``, ``astream``; ``batch`` and ``astream_events`` go through
  them) resolve the payer when the run is created (:mod:`.payer`) and keep it for the run, also for a stream read
  later; LangChain's own machinery (callbacks, cache, rate limiter, ``on_llm_end``) runs as for any model;
- what the wrapped model knows is asked of it: token counting, ``_llm_type``, identifying and tracing parameters,
  and any other attribute (``model_name``, ``temperature``, ``client``...);
- its runs carry the tag :data:`BUDGETED_TAG`, which tells :class:`~.callback.ClearCallbackHandler` that the call
  is already on the ledger.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from langchain_core.language_models import BaseLanguageModel
from langchain_core.runnables import RunnableConfig

from ...budgeting import Decision, Payer, Spender, abandon_answer
from ...tokens import count_tokens
from .payer import payer_of, pinned, resolve
from .usage import PromptCounter, model_name, model_tokenizer, prompt_counter

__all__ = ["BUDGETED_TAG", "Proxy", "Wiring", "inherited"]

#: Runs of budgeted models carry this tag; ``ClearCallbackHandler`` skips them (they are on the ledger already).
BUDGETED_TAG = "clear:budgeted"
T = TypeVar("T")


def _pinned(payer: Payer, chunks: Iterator[T]) -> Iterator[T]:
    try:
        while True:
            token = pinned.set(payer)
            try:
                chunk = next(chunks)
            except StopIteration:
                return
            finally:
                pinned.reset(token)
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            token = pinned.set(payer)
            try:
                close()
            finally:
                pinned.reset(token)


async def _apinned(payer: Payer, chunks: AsyncIterator[T]) -> AsyncIterator[T]:
    try:
        while True:
            token = pinned.set(payer)
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            finally:
                pinned.reset(token)
            yield chunk
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            token = pinned.set(payer)
            try:
                await aclose()
            finally:
                pinned.reset(token)


@dataclass(frozen=True, slots=True)
class Wiring:
    """What a budgeted model works with, fixed when it is built: the spender (controllers, payer, abandonment), how
    it counts prompts (``prompt``: ``(messages or text, tools) -> (tokens, exact)``) and completions, and whether the
    completion count is exact (the model's own tokenizer)."""

    spender: Spender
    prompt: PromptCounter
    completion: Callable[[str], int]
    exact: bool

    @classmethod
    def of(cls, model: BaseLanguageModel[Any], spender: Spender) -> Wiring:
        own, name = model_tokenizer(model), model_name(model)
        exact = own is not None or not count_tokens("", model=name).estimated
        return cls(spender, prompt_counter(model), lambda text: count_tokens(text, model=name, tokenizer=own).tokens,
                   exact)  # fmt: skip


def inherited(model: BaseLanguageModel[Any]) -> dict[str, Any]:
    """What a budgeted model takes over from the model it wraps: its callbacks, tags (plus :data:`BUDGETED_TAG`),
    metadata, verbosity and cache, so LangChain runs it as it ran the wrapped model."""
    return {
        "callbacks": model.callbacks,
        "tags": [*(model.tags or []), BUDGETED_TAG],
        "metadata": model.metadata,
        "verbose": model.verbose,
        "cache": model.cache,
    }


class Proxy:
    """The shared part of budgeted LangChain models (see the module docstring). The classes using it declare the
    pydantic fields ``model``, ``strict``, ``tenant_key``, ``session_key`` and the private ``_state``
    (a :class:`Wiring`)."""

    model: Any
    strict: bool | None
    tenant_key: str | None
    session_key: str | None

    @property
    def _wired(self) -> Wiring:
        """The model's :class:`Wiring` (read from pydantic's private storage directly: a hot path)."""
        return self.__pydantic_private__["_state"]  # type: ignore[no-any-return]

    @property
    def spender(self) -> Spender:
        """The spender: the controllers, the default payer and what an abandoned call gives back."""
        return self._wired.spender

    # -- who pays ---------------------------------------------------------------------------------------------------

    def _resolve(self, config: RunnableConfig | None) -> Payer:
        return resolve(self._wired.spender.payer, config, self.tenant_key, self.session_key)

    def _payer(self, metadata: Mapping[str, Any] | None) -> Payer:
        return payer_of(self._wired.spender.payer, metadata, self.tenant_key, self.session_key)

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        token = pinned.set(self._resolve(config))
        try:
            return super().invoke(input, config, **kwargs)  # type: ignore[misc]
        finally:
            pinned.reset(token)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        token = pinned.set(self._resolve(config))
        try:
            return await super().ainvoke(input, config, **kwargs)  # type: ignore[misc]
        finally:
            pinned.reset(token)

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        return _pinned(self._resolve(config), super().stream(input, config, **kwargs))  # type: ignore[misc]

    def astream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> AsyncIterator[Any]:
        return _apinned(self._resolve(config), super().astream(input, config, **kwargs))  # type: ignore[misc]

    # -- what the wrapped model knows ------------------------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return str(self.model._llm_type)

    @property
    def _identifying_params(self) -> Mapping[str, Any]:
        return dict(self.model._identifying_params)

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        return self.model._get_ls_params(stop=stop, **kwargs)

    def get_num_tokens(self, text: str) -> int:
        return int(self.model.get_num_tokens(text))

    def get_token_ids(self, text: str) -> list[int]:
        return list(self.model.get_token_ids(text))

    def get_num_tokens_from_messages(self, messages: Sequence[Any], tools: Sequence[Any] | None = None) -> int:
        return int(self.model.get_num_tokens_from_messages(messages, tools=tools))

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("_"):
            inner = self.__dict__.get("model")
            if inner is not None:
                return getattr(inner, name)
        return super().__getattr__(name)  # type: ignore[misc]

    # -- an abandoned call -----------------------------------------------------------------------------------------

    def _abandoned(self, decision: Decision, strict: bool | None = None) -> Any:
        """The fallback answer, or :class:`~clear_integrations.errors.QueryAbandoned` (a ``strict`` call: by default
        the proxy's ``strict``; and ``on_abandon="raise"``)."""
        strict = self.strict if strict is None else strict
        return abandon_answer("raise" if strict else self._wired.spender.on_abandon, decision)
