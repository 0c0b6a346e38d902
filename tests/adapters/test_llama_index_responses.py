"""The response handler's bookkeeping: a query that raises leaves no frame behind; abandoned calls stay with their
own query's response."""

from __future__ import annotations

import asyncio

import pytest
from llama_index.core import Document, SummaryIndex

from clear_integrations import Budget, QueryAbandoned, open_ledger
from clear_integrations.adapters.llama_index import ClearBudgetLLM, responses
from clear_integrations.testing import MeteredMockLLM


def test_queries_that_raise_leave_no_frame_behind() -> None:
    ledger = open_ledger("memory://")
    ledger.set_budget("acme", Budget(tokens=10))
    llm = ClearBudgetLLM(MeteredMockLLM(response_tokens=5), ledger=ledger, tenant="acme", on_abandon="raise")
    engine = SummaryIndex.from_documents([Document(text="budgets are kept per tenant")]).as_query_engine(llm=llm)

    async def aquery() -> None:
        with pytest.raises(QueryAbandoned):
            await engine.aquery("where?")
        assert responses._log.get() == ()

    for _ in range(3):
        with pytest.raises(QueryAbandoned):
            engine.query("where?")
    asyncio.run(aquery())

    assert responses._log.get() == ()  # else each later query's decisions and streams would pile up on them
    fallback = ClearBudgetLLM(MeteredMockLLM(response_tokens=5), ledger=ledger, tenant="acme")
    answer = SummaryIndex.from_documents([Document(text="x")]).as_query_engine(llm=fallback).query("where?")
    assert answer.metadata is not None and len(answer.metadata["clear_abandoned"]) == 1
