"""ClearBudget on real LangChain chains: every model call inside is decided, capped and committed."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import LLMResult
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnableParallel

from clear_integrations import AsyncLedger, Budget, BudgetPolicy, QueryAbandoned, open_ledger
from clear_integrations.adapters.langchain.runnable import ClearBudget
from clear_integrations.testing import MeteredFakeChatModel

PROMPT = ChatPromptTemplate.from_template("{q}")


def _spent_by_model(model: MeteredFakeChatModel) -> int:
    return sum(call.prompt_tokens + call.output_tokens for call in model.calls)


def test_contract_batch_holds_the_hard_budget() -> None:
    ledger = open_ledger("memory://")
    ledger.set_budget("acme", Budget(tokens=2_000))
    model = MeteredFakeChatModel(response_tokens=400)
    chain = ClearBudget(PROMPT | model | StrOutputParser(), ledger=ledger, tenant="acme")
    outs = chain.batch([{"q": f"question {i}"} for i in range(20)])
    balance = ledger.balance("acme")
    assert balance.spent <= 2_000 and balance.held == 0
    assert balance.spent == _spent_by_model(model)  # the ledger equals what the model produced
    assert len(outs) == 20 and all(isinstance(o, str) for o in outs)
    assert chain.safety_net is None  # the walk saw every part: no callback net needed


def test_the_users_chain_is_not_modified_and_caps_reach_nested_models() -> None:
    ledger = open_ledger("memory://")
    ledger.set_budget("acme", Budget(tokens=100_000))
    left, right = MeteredFakeChatModel(response_tokens=30), MeteredFakeChatModel(response_tokens=30)
    inner = PROMPT | RunnableParallel(a=left.bind(stop=["never"]), b=right.with_retry()) | RunnableLambda(
        lambda d: d["a"].content + d["b"].content
    )
    chain = ClearBudget(inner, ledger=ledger, tenant="acme", policy=BudgetPolicy(max_tokens=12))
    chain.invoke({"q": "two branches"})
    assert [c.cap for c in left.calls] == [12] and [c.cap for c in right.calls] == [12]
    assert [c.output_tokens for c in left.calls + right.calls] == [12, 12]
    inner.invoke({"q": "unwrapped"})  # the original chain still runs its models uncapped
    assert left.calls[-1].cap is None and left.calls[-1].output_tokens == 30


def test_abandoned_queries_return_the_fallback_or_raise() -> None:
    ledger = open_ledger("memory://")
    ledger.set_budget("acme", Budget(tokens=10))
    model = MeteredFakeChatModel(response_tokens=5)
    chain = PROMPT | model | StrOutputParser()
    polite = ClearBudget(chain, ledger=ledger, tenant="acme", policy=BudgetPolicy(min_tokens=50, wait=0.0))
    assert "budget" in polite.invoke({"q": "hello"})
    strict = ClearBudget(chain, ledger=ledger, tenant="acme", policy=BudgetPolicy(min_tokens=50, wait=0.0),
                         on_abandon="raise")
    with pytest.raises(QueryAbandoned, match="exhausted"):
        strict.invoke({"q": "hello"})
    assert model.calls == []  # the model was never called


def test_tenants_never_charge_each_other() -> None:
    ledger = open_ledger("memory://")
    for tenant in ("acme", "beta"):
        ledger.set_budget(tenant, Budget(tokens=10_000))
    model = MeteredFakeChatModel(response_tokens=50)
    chain = PROMPT | model | StrOutputParser()
    ClearBudget(chain, ledger=ledger, tenant="acme").batch([{"q": "a"}] * 3)
    ClearBudget(chain, ledger=ledger, tenant="beta").invoke({"q": "b"})
    shared = ClearBudget(chain, ledger=ledger, tenant="acme")
    shared.invoke({"q": "c"}, config={"metadata": {"clear_tenant": "beta"}})
    assert ledger.balance("acme").spent == 3 * (1 + 50)
    assert ledger.balance("beta").spent == 2 * (1 + 50)


def test_stream_yields_real_chunks_and_stops_at_the_cap() -> None:
    ledger = open_ledger("memory://")
    ledger.set_budget("acme", Budget(tokens=10_000))
    model = MeteredFakeChatModel(response_tokens=40)
    chain = ClearBudget(PROMPT | model | StrOutputParser(), ledger=ledger, tenant="acme",
                        policy=BudgetPolicy(max_tokens=10))
    chunks = list(chain.stream({"q": "stream me"}))
    assert len(chunks) >= 10 and len("".join(chunks).split()) == 10
    assert ledger.balance("acme").spent == 2 + 10 and ledger.balance("acme").held == 0


def test_a_consumer_that_stops_early_pays_only_what_streamed() -> None:
    ledger = open_ledger("memory://")
    ledger.set_budget("acme", Budget(tokens=10_000))
    model = MeteredFakeChatModel(response_tokens=40)
    chain = ClearBudget(PROMPT | model, ledger=ledger, tenant="acme")
    stream = chain.stream({"q": "stop early"})
    for _ in range(3):
        next(stream)
    stream.close()
    balance = ledger.balance("acme")
    assert balance.held == 0 and 2 + 3 <= balance.spent <= 2 + 5


def test_decision_is_visible_to_callbacks() -> None:
    seen: list[dict[str, Any]] = []

    class Spy(BaseCallbackHandler):
        def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
            seen.append(response.generations[0][0].message.response_metadata)  # type: ignore[attr-defined]

    ledger = open_ledger("memory://")
    ledger.set_budget("acme", Budget(tokens=10_000))
    chain = ClearBudget(PROMPT | MeteredFakeChatModel(response_tokens=5), ledger=ledger, tenant="acme",
                        policy=BudgetPolicy(max_tokens=8))
    chain.invoke({"q": "hi"}, config={"callbacks": [Spy()]})
    assert seen and seen[0]["clear_action"] == "cap" and seen[0]["clear_max_tokens"] == 8
    assert seen[0]["clear_usage"] == {"prompt": 1, "completion": 5, "reasoning": 0, "estimated": False}


@pytest.mark.anyio
async def test_abatch_of_200_on_a_budget_for_50_loses_nothing() -> None:
    ledger = open_ledger("memory://")
    async_ledger = AsyncLedger.of(ledger)  # the same store (another open of an unnamed memory:// is refused)
    await async_ledger.set_budget("acme", Budget(tokens=50 * 42))  # 50 answers of 1 + 41 tokens
    model = MeteredFakeChatModel(response_tokens=41)
    chain = ClearBudget(PROMPT | model | StrOutputParser(), ledger=ledger, tenant="acme",
                        async_ledger=async_ledger, policy=BudgetPolicy(reserve_tokens=41))
    outs = await chain.abatch([{"q": f"{i}"} for i in range(200)])
    balance = await async_ledger.balance("acme")
    assert balance.held == 0 and balance.spent <= 50 * 42
    assert balance.spent == _spent_by_model(model)
    answered = [o for o in outs if "budget" not in o]
    assert len(answered) == len(model.calls) >= 50  # the last ones may get what is left, capped
    assert balance.spent > 50 * 42 - 42  # the budget was used, not stranded in reservations


@pytest.mark.anyio
async def test_astream_and_ainvoke_without_an_async_ledger() -> None:
    ledger = open_ledger("memory://")
    ledger.set_budget("acme", Budget(tokens=10_000))
    model = MeteredFakeChatModel(response_tokens=6)
    chain = ClearBudget(PROMPT | model | StrOutputParser(), ledger=ledger, tenant="acme")
    assert len((await chain.ainvoke({"q": "x"})).split()) == 6
    chunks = [c async for c in chain.astream({"q": "y"})]
    assert len("".join(chunks).split()) == 6
    assert ledger.balance("acme").spent == 2 * (1 + 6)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _RisingEstimator:
    """Every prompt's curve keeps rising steeply to 64 tokens, then flattens."""

    name = "rising"

    def fit(self, prompts: Any, curves: Any, meta: Any = None) -> _RisingEstimator:
        return self

    def predict(self, prompts: Any, meta: Any = None) -> Any:
        from clear_integrations import CurveBatch

        return CurveBatch([16, 32, 64, 128], [[0.1, 0.4, 0.9, 0.91]] * len(prompts))

    def to_dict(self) -> dict[str, Any]:
        return {}


def test_a_cut_answer_is_extended_while_tokens_beat_the_price() -> None:
    ledger = open_ledger("memory://")
    ledger.set_budget("acme", Budget(tokens=100_000))
    model = MeteredFakeChatModel(response_tokens=100)
    policy = BudgetPolicy(estimator=_RisingEstimator(), tokens_per_query=128, max_tokens=32)
    chain = ClearBudget(PROMPT | model, ledger=ledger, tenant="acme", policy=policy)
    answer = chain.invoke({"q": "extend me"})
    # cut at 32, continued to the knee (64) even though the continuation re-sends its prompt; 64 -> 128 is not worth it
    assert [c.cap for c in model.calls] == [32, 32]
    assert len(answer.text.split()) == 64
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] == 64
    assert ledger.balance("acme").spent == _spent_by_model(model) and ledger.balance("acme").held == 0
    flat = ClearBudget(PROMPT | model, ledger=ledger, tenant="acme",
                       policy=BudgetPolicy(estimator=_RisingEstimator(), tokens_per_query=128, max_tokens=64))
    model.reset()
    flat.invoke({"q": "no extension past the knee"})
    assert [c.cap for c in model.calls] == [64]


def test_models_the_walk_cannot_see_are_still_accounted_for() -> None:
    ledger = open_ledger("memory://")
    ledger.set_budget("acme", Budget(tokens=10_000))
    hidden = MeteredFakeChatModel(response_tokens=30)
    visible = MeteredFakeChatModel(response_tokens=30)
    inner = PROMPT | visible | RunnableLambda(lambda message: hidden.invoke("hidden question " + message.text[:5]))
    chain = ClearBudget(inner, ledger=ledger, tenant="acme", policy=BudgetPolicy(max_tokens=10))
    assert chain.safety_net is not None  # a lambda is opaque to the walk
    chain.invoke({"q": "hi"})
    assert [c.cap for c in visible.calls] == [10] and [c.cap for c in hidden.calls] == [None]
    assert ledger.balance("acme").spent == _spent_by_model(visible) + _spent_by_model(hidden)
    assert ledger.balance("acme").held == 0


def test_langgraph_nodes_are_accounted_for() -> None:
    from langgraph.graph import END, START, MessagesState, StateGraph

    ledger = open_ledger("memory://")
    ledger.set_budget("acme", Budget(tokens=10_000))
    model = MeteredFakeChatModel(response_tokens=12)

    def node(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("answer", node)
    graph.add_edge(START, "answer")
    graph.add_edge("answer", END)
    chain = ClearBudget(graph.compile(), ledger=ledger, tenant="acme")
    chain.invoke({"messages": [("user", "one two three")]})
    assert ledger.balance("acme").spent == _spent_by_model(model) == 3 + 12


@pytest.mark.anyio
async def test_astream_events_sees_the_real_model_run() -> None:
    ledger = open_ledger("memory://")
    ledger.set_budget("acme", Budget(tokens=10_000))
    chain = ClearBudget(PROMPT | MeteredFakeChatModel(response_tokens=5) | StrOutputParser(), ledger=ledger,
                        tenant="acme", policy=BudgetPolicy(max_tokens=4))
    events = [e async for e in chain.astream_events({"q": "events"}, version="v2")]
    streamed = [e for e in events if e["event"] == "on_chat_model_stream"]
    assert len(streamed) >= 4
    end = next(e for e in events if e["event"] == "on_chat_model_end")
    assert end["data"]["output"].response_metadata["clear_max_tokens"] == 4
    assert ledger.balance("acme").spent == 1 + 4


def test_bad_wrapper_arguments_fail_at_construction_naming_the_field() -> None:
    from clear_integrations import InvalidAccount, InvalidInput

    ledger = open_ledger("memory://")
    chain = PROMPT | MeteredFakeChatModel()
    with pytest.raises(InvalidAccount, match="tenant"):
        ClearBudget(chain, ledger=ledger, tenant=None)  # type: ignore[arg-type]
    with pytest.raises(InvalidAccount, match="tenant"):
        ClearBudget(chain, ledger=ledger, tenant="acme/evil")
    with pytest.raises(InvalidInput, match="ledger"):
        ClearBudget(chain, ledger="memory://", tenant="acme")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="on_abandon"):
        ClearBudget(chain, ledger=ledger, tenant="acme", on_abandon=3)  # type: ignore[arg-type]
