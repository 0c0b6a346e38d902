"""``ClearBudget``: wrap any LangChain runnable so that every model call inside it spends through the ledger.

How the cap reaches a model nested inside a chain: LangChain hands per-call keywords only to the runnable invoked
directly (``prompt | model | parser`` never passes ``max_tokens`` to the model). So at wrap time ``ClearBudget``
walks the runnable tree (sequences, parallels, bindings such as ``bind_tools``, retries, fallbacks, branches,
assigns, ...) and copies it with each chat model or LLM replaced by a
:class:`~clear_integrations.adapters.langchain.proxy.BudgetedModel`, which decides each call and sets the cap in
the provider's own parameter. The user's chain is not modified. Models the walk cannot see (called inside a
``RunnableLambda`` or a LangGraph node, for example) cannot be capped, but they are still accounted for: when the
walk meets such a part, every call through ``ClearBudget`` carries a
:class:`~clear_integrations.adapters.langchain.callback.ClearCallbackHandler` for the same tenant, which skips the
calls the proxies already handled (tagged ``clear:budgeted``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from langchain_core.language_models import BaseLanguageModel
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import merge_configs
from pydantic import BaseModel

from ...estimators.base import Estimator
from ...ledger import AsyncLedger, Ledger
from ...policy import AsyncBudgetController, BudgetController, BudgetPolicy
from .callback import ClearCallbackHandler
from .proxy import Abandon, BudgetedModel, Scope, Spender

__all__ = ["ClearBudget", "budget_models"]


def _walk(value: Any, spender: Spender, opaque: list[Runnable[Any, Any]]) -> Any:
    if isinstance(value, BaseLanguageModel):
        return BudgetedModel(value, spender)
    if isinstance(value, BudgetedModel):
        return value
    if isinstance(value, Runnable) and isinstance(value, BaseModel):
        updates = {}
        for name in type(value).model_fields:
            child = getattr(value, name, None)
            new = _walk(child, spender, opaque)
            if new is not child:
                updates[name] = new
        return value.model_copy(update=updates) if updates else value
    if isinstance(value, Runnable):  # a lambda, a compiled graph: it may call models the walk cannot reach
        opaque.append(value)
        return value
    if isinstance(value, list | tuple):
        items = [_walk(item, spender, opaque) for item in value]
        if any(new is not old for new, old in zip(items, value, strict=True)):
            return type(value)(items) if isinstance(value, tuple) else items
        return value
    if isinstance(value, Mapping):
        mapped = {key: _walk(item, spender, opaque) for key, item in value.items()}
        return mapped if any(mapped[k] is not value[k] for k in value) else value
    return value


def budget_models(
    runnable: Runnable[Any, Any], spender: Spender
) -> tuple[Runnable[Any, Any], list[Runnable[Any, Any]]]:
    """A copy of ``runnable`` whose chat models and LLMs are budgeted proxies (the original is untouched), and the
    runnables the walk could not look into (lambdas, compiled graphs)."""
    opaque: list[Runnable[Any, Any]] = []
    walked: Runnable[Any, Any] = _walk(runnable, spender, opaque)
    return walked, opaque


class ClearBudget(Runnable[Any, Any]):
    """Run ``runnable`` with every model call decided, capped and accounted for on ``ledger``.

    ``tenant`` (and optionally ``session``) pay for the calls; a call's ``config["metadata"]`` may override them
    with ``clear_tenant`` / ``clear_session``. ``policy`` decides (default: caps to what the budgets have left);
    ``estimator`` is a shortcut for ``BudgetPolicy(estimator=...)``. ``on_abandon`` is what an abandoned query
    returns: ``"message"`` (a fallback answer), ``"raise"`` (:class:`~clear_integrations.errors.QueryAbandoned`),
    any other string (that answer), or a callable from the decision to the answer. ``async_ledger`` serves the
    async paths without blocking the event loop (default: the sync ledger in a worker thread). ``safety_net``
    adds a :class:`ClearCallbackHandler` to every call, to account for models the walk cannot see; by default
    it is added only when the runnable holds parts the walk cannot look into (lambdas, compiled graphs).
    """

    def __init__(
        self,
        runnable: Runnable[Any, Any],
        *,
        ledger: Ledger,
        tenant: str,
        session: str | None = None,
        policy: BudgetPolicy | None = None,
        estimator: Estimator | None = None,
        on_abandon: Abandon = "message",
        async_ledger: AsyncLedger | None = None,
        safety_net: bool | None = None,
    ) -> None:
        if policy is None:
            policy = BudgetPolicy(estimator=estimator)
        self.inner = runnable
        self.ledger = ledger
        self.policy = policy
        self.spender = Spender(
            sync=BudgetController(ledger, policy),
            scope=Scope(tenant, session),
            on_abandon=on_abandon,
            asynchronous=None if async_ledger is None else AsyncBudgetController(async_ledger, policy),
        )
        self.bound, opaque = budget_models(runnable, self.spender)
        needed = bool(opaque) if safety_net is None else safety_net
        self.safety_net = ClearCallbackHandler(ledger, tenant=tenant, session=session) if needed else None
        self.name = f"ClearBudget[{runnable.get_name()}]"

    def _with_net(self, config: Any) -> Any:
        """The caller's config (one, a list for batch, or None) with the safety-net handler added."""
        if self.safety_net is None:
            return config
        if isinstance(config, list):
            return [self._with_net(one) for one in config]
        return merge_configs(config, {"callbacks": [self.safety_net]})

    @property
    def InputType(self) -> Any:  # noqa: N802 - LangChain's name
        return self.inner.InputType

    @property
    def OutputType(self) -> Any:  # noqa: N802 - LangChain's name
        return self.inner.OutputType

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self.bound.invoke(input, self._with_net(config), **kwargs)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return await self.bound.ainvoke(input, self._with_net(config), **kwargs)

    def batch(self, inputs: list[Any], config: Any = None, *, return_exceptions: bool = False, **kwargs: Any) -> Any:
        return self.bound.batch(inputs, self._with_net(config), return_exceptions=return_exceptions, **kwargs)

    async def abatch(
        self, inputs: list[Any], config: Any = None, *, return_exceptions: bool = False, **kwargs: Any
    ) -> Any:
        return await self.bound.abatch(inputs, self._with_net(config), return_exceptions=return_exceptions, **kwargs)

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        yield from self.bound.stream(input, self._with_net(config), **kwargs)

    async def astream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> AsyncIterator[Any]:
        async for chunk in self.bound.astream(input, self._with_net(config), **kwargs):
            yield chunk

    def transform(self, input: Iterator[Any], config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        yield from self.bound.transform(input, self._with_net(config), **kwargs)

    async def atransform(
        self, input: AsyncIterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        async for chunk in self.bound.atransform(input, self._with_net(config), **kwargs):
            yield chunk
