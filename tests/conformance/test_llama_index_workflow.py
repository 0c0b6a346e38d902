"""A custom ``Workflow`` (``@step``, ``StartEvent`` / ``StopEvent``) whose step extracts a Pydantic model with
``await llm.astructured_predict(Model, PromptTemplate(...))`` on a budgeted LLM.

Out of budget, structured prediction raises :class:`QueryAbandoned` whatever ``on_abandon`` says (as documented: a
fallback text is not the schema asked for, so it is never handed to the output parser), and the workflow fails with
it; plain calls of the same LLM still answer with the fallback under ``on_abandon="message"``."""

from __future__ import annotations

from typing import Any

import pytest
from llama_index.core.prompts import PromptTemplate
from llama_index.core.workflow import Context, StartEvent, StopEvent, Workflow, step
from pydantic import BaseModel

from clear_integrations import BudgetPolicy, QueryAbandoned
from clear_integrations.adapters.llama_index import DEFAULT_FALLBACK, ClearBudgetLLM, clear_scope
from clear_integrations.testing import MeteredMockLLM

from .conftest import Book

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecationWarning"),  # workflows inspects steps
]

PROMPT = PromptTemplate("Extract the city and its population from: {text}")
CITY = [[{"name": "City", "args": {"name": "Lyon", "population": 522250}}]] * 3


class City(BaseModel):
    """A city and its population."""

    name: str
    population: int


class ExtractCities(Workflow):
    """One step per text: each extraction is one structured prediction."""

    def __init__(self, llm: ClearBudgetLLM, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.llm = llm

    @step
    async def extract(self, ctx: Context, ev: StartEvent) -> StopEvent:
        cities = [await self.llm.astructured_predict(City, PROMPT, text=text) for text in ev.texts]
        return StopEvent(result=cities)


def _llm(book: Book, on_abandon: str) -> tuple[ClearBudgetLLM, MeteredMockLLM]:
    mock = MeteredMockLLM(response_tokens=10, tool_calls=CITY)
    policy = BudgetPolicy(max_tokens=30, wait=0)
    return ClearBudgetLLM(mock, ledger=book.ledger, tenant="default", policy=policy, on_abandon=on_abandon), mock


@pytest.mark.parametrize("on_abandon", ["raise", "message"])
async def test_structured_prediction_within_budget(book: Book, on_abandon: str) -> None:
    book.budget("alice", 10_000)
    llm, mock = _llm(book, on_abandon)
    with clear_scope(tenant="alice"):
        handler = ExtractCities(llm, timeout=10).run(texts=["Lyon has 522250 people.", "Again: Lyon, 522250."])
    cities = await handler

    assert cities == [City(name="Lyon", population=522250)] * 2
    assert [call.tool_calls for call in mock.calls] == [("City",), ("City",)]
    book.audit([mock], paid=["alice"], unpaid=["default"], max_cap=30)


@pytest.mark.parametrize("on_abandon", ["raise", "message"])
async def test_the_workflow_fails_with_query_abandoned_when_the_budget_runs_out(book: Book, on_abandon: str) -> None:
    book.budget("alice", 40)  # one extraction fits, the second does not
    llm, mock = _llm(book, on_abandon)
    texts = ["Lyon has 522250 people.", "Again: Lyon, 522250.", "Once more: Lyon."]
    with clear_scope(tenant="alice"):
        handler = ExtractCities(llm, timeout=10).run(texts=texts)

    with pytest.raises(QueryAbandoned) as raised:
        await handler

    assert raised.value.account == "alice" and raised.value.scope == "alice"
    assert raised.value.remaining == book.ledger.balance("alice").remaining
    assert len(mock.calls) == 1  # the abandoned extraction never reached the model
    book.audit([mock], paid=["alice"], unpaid=["default"], max_cap=30)


def test_every_structured_path_raises_on_a_spent_budget(book: Book) -> None:
    book.budget("alice", 5)  # nothing fits
    llm, mock = _llm(book, "message")
    text = "Lyon has 522250 people."
    with clear_scope(tenant="alice"):
        with pytest.raises(QueryAbandoned):
            llm.structured_predict(City, PROMPT, text=text)
        with pytest.raises(QueryAbandoned):
            list(llm.stream_structured_predict(City, PROMPT, text=text))
        with pytest.raises(QueryAbandoned):
            llm.as_structured_llm(City).complete(text)  # StructuredLLM calls structured_predict
        assert llm.complete(text).text == DEFAULT_FALLBACK  # a plain call still answers with the fallback
    assert mock.calls == [] and book.ledger.balance("alice").spent == 0


async def test_every_async_structured_path_raises_on_a_spent_budget(book: Book) -> None:
    book.budget("alice", 5)
    llm, mock = _llm(book, "message")
    text = "Lyon has 522250 people."
    with clear_scope(tenant="alice"):
        with pytest.raises(QueryAbandoned):
            await llm.astructured_predict(City, PROMPT, text=text)
        with pytest.raises(QueryAbandoned):
            [part async for part in await llm.astream_structured_predict(City, PROMPT, text=text)]
        with pytest.raises(QueryAbandoned):
            await llm.as_structured_llm(City).acomplete(text)
        assert (await llm.acomplete(text)).text == DEFAULT_FALLBACK
    assert mock.calls == [] and book.ledger.balance("alice").spent == 0
