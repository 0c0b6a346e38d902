"""``ClearBudget``: wrap any LangChain runnable (a chain, a compiled LangGraph graph) so that every model call
inside it spends through the ledger.

LangChain passes per-call keywords only to the runnable invoked directly (``prompt | model | parser`` never passes
``max_tokens`` to the model), so at wrap time ``ClearBudget`` copies the runnable with each chat model and LLM it
can reach replaced by its budgeted twin (:func:`~.budgeted.budgeted`): through sequences, parallels, bindings
(``bind_tools``), retries, fallbacks, branches, structured-output chains and the nodes of compiled LangGraph graphs
(:mod:`.runnables`). The user's runnable is not modified.

A model called from inside a function (a ``RunnableLambda``, a LangGraph function node, a prebuilt agent's model
node) cannot be reached. When the walk sees such a function refer to a model, it says so at construction with a
:class:`~clear_integrations.errors.ClearWarning` naming the part, the model and the fix (wrap the model with
``budgeted()`` where it is built). And whenever the runnable holds functions, every call carries a
:class:`~.callback.ClearCallbackHandler` for the same payer: it accounts for those models' calls, refuses them with
:class:`~clear_integrations.errors.QueryAbandoned` once a hard budget is spent, warns once per model it could not
cap, and skips the calls the budgeted models already handled.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.language_models import BaseChatModel, BaseLLM
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import merge_configs

from ...budgeting import Abandon, BudgetPolicy, Spender
from ...budgeting.payer import scope_names
from ...errors import ClearWarning
from ...estimators.base import Estimator
from ...ledger import AsyncLedger, Ledger
from .callback import ClearCallbackHandler
from .chat_model import BudgetedChatModel
from .llm import BudgetedLLM
from .runnables import models_referenced, rebuild

__all__ = ["ClearBudget", "budget_models"]


def budget_models(
    runnable: Runnable[Any, Any],
    spender: Spender,
    *,
    tenant_key: str | None = None,
    session_key: str | None = "thread_id",
) -> tuple[Runnable[Any, Any], list[Runnable[Any, Any]]]:
    """A copy of ``runnable`` whose chat models and LLMs are budgeted (the original is untouched), and the
    runnables the walk could not look into (functions)."""

    def swap(part: Any) -> Any:
        if isinstance(part, BaseChatModel):
            return BudgetedChatModel.wrap(part, spender, tenant_key=tenant_key, session_key=session_key)
        if isinstance(part, BaseLLM):
            return BudgetedLLM.wrap(part, spender, tenant_key=tenant_key, session_key=session_key)
        return part

    opaque: list[Runnable[Any, Any]] = []
    return rebuild(runnable, swap, opaque), opaque


def _warn_unreachable(opaque: list[Runnable[Any, Any]]) -> None:
    for part in opaque:
        for name, model in models_referenced(part):
            warnings.warn(
                f"ClearBudget cannot cap {type(model).__name__} {name!r}, which {part.get_name()!r} calls from its "
                "code: its calls are only accounted for, and refused once a hard budget is spent. Wrap the model "
                f"where it is built: {name} = budgeted({name}, ledger=..., tenant=...)",
                ClearWarning,
                stacklevel=4,
            )


class ClearBudget(Runnable[Any, Any]):
    """Run ``runnable`` with every model call decided, capped and accounted for on ``ledger`` (module docstring).

    The payer, the policy, ``on_abandon`` and ``async_ledger`` are as for :func:`~.budgeted.budgeted`.
    ``safety_net`` adds a :class:`ClearCallbackHandler` to every call, for the models the walk cannot reach; by
    default it is added when the runnable holds functions.
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
        tenant_key: str | None = None,
        session_key: str | None = "thread_id",
    ) -> None:
        self.inner = runnable
        self.spender = Spender.open(
            ledger,
            tenant=tenant,
            session=session,
            policy=policy,
            estimator=estimator,
            on_abandon=on_abandon,
            async_ledger=async_ledger,
        )
        self.ledger, self.policy = ledger, self.spender.policy
        self.bound, opaque = budget_models(runnable, self.spender, tenant_key=tenant_key, session_key=session_key)
        _warn_unreachable(opaque)
        needed = bool(opaque) if safety_net is None else safety_net
        self.safety_net = (
            ClearCallbackHandler(
                ledger,
                tenant=tenant,
                session=session,
                raise_on_exhausted=True,
                tenant_key=tenant_key,
                session_key=session_key,
                warn_uncapped=True,
            )
            if needed
            else None
        )
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

    def _pinned(self, config: RunnableConfig | None) -> Any:
        """For a stream, read later: the config with the payer of ``clear_scope`` as it is now (when the stream is
        created), so that it still pays when the chunks are read outside its block."""
        names = scope_names()
        if names is None:
            return self._with_net(config)
        pinned = {
            key: value
            for key, value in (("clear_tenant", names.tenant), ("clear_session", names.session))
            if value is not None
        }
        return self._with_net(merge_configs(config, {"metadata": pinned}))

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        return self.bound.stream(input, self._pinned(config), **kwargs)

    def astream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> AsyncIterator[Any]:
        return self.bound.astream(input, self._pinned(config), **kwargs)

    def transform(self, input: Iterator[Any], config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        return self.bound.transform(input, self._pinned(config), **kwargs)

    def atransform(
        self, input: AsyncIterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        return self.bound.atransform(input, self._pinned(config), **kwargs)
