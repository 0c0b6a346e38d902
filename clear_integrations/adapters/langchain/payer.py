"""Who pays for a LangChain model call: the names a run's ``RunnableConfig`` carries.

The order is :mod:`clear_integrations.budgeting.payer`'s. From a run's config (and, inside a LangGraph node or
any runnable, the config LangChain passes down in its context variable):

- the call's own names: ``clear_tenant`` / ``clear_session`` in ``config["metadata"]`` or
  ``config["configurable"]``;
- conventions: the value of ``session_key`` (default ``"thread_id"``: a LangGraph thread is a session) and, when the
  wrapper is given a ``tenant_key`` (e.g. ``"user_id"``), that value as the tenant; thread and user ids are made
  valid account ids (``/`` and other characters become ``_`` plus a short hash).

A budgeted model resolves its payer when its run is created (``invoke``, and ``stream`` / ``astream`` when they are
called, not when their chunks are read) and keeps it for the whole call, so a stream read later, outside the
request's ``clear_scope`` block, is still charged to whoever started it.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import ensure_config

from ...budgeting import Names, Payer, account_id, resolve_payer

__all__ = ["names_of", "payer_of", "pinned", "resolve"]

#: The payer of the call in progress, set by a budgeted model's ``invoke`` / ``stream`` (and async twins) around
#: LangChain's machinery, so that ``_stream`` (which LangChain calls without the run's manager) sees it too.
pinned: ContextVar[Payer | None] = ContextVar("clear_langchain_payer", default=None)


def _pick(key: str | None, *sources: Mapping[str, Any]) -> Any:
    if key is None:
        return None
    return next((source[key] for source in sources if source.get(key) is not None), None)


def names_of(
    metadata: Mapping[str, Any], configurable: Mapping[str, Any], tenant_key: str | None, session_key: str | None
) -> tuple[Names, Names]:
    """The call's own names and the conventional ones, from a run's metadata and configurable values."""
    call = Names(_pick("clear_tenant", metadata, configurable), _pick("clear_session", metadata, configurable))
    convention = Names(
        account_id(_pick(tenant_key, configurable, metadata)), account_id(_pick(session_key, configurable, metadata))
    )
    return Names(*(None if v is None else str(v) for v in call)), convention


def resolve(default: Payer, config: RunnableConfig | None, tenant_key: str | None, session_key: str | None) -> Payer:
    """The payer of a run with ``config`` (merged with the config LangChain passes down to nested runnables),
    resolved now."""
    merged = ensure_config(config)
    names = names_of(merged.get("metadata") or {}, merged.get("configurable") or {}, tenant_key, session_key)
    return resolve_payer(default, *names)


def payer_of(
    default: Payer, metadata: Mapping[str, Any] | None, tenant_key: str | None, session_key: str | None
) -> Payer:
    """The payer of a call now: the one pinned by the budgeted model's entry point, else the one of the run's
    ``metadata`` and the config in context (a legacy ``generate`` call)."""
    payer = pinned.get()
    if payer is None:
        configurable = ensure_config().get("configurable") or {}
        payer = resolve_payer(default, *names_of(metadata or {}, configurable, tenant_key, session_key))
    return payer
