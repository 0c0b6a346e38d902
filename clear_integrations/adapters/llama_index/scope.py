"""Who pays for a LlamaIndex call: the wrapper's tenant and session, overridable per task.

A :class:`~clear_integrations.adapters.llama_index.ClearBudgetLLM` is usually built once and shared by many users'
requests. Each call resolves its payer in this order:

1. :func:`clear_scope` (a ``ContextVar``): ``with clear_scope(tenant="beta", session="s1"): ...``;
2. LlamaIndex's instrumentation tags ``clear_tenant`` / ``clear_session``:
   ``with instrument_tags({"clear_tenant": "beta"}): ...``
   (``llama_index.core.instrumentation.dispatcher.instrument_tags``, also a ``ContextVar``);
3. the ``tenant`` / ``session`` given to the wrapper.

An override that names a tenant brings its own session (none if it names none); one that names only a session
keeps the wrapper's tenant. Both mechanisms are ``ContextVar`` values, so they follow ``asyncio`` tasks: set one around
``await agent.run(...)`` and every step of the agent's workflow is charged to that tenant.

While the wrapped LLM runs, the wrapper adds the tags :data:`BUDGETED_TAG` (``True``), ``clear_tenant``,
``clear_session`` and ``clear_reservation`` to the instrumentation events the inner LLM emits, so an event handler
can tell that the call was already accounted for on the ledger.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from llama_index_instrumentation.dispatcher import active_instrument_tags, instrument_tags

from ...policy import Decision

__all__ = ["BUDGETED_TAG", "Payer", "budget_tags", "clear_scope", "current_payer"]

#: tag set on the instrumentation events of calls made (and accounted for) by ``ClearBudgetLLM``
BUDGETED_TAG = "clear_budgeted"


@dataclass(frozen=True, slots=True)
class Payer:
    """A tenant and optionally a session; :attr:`scope` is the ledger scope (``tenant`` or ``tenant/session``)."""

    tenant: str
    session: str | None = None

    @property
    def scope(self) -> str:
        return self.tenant if self.session is None else f"{self.tenant}/{self.session}"


_override: ContextVar[tuple[str | None, str | None] | None] = ContextVar("clear_scope", default=None)


@contextmanager
def clear_scope(tenant: str | None = None, session: str | None = None) -> Iterator[None]:
    """Charge the ``ClearBudgetLLM`` calls made in this context (and in tasks started from it) to ``tenant`` /
    ``session`` instead of the wrapper's own (see the module docstring for the precedence)."""
    if tenant is None and session is None:
        raise ValueError("clear_scope needs a tenant, a session or both")
    token = _override.set((tenant, session))
    try:
        yield
    finally:
        _override.reset(token)


def _pick(tenant: Any, session: Any, default: Payer) -> Payer:
    if tenant is not None:
        return Payer(str(tenant), None if session is None else str(session))
    return Payer(default.tenant, str(session))


def current_payer(default: Payer) -> Payer:
    """The payer of a call made now: :func:`clear_scope`, else the instrumentation tags, else ``default``."""
    override = _override.get()
    if override is not None:
        return _pick(override[0], override[1], default)
    tags = active_instrument_tags.get()
    tenant, session = tags.get("clear_tenant"), tags.get("clear_session")
    if tenant is None and session is None:
        return default
    return _pick(tenant, session, default)


@contextmanager
def budget_tags(payer: Payer, decision: Decision) -> Iterator[None]:
    """Tag the instrumentation events emitted in this block as budgeted by the wrapper (the tags in force are
    kept; ``instrument_tags`` replaces them otherwise)."""
    reservation = None if decision.reservation is None else decision.reservation.id
    tags = {
        **active_instrument_tags.get(),
        BUDGETED_TAG: True,
        "clear_tenant": payer.tenant,
        "clear_session": payer.session,
        "clear_reservation": reservation,
    }
    with instrument_tags(tags):
        yield
