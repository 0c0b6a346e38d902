"""ClearBudgetMiddleware on real ``create_agent`` agents: every step capped and committed, graceful ends."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, ClassVar

import anyio
import pytest
from langchain.agents import create_agent
from langchain.agents.middleware.types import ModelRequest, ModelResponse
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver

from clear_integrations import CurveBatch
from clear_integrations.adapters.langchain import BudgetedChatModel
from clear_integrations.adapters.langchain.middleware import DEFAULT_FINAL_MESSAGE, ClearBudgetMiddleware
from clear_integrations.budgeting import BudgetPolicy
from clear_integrations.ledger import Budget, Ledger, open_async_ledger, open_ledger
from clear_integrations.testing import MeteredFakeChatModel

QUESTION = {"messages": [HumanMessage("what is (3 + 4) * 5?")]}
THREAD = {"configurable": {"thread_id": "t1"}}
SCRIPT = [[{"name": "add", "args": {"a": 3, "b": 4}}], [{"name": "multiply", "args": {"a": 7, "b": 5}}], []]


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _ledger(tokens: int = 100_000, tenant: str = "acme") -> Ledger:
    ledger = open_ledger(f"memory://{uuid.uuid4().hex}")  # a named store: open_async_ledger can share it
    ledger.set_budget(tenant, Budget(tokens=tokens))
    return ledger


def _agent(model: MeteredFakeChatModel, middleware: ClearBudgetMiddleware) -> Any:
    return create_agent(model, [add, multiply], middleware=[middleware])


def _spent_by(model: MeteredFakeChatModel) -> int:
    return sum(call.total_tokens for call in model.calls)


def _assert_ended_gracefully(messages: Sequence[BaseMessage]) -> AIMessage:
    last = messages[-1]
    assert isinstance(last, AIMessage) and last.content == DEFAULT_FINAL_MESSAGE and not last.tool_calls
    assert last.response_metadata["clear_action"] == "abandon"
    return last


def test_every_step_is_capped_and_committed() -> None:
    ledger = _ledger()
    model = MeteredFakeChatModel(response_tokens=80, tool_calls=SCRIPT)
    mw = ClearBudgetMiddleware(ledger=ledger, tenant="acme", policy=BudgetPolicy(max_tokens=50))
    result = _agent(model, mw).invoke(QUESTION, THREAD)
    assert [c.cap for c in model.calls] == [50, 50, 50]  # every step, tool turns included
    assert [c.tool_calls for c in model.calls] == [("add",), ("multiply",), ()]
    assert [m.content for m in result["messages"] if isinstance(m, ToolMessage)] == ["7", "35"]
    balance = ledger.balance("acme")
    assert balance.spent == _spent_by(model) == result["clear_run_tokens"] and balance.held == 0
    assert ledger.balance("acme/t1").spent == balance.spent  # the thread is the session
    final = result["messages"][-1]
    assert final.response_metadata["clear_max_tokens"] == 50 and final.response_metadata["clear_action"] == "cap"


def test_a_cap_set_on_the_model_is_a_request_never_exceeded() -> None:
    ledger = _ledger()
    model = MeteredFakeChatModel(response_tokens=80, tool_calls=SCRIPT, max_tokens=20)
    mw = ClearBudgetMiddleware(ledger=ledger, tenant="acme", policy=BudgetPolicy(max_tokens=50))
    _agent(model, mw).invoke(QUESTION)
    assert [c.cap for c in model.calls] == [20, 20, 20] and model.calls[-1].output_tokens == 20
    assert ledger.balance("acme").spent == _spent_by(model)


def test_without_a_policy_cap_steps_are_capped_to_what_the_budget_has_left() -> None:
    ledger = _ledger(tokens=1_000)
    model = MeteredFakeChatModel(response_tokens=5_000, tool_calls=SCRIPT)
    result = _agent(model, ClearBudgetMiddleware(ledger=ledger, tenant="acme")).invoke(QUESTION)
    caps = [c.cap or 0 for c in model.calls]
    assert all(caps) and caps == sorted(caps, reverse=True)  # capped, each to what the last step left
    balance = ledger.balance("acme")
    assert balance.spent == _spent_by(model) <= 1_000 and balance.held == 0
    assert result["messages"][-1].response_metadata["finish_reason"] == "length"


@pytest.mark.anyio
@pytest.mark.parametrize("with_async_ledger", [True, False])
async def test_async_steps_are_capped_and_committed(with_async_ledger: bool) -> None:
    ledger = _ledger()
    async_ledger = open_async_ledger(ledger.url) if with_async_ledger else None
    model = MeteredFakeChatModel(response_tokens=80, tool_calls=SCRIPT)
    mw = ClearBudgetMiddleware(
        ledger=ledger, tenant="acme", async_ledger=async_ledger, policy=BudgetPolicy(max_tokens=50)
    )
    result = await _agent(model, mw).ainvoke(QUESTION, THREAD)
    assert [c.cap for c in model.calls] == [50, 50, 50]
    balance = ledger.balance("acme")
    assert balance.spent == _spent_by(model) == result["clear_run_tokens"] and balance.held == 0


def test_streamed_messages_are_capped_and_committed() -> None:
    ledger = _ledger()
    model = MeteredFakeChatModel(response_tokens=80, tool_calls=SCRIPT)
    mw = ClearBudgetMiddleware(ledger=ledger, tenant="acme", policy=BudgetPolicy(max_tokens=30))
    chunks = [chunk for chunk, _ in _agent(model, mw).stream(QUESTION, THREAD, stream_mode="messages")]
    assert [(c.cap, c.streamed) for c in model.calls] == [(30, True)] * 3
    assert sum(1 for c in chunks if c.type == "AIMessageChunk" and c.content) == 30  # one chunk per answer token
    balance = ledger.balance("acme")
    assert balance.spent == _spent_by(model) and balance.held == 0


@pytest.mark.anyio
async def test_async_streamed_messages_are_capped_and_committed() -> None:
    ledger = _ledger()
    model = MeteredFakeChatModel(response_tokens=80, tool_calls=SCRIPT)
    mw = ClearBudgetMiddleware(ledger=ledger, tenant="acme", policy=BudgetPolicy(max_tokens=30))
    async for _ in _agent(model, mw).astream(QUESTION, THREAD, stream_mode="messages"):
        pass
    assert [(c.cap, c.streamed) for c in model.calls] == [(30, True)] * 3
    assert ledger.balance("acme").spent == _spent_by(model) and ledger.balance("acme").held == 0


def _endless_tools(turns: int = 30) -> MeteredFakeChatModel:
    return MeteredFakeChatModel(
        response_tokens=10, tool_calls=[[{"name": "add", "args": {"a": i, "b": 1}}] for i in range(turns)]
    )


def test_a_budget_that_runs_out_mid_loop_ends_with_the_final_message() -> None:
    ledger = _ledger(tokens=400)
    model = _endless_tools()
    mw = ClearBudgetMiddleware(ledger=ledger, tenant="acme", policy=BudgetPolicy(min_tokens=20))
    result = _agent(model, mw).invoke(QUESTION, THREAD)  # no exception
    _assert_ended_gracefully(result["messages"])
    assert 1 < len(model.calls) < 30  # some steps ran, then the loop stopped
    balance = ledger.balance("acme")
    assert balance.spent == _spent_by(model) <= 400 and balance.held == 0


@pytest.mark.anyio
async def test_async_budget_that_runs_out_mid_loop_ends_with_the_final_message() -> None:
    ledger = _ledger(tokens=400)
    model = _endless_tools()
    mw = ClearBudgetMiddleware(
        ledger=ledger, tenant="acme", async_ledger=open_async_ledger(ledger.url), policy=BudgetPolicy(min_tokens=20)
    )
    result = await _agent(model, mw).ainvoke(QUESTION)
    _assert_ended_gracefully(result["messages"])
    assert ledger.balance("acme").spent == _spent_by(model) <= 400 and ledger.balance("acme").held == 0


def test_a_spent_budget_ends_in_before_model_without_a_model_step() -> None:
    ledger = _ledger(tokens=10)
    model = MeteredFakeChatModel(response_tokens=10, tool_calls=SCRIPT)
    agent = _agent(model, ClearBudgetMiddleware(ledger=ledger, tenant="acme"))
    updates = list(agent.stream(QUESTION, stream_mode="updates"))
    assert [list(update) for update in updates] == [["ClearBudgetMiddleware.before_model"]]  # no model node ran
    result = agent.invoke(QUESTION)
    final = _assert_ended_gracefully(result["messages"])
    assert final.response_metadata["clear_reason"] == "the budget is exhausted"
    assert model.calls == [] and ledger.balance("acme").spent == 0
    streamed = [chunk for chunk, _ in agent.stream(QUESTION, stream_mode="messages")]
    assert [m.content for m in streamed] == [DEFAULT_FINAL_MESSAGE]  # streaming users see the final message too


def test_a_step_abandoned_for_held_tokens_returns_the_decision_without_calling_the_model() -> None:
    ledger = _ledger(tokens=1_000)
    ledger.reserve("acme", 990)  # held by a call in flight: before_model lets the step through, the step decides
    model = MeteredFakeChatModel(response_tokens=10, tool_calls=SCRIPT)
    mw = ClearBudgetMiddleware(ledger=ledger, tenant="acme", policy=BudgetPolicy(min_tokens=20, wait=0.0))
    agent = _agent(model, mw)
    assert "model" in [node for update in agent.stream(QUESTION, stream_mode="updates") for node in update]
    result = agent.invoke(QUESTION)
    final = _assert_ended_gracefully(result["messages"])
    assert final.response_metadata["clear_reason"] == "the budget is exhausted"
    assert final.response_metadata["clear_reservation"] is None
    assert model.calls == [] and ledger.balance("acme").held == 990 and ledger.balance("acme").spent == 0


class _Hopeless:
    """An estimator whose every curve is flat at zero: no token is ever worth its price."""

    name: ClassVar[str] = "hopeless"

    def fit(self, prompts: Sequence[str], curves: CurveBatch, meta: Any = None) -> _Hopeless:
        return self

    def predict(self, prompts: Sequence[str], meta: Any = None) -> CurveBatch:
        return CurveBatch([16, 32, 64, 128], [[0.0] * 4 for _ in prompts])

    def to_dict(self) -> dict[str, Any]:
        return {}


def test_the_price_ends_the_loop_and_the_decision_is_visible() -> None:
    ledger = _ledger()
    model = MeteredFakeChatModel(response_tokens=10, tool_calls=SCRIPT)
    policy = BudgetPolicy(tokens_per_query=64)
    mw = ClearBudgetMiddleware(ledger=ledger, tenant="acme", policy=policy, estimator=_Hopeless())
    result = _agent(model, mw).invoke(QUESTION)
    meta = _assert_ended_gracefully(result["messages"]).response_metadata
    assert meta["clear_shadow_price"] is not None and "price" in meta["clear_reason"]
    assert meta["clear_expected_accuracy"] == 0.0
    assert model.calls == [] and ledger.balance("acme").spent == 0


def test_tenants_sharing_a_ledger_never_charge_each_other() -> None:
    ledger = _ledger(tenant="rich")
    ledger.set_budget("poor", Budget(tokens=5))
    rich_model = MeteredFakeChatModel(response_tokens=10, tool_calls=SCRIPT)
    poor_model = MeteredFakeChatModel(response_tokens=10, tool_calls=SCRIPT)
    rich = _agent(rich_model, ClearBudgetMiddleware(ledger=ledger, tenant="rich")).invoke(QUESTION, THREAD)
    poor = _agent(poor_model, ClearBudgetMiddleware(ledger=ledger, tenant="poor")).invoke(QUESTION, THREAD)
    assert not rich["messages"][-1].content.startswith("I have to stop")
    _assert_ended_gracefully(poor["messages"])
    assert ledger.balance("rich").spent == _spent_by(rich_model) > 0 and poor_model.calls == []
    assert ledger.balance("poor").spent == 0 and ledger.balance("poor/t1").spent == 0


def test_a_per_thread_budget_ends_that_thread_only() -> None:
    ledger = _ledger()
    ledger.set_budget("acme/t1", Budget(tokens=5))
    model = MeteredFakeChatModel(response_tokens=10, tool_calls=SCRIPT)
    agent = _agent(model, ClearBudgetMiddleware(ledger=ledger, tenant="acme"))
    _assert_ended_gracefully(agent.invoke(QUESTION, THREAD)["messages"])
    other = agent.invoke(QUESTION, {"configurable": {"thread_id": "t2"}})
    assert other["messages"][-1].content != DEFAULT_FINAL_MESSAGE
    assert ledger.balance("acme").spent == ledger.balance("acme/t2").spent == _spent_by(model) > 0


def test_run_tokens_count_each_run_of_a_checkpointed_thread() -> None:
    ledger = _ledger()
    model = MeteredFakeChatModel(response_tokens=10, tool_calls=SCRIPT * 2)
    mw = ClearBudgetMiddleware(ledger=ledger, tenant="acme")
    agent: Any = create_agent(model, [add, multiply], middleware=[mw], checkpointer=InMemorySaver())
    first = agent.invoke(QUESTION, THREAD)["clear_run_tokens"]
    second = agent.invoke(QUESTION, THREAD)["clear_run_tokens"]
    assert first + second == ledger.balance("acme/t1").spent == _spent_by(model) and second > first > 0


def test_session_from_the_thread_can_be_turned_off_and_any_thread_id_is_a_session() -> None:
    ledger = _ledger()
    model = MeteredFakeChatModel(response_tokens=10, tool_calls=SCRIPT)
    _agent(model, ClearBudgetMiddleware(ledger=ledger, tenant="acme", session_from_thread=False)).invoke(
        QUESTION, THREAD
    )
    assert ledger.balance("acme").spent > 0 and ledger.balance("acme/t1").spent == 0
    before = ledger.balance("acme").spent
    _agent(model, ClearBudgetMiddleware(ledger=ledger, tenant="acme")).invoke(
        QUESTION, {"configurable": {"thread_id": "user/42 chat"}}
    )
    sessions = {e.account for e in ledger.events("acme") if e.kind == "commit"} - {"acme"}
    (session,) = sessions  # '/' and ' ' are not allowed in an account id: the thread id is made valid, not refused
    assert session.startswith("acme/user_42_chat.h")
    assert ledger.balance(session).spent == ledger.balance("acme").spent - before


def _failing_second_call() -> MeteredFakeChatModel:
    def length(messages: list[BaseMessage]) -> int:
        if any(isinstance(m, ToolMessage) for m in messages):
            raise RuntimeError("provider down")
        return 10

    return MeteredFakeChatModel(response_tokens=length, tool_calls=SCRIPT)


def test_a_model_error_releases_the_reservation_and_propagates() -> None:
    ledger = _ledger()
    model = _failing_second_call()
    with pytest.raises(RuntimeError, match="provider down"):
        _agent(model, ClearBudgetMiddleware(ledger=ledger, tenant="acme")).invoke(QUESTION)
    balance = ledger.balance("acme")
    assert balance.held == 0 and balance.spent == _spent_by(model) > 0  # the first step stays committed


@pytest.mark.anyio
@pytest.mark.parametrize("with_async_ledger", [True, False])
async def test_an_async_model_error_releases_the_reservation_and_propagates(with_async_ledger: bool) -> None:
    ledger = _ledger()
    model = _failing_second_call()
    async_ledger = open_async_ledger(ledger.url) if with_async_ledger else None
    mw = ClearBudgetMiddleware(ledger=ledger, tenant="acme", async_ledger=async_ledger)
    with pytest.raises(RuntimeError, match="provider down"):
        await _agent(model, mw).ainvoke(QUESTION)
    assert ledger.balance("acme").held == 0 and ledger.balance("acme").spent == _spent_by(model)


def test_wrap_model_call_alone_sets_the_cap_in_the_models_field_and_keeps_other_settings() -> None:
    ledger = _ledger()
    model = MeteredFakeChatModel(response_tokens=10)
    mw = ClearBudgetMiddleware(ledger=ledger, tenant="acme", session="s1", policy=BudgetPolicy(max_tokens=8))
    seen: list[ModelRequest[Any]] = []

    def handler(request: ModelRequest[Any]) -> ModelResponse[Any]:
        seen.append(request)
        return ModelResponse(result=[request.model.invoke(request.messages, **request.model_settings)])

    request = ModelRequest(model=model, messages=[HumanMessage("hi")], model_settings={"max_tokens": 40, "stop": []})
    mw.wrap_model_call(request, handler)
    assert isinstance(seen[0].model, BudgetedChatModel) and seen[0].model.model is model
    assert model.max_tokens is None and model.calls[-1].cap == 8  # the policy's 8 beat the step's 40, in the field
    assert ledger.balance("acme/s1").spent == _spent_by(model) and ledger.balance("acme").held == 0


@pytest.mark.anyio
async def test_concurrent_runs_on_one_tenant_hold_the_budget() -> None:
    ledger = _ledger(tokens=500)
    mw = ClearBudgetMiddleware(
        ledger=ledger, tenant="acme", async_ledger=open_async_ledger(ledger.url), policy=BudgetPolicy(max_tokens=30)
    )
    models = [MeteredFakeChatModel(response_tokens=10, tool_calls=SCRIPT) for _ in range(20)]
    results: list[dict[str, Any]] = []

    async def run(i: int) -> None:
        results.append(await _agent(models[i], mw).ainvoke(QUESTION, {"configurable": {"thread_id": f"t{i}"}}))

    async with anyio.create_task_group() as group:
        for i in range(20):
            group.start_soon(run, i)
    ended = [r for r in results if r["messages"][-1].content == DEFAULT_FINAL_MESSAGE]
    assert len(results) == 20 and len(ended) > 0  # no run failed: those the budget could not pay ended gracefully
    balance = ledger.balance("acme")
    spent = sum(_spent_by(model) for model in models)
    assert balance.spent == spent == sum(r.get("clear_run_tokens", 0) for r in results) <= 500
    assert balance.held == 0


def test_per_call_ollama_options_keep_their_other_keys_and_get_the_cap() -> None:
    ledger = _ledger()
    model = MeteredFakeChatModel(response_tokens=50)
    mw = ClearBudgetMiddleware(ledger=ledger, tenant="acme", policy=BudgetPolicy(max_tokens=30))
    seen: list[dict[str, Any]] = []

    def handler(request: ModelRequest[Any]) -> ModelResponse[Any]:
        seen.append(request.model_settings)
        return ModelResponse(result=[request.model.invoke(request.messages, **request.model_settings)])

    options = {"num_predict": 12, "temperature": 0.0}
    mw.wrap_model_call(
        ModelRequest(model=model, messages=[HumanMessage("hi")], model_settings={"options": options}), handler
    )
    assert seen == [{"options": {"num_predict": 12, "temperature": 0.0}}] and model.calls[-1].cap == 12
    assert options == {"num_predict": 12, "temperature": 0.0}  # the caller's dict is not modified


@pytest.mark.anyio
@pytest.mark.parametrize("with_async_ledger", [True, False])
async def test_a_cancelled_async_step_gives_its_reservation_back(with_async_ledger: bool) -> None:
    ledger = _ledger()
    async_ledger = open_async_ledger(ledger.url) if with_async_ledger else None
    mw = ClearBudgetMiddleware(ledger=ledger, tenant="acme", async_ledger=async_ledger)
    started = anyio.Event()

    async def hang(request: ModelRequest[Any]) -> ModelResponse[Any]:
        async def sleeping() -> None:
            while not ledger.balance("acme").held:
                await anyio.sleep(0.001)
            started.set()

        async with anyio.create_task_group() as inner:
            inner.start_soon(sleeping)
            await request.model.ainvoke(request.messages)
        raise AssertionError("unreachable")

    request = ModelRequest(model=MeteredFakeChatModel(latency=60.0), messages=[HumanMessage("hi")])
    async with anyio.create_task_group() as group:
        group.start_soon(mw.awrap_model_call, request, hang)
        await started.wait()
        assert ledger.balance("acme").held > 0  # the step is in the provider's hands, its tokens held
        group.cancel_scope.cancel()
    for _ in range(1_000):  # the release runs in a task of its own: wait for it, not for a fixed time
        if ledger.balance("acme").held == 0:
            break
        await anyio.sleep(0.001)
    assert ledger.balance("acme").held == 0 and ledger.balance("acme").spent == 0
