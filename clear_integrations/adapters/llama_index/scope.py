"""Who pays for a LlamaIndex call: the wrapper's tenant and session, overridable per task.

A :class:`~clear_integrations.adapters.llama_index.ClearBudgetLLM` is usually built once and shared by many users'
requests. Each call resolves its payer when it is made, in the order of :mod:`clear_integrations.budgeting.payer`:

1. LlamaIndex's instrumentation tags ``clear_tenant`` / ``clear_session``:
   ``with instrument_tags({"clear_tenant": "beta"}): ...`` (``llama_index.core.instrumentation.dispatcher``);
2. :func:`clear_scope`: ``with clear_scope(tenant="beta", session="s1"): ...``;
3. the ``tenant`` / ``session`` given to the wrapper.

Both are ``ContextVar`` values, so they follow ``asyncio`` tasks: set one around ``agent.run(...)`` and every step
of the agent's workflow is charged to that tenant (the workflow's tasks start with the context of ``run()``). A
query engine that streams calls its LLM only when the stream is read, maybe after the request's block has exited:
:mod:`.responses` pins the payer of such streams when the engine returns them.

While the wrapped LLM runs, the wrapper adds the tags :data:`BUDGETED_TAG` (``True``), ``clear_tenant``,
``clear_session`` and ``clear_reservation`` to the instrumentation events the inner LLM emits, so an event handler
can tell that the call was already accounted for on the ledger.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from llama_index_instrumentation.dispatcher import active_instrument_tags, instrument_tags

from ...budgeting import Decision, Names, Payer, clear_scope, resolve_payer

__all__ = ["BUDGETED_TAG", "Payer", "budget_tags", "clear_scope", "current_payer"]

#: tag set on the instrumentation events of calls made (and accounted for) by ``ClearBudgetLLM``
BUDGETED_TAG = "clear_budgeted"


def current_payer(default: Payer) -> Payer:
    """The payer of a call made now (see the module docstring for the order)."""
    tags = active_instrument_tags.get()
    tenant, session = tags.get("clear_tenant"), tags.get("clear_session")
    names = Names(None if tenant is None else str(tenant), None if session is None else str(session))
    return resolve_payer(default, names)


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
