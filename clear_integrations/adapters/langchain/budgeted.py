"""``budgeted(model, ...)``: put a LangChain chat model, text LLM or embeddings under a ledger's budgets.

```python
from clear_integrations import Budget, open_ledger
from clear_integrations.adapters.langchain import budgeted

ledger = open_ledger("sqlite:///budgets.db")
ledger.set_budget("acme", Budget(tokens=100_000, window="1d"))
llm = budgeted(ChatOpenAI(model="gpt-4o-mini"), ledger=ledger, tenant="acme")
# use llm wherever the model went: chains, LangGraph nodes, create_agent, tools, structured output
```
"""

from __future__ import annotations

from typing import Required, TypedDict, Unpack, overload

from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel, BaseLLM

from ...budgeting import Abandon, BudgetPolicy, Spender
from ...errors import Unsupported
from ...estimators.base import Estimator
from ...ledger import AsyncLedger, Ledger
from .chat_model import BudgetedChatModel
from .embeddings import BudgetedEmbeddings
from .llm import BudgetedLLM

__all__ = ["BudgetOptions", "budgeted"]


class BudgetOptions(TypedDict, total=False):
    """The keywords of :func:`budgeted` (``ledger`` and ``tenant`` are required)."""

    ledger: Required[Ledger]
    tenant: Required[str]
    session: str | None
    policy: BudgetPolicy | None
    estimator: Estimator | None
    on_abandon: Abandon
    async_ledger: AsyncLedger | None
    tenant_key: str | None
    session_key: str | None
    spender: Spender | None


@overload
def budgeted(model: BaseChatModel, **options: Unpack[BudgetOptions]) -> BudgetedChatModel: ...
@overload
def budgeted(model: BaseLLM, **options: Unpack[BudgetOptions]) -> BudgetedLLM: ...
@overload
def budgeted(model: Embeddings, **options: Unpack[BudgetOptions]) -> BudgetedEmbeddings: ...


def budgeted(
    model: BaseChatModel | BaseLLM | Embeddings, **options: Unpack[BudgetOptions]
) -> BudgetedChatModel | BudgetedLLM | BudgetedEmbeddings:
    """``model`` with every call decided, capped in its provider's own field and charged on ``ledger``.

    Args:
        model: a chat model, a text LLM, or embeddings (charged for their input tokens; a refused call raises).
        ledger: where the budgets live. ``tenant`` (and ``session``) pay unless the run names others (the order is
            in :mod:`clear_integrations.budgeting.payer`): ``clear_tenant`` / ``clear_session`` in the run's
            metadata or configurable values, :func:`~clear_integrations.budgeting.clear_scope`, the run's
            ``session_key`` value (default ``thread_id``) as the session, its ``tenant_key`` value as the tenant.
        policy: how calls are decided (default: capped to what the budgets have left); ``estimator`` is a shortcut
            for ``BudgetPolicy(estimator=...)``.
        on_abandon: what an abandoned call returns: ``"message"`` (a fallback answer whose ``response_metadata``
            holds the decision), ``"raise"`` (:class:`~clear_integrations.errors.QueryAbandoned`), another string
            (that answer) or a callable from the decision to the answer. A chat model's call that demands a
            structured answer (``with_structured_output``, a ``response_format``, a ``tool_choice`` forcing a tool
            call) always raises.
        async_ledger: the same store as an async ledger for the async paths (default: ``ledger`` from worker
            threads); a different store is refused.
        spender: share one spender (controllers, payer, abandonment) between several models.
    """
    spender = options.get("spender") or Spender.open(
        options["ledger"],
        tenant=options["tenant"],
        session=options.get("session"),
        policy=options.get("policy"),
        estimator=options.get("estimator"),
        on_abandon=options.get("on_abandon", "message"),
        async_ledger=options.get("async_ledger"),
    )
    tenant_key, session_key = options.get("tenant_key"), options.get("session_key", "thread_id")
    if isinstance(model, BaseChatModel):
        return BudgetedChatModel.wrap(model, spender, tenant_key=tenant_key, session_key=session_key)
    if isinstance(model, BaseLLM):
        return BudgetedLLM.wrap(model, spender, tenant_key=tenant_key, session_key=session_key)
    if isinstance(model, Embeddings):
        return BudgetedEmbeddings.wrap(model, spender)
    raise Unsupported("model", type(model).__name__, "must be a BaseChatModel, a BaseLLM or Embeddings")
