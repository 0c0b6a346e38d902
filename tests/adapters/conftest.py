"""Fixtures shared by the adapter tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from clear_integrations.ledger import Ledger


@pytest.fixture
def handler(ledger: Ledger) -> Iterator[object]:
    """A ``ClearEventHandler`` on LlamaIndex's root dispatcher for one test (on the test module's ``ledger``, tenant
    ``acme``), always removed after it, its span handler too (the dispatcher is global)."""
    from llama_index_instrumentation import get_dispatcher

    from clear_integrations.adapters.llama_index.events import ClearEventHandler
    from clear_integrations.adapters.llama_index.responses import ResponseHandler

    def handlers() -> tuple[list[object], list[object]]:  # ClearBudgetLLM installs its ResponseHandler once, for good
        events = [h for h in dispatcher.event_handlers if not isinstance(h, ResponseHandler)]
        return events, list(dispatcher.span_handlers)

    dispatcher = get_dispatcher()
    before = handlers()
    with ClearEventHandler.install(ledger, tenant="acme") as installed:
        yield installed
    assert handlers() == before
