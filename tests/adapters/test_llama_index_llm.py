"""ClearBudgetLLM on the metered mock: each call decided, capped, committed; streams cut; abandonment; events."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import pytest
from llama_index.core.base.llms.types import ChatMessage, CompletionResponse
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.llm import LLMChatStartEvent, LLMCompletionStartEvent
from llama_index_instrumentation.dispatcher import instrument_tags
from pydantic import BaseModel

from clear_integrations import (
    AsyncLedger,
    Budget,
    BudgetPolicy,
    CurveBatch,
    InvalidInput,
    QueryAbandoned,
    open_ledger,
)
from clear_integrations.adapters.llama_index import BUDGETED_TAG, ClearBudgetLLM, clear_scope
from clear_integrations.errors import Unsupported
from clear_integrations.ledger import Ledger
from clear_integrations.testing import MeteredMockLLM


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _ledger(tokens: int = 100_000, *tenants: str) -> Ledger:
    ledger = open_ledger("memory://")
    for tenant in tenants or ("acme",):
        ledger.set_budget(tenant, Budget(tokens=tokens))
    return ledger


def _spent(mock: MeteredMockLLM) -> int:
    return sum(call.total_tokens for call in mock.calls)


def _user(text: str) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=text)]


def test_contract_complete_then_achat_holds_the_hard_budget() -> None:
    ledger = _ledger(2_000)
    mock = MeteredMockLLM(response_tokens=400)
    llm = ClearBudgetLLM(mock, ledger=ledger, tenant="acme")
    answers = [llm.complete(f"question {i}") for i in range(20)]
    reply = asyncio.run(llm.achat(_user("and one more")))
    balance = ledger.balance("acme")
    assert balance.spent <= 2_000 and balance.held == 0
    assert balance.spent == _spent(mock)  # the ledger equals what the model produced
    assert len(mock.calls) == 5 and [len(a.text.split()) for a in answers[:5]] == [400, 400, 400, 400, 390]
    assert all(a.additional_kwargs["clear_action"] == "abandon" for a in answers[5:])
    assert "budget" in (reply.message.content or "")


def test_sync_calls_are_capped_in_the_field_and_committed_exactly() -> None:
    ledger = _ledger()
    mock = MeteredMockLLM(response_tokens=50)
    llm = ClearBudgetLLM(mock, ledger=ledger, tenant="acme", policy=BudgetPolicy(max_tokens=20))
    assert len(llm.complete("one two three").text.split()) == 20
    assert mock.calls[-1].prompt_tokens == 3
    llm.complete("x")
    llm.chat(_user("chat please"))
    pieces = list(llm.stream_complete("stream me"))
    chunks = list(llm.stream_chat(_user("stream chat")))
    assert [c.cap for c in mock.calls] == [20] * 5 and all(c.output_tokens == 20 for c in mock.calls)
    assert len(pieces) == 20 and len(chunks) == 20 and pieces[-1].raw["usage"]["completion_tokens"] == 20
    usage = ledger.usage("acme")
    assert ledger.balance("acme").spent == _spent(mock) and ledger.balance("acme").held == 0
    assert usage.calls == 5 and usage.estimated_calls == 0  # the mock's own word count is exact


def test_a_per_call_cap_and_the_inner_field_are_honoured() -> None:
    ledger = _ledger()
    mock = MeteredMockLLM(response_tokens=50, max_tokens=30)
    llm = ClearBudgetLLM(mock, ledger=ledger, tenant="acme")
    llm.complete("a", max_tokens=7)
    llm.complete("b")
    assert [(c.cap, c.output_tokens) for c in mock.calls] == [(7, 7), (30, 30)]
    assert "max_tokens" not in mock.calls[0].cap_params or mock.calls[0].cap_params["max_tokens"] == 7
    assert ledger.balance("acme").spent == _spent(mock)


@pytest.mark.anyio
@pytest.mark.parametrize("native", [True, False], ids=["async-ledger", "sync-ledger-in-thread"])
async def test_async_variants(native: bool) -> None:
    ledger = _ledger()
    extra = {"async_ledger": AsyncLedger.of(ledger)} if native else {}
    mock = MeteredMockLLM(response_tokens=50)
    llm = ClearBudgetLLM(mock, ledger=ledger, tenant="acme", policy=BudgetPolicy(max_tokens=12), **extra)
    await llm.acomplete("q")
    await llm.achat(_user("q"))
    pieces = [c async for c in await llm.astream_complete("q")]
    chunks = [c async for c in await llm.astream_chat(_user("q"))]
    assert len(pieces) == len(chunks) == 12 and [c.cap for c in mock.calls] == [12] * 4
    balance = ledger.balance("acme")
    assert balance.spent == _spent(mock) and balance.held == 0


@pytest.mark.anyio
@pytest.mark.parametrize("native", [True, False], ids=["async-ledger", "sync-ledger-in-thread"])
async def test_200_concurrent_acomplete_on_a_budget_for_50(native: bool) -> None:
    per_call = 2 + 20  # "question N" + 20 answer tokens
    mock = MeteredMockLLM(response_tokens=20, latency=0.001)
    sync = _ledger(50 * per_call)
    async_ledger = AsyncLedger.of(sync) if native else None
    llm = ClearBudgetLLM(mock, ledger=sync, tenant="acme", async_ledger=async_ledger,
                         policy=BudgetPolicy(reserve_tokens=20, wait=0.0))
    results: list[CompletionResponse] = []

    async def one(i: int) -> None:
        results.append(await llm.acomplete(f"question {i}"))

    async with anyio.create_task_group() as tg:
        for i in range(200):
            tg.start_soon(one, i)
    balance = (await async_ledger.balance("acme")) if async_ledger is not None else sync.balance("acme")
    answered = [r for r in results if r.additional_kwargs.get("clear_action") != "abandon"]
    abandoned = [r for r in results if r.additional_kwargs.get("clear_action") == "abandon"]
    assert len(results) == 200 and len(answered) + len(abandoned) == 200  # nothing lost
    assert len(answered) == len(mock.calls) == 50
    assert balance.spent == _spent(mock) <= 50 * per_call and balance.held == 0


def test_abandoned_calls_never_reach_the_model() -> None:
    ledger = _ledger(10)
    mock = MeteredMockLLM(response_tokens=5)
    polite = ClearBudgetLLM(mock, ledger=ledger, tenant="acme", policy=BudgetPolicy(min_tokens=50, wait=0.0))
    reply = polite.chat(_user("hello"))
    assert "budget" in (reply.message.content or "") and reply.additional_kwargs["clear_action"] == "abandon"
    assert [c.delta for c in polite.stream_chat(_user("hello"))] == [reply.message.content]
    custom = ClearBudgetLLM(mock, ledger=ledger, tenant="acme", policy=BudgetPolicy(min_tokens=50, wait=0.0),
                            on_abandon=lambda decision: f"no: {decision.reason}")
    assert custom.complete("hi").text == "no: the budget is exhausted"
    strict = ClearBudgetLLM(mock, ledger=ledger, tenant="acme", policy=BudgetPolicy(min_tokens=50, wait=0.0),
                            on_abandon="raise")
    with pytest.raises(QueryAbandoned, match="exhausted"):
        strict.complete("hello")
    with pytest.raises(QueryAbandoned):
        asyncio.run(strict.achat(_user("hello")))
    assert mock.calls == [] and ledger.balance("acme").held == 0


class _Deaf(MeteredMockLLM):
    """A mock that ignores every cap (as some providers ignore a per-call max_tokens)."""

    def _cap_fields(self) -> dict[str, Any]:
        return {}

    def _begin(self, messages: list[ChatMessage], kwargs: dict[str, Any]) -> Any:
        return super()._begin(messages, {k: v for k, v in kwargs.items() if "max" not in k})


def test_a_stream_is_cut_at_the_cap_even_when_the_model_ignores_it() -> None:
    ledger = _ledger()
    deaf = _Deaf(response_tokens=100)
    llm = ClearBudgetLLM(deaf, ledger=ledger, tenant="acme", policy=BudgetPolicy(max_tokens=10))
    pieces = list(llm.stream_complete("cut me"))
    assert len(pieces) == 10 and deaf.calls[-1].finish_reason == "cancelled"
    assert deaf.calls[-1].output_tokens == 11  # the 11th token was generated (and is paid), not delivered
    assert ledger.usage("acme").completion == 11 and ledger.balance("acme").held == 0
    stream = llm.stream_chat(_user("closed early"))  # the consumer stops after 3 chunks: 3 are paid
    for _ in range(3):
        next(stream)
    stream.close()
    assert deaf.calls[-1].output_tokens == 3 and ledger.usage("acme").completion == 14
    assert ledger.balance("acme").spent == _spent(deaf) and ledger.balance("acme").held == 0
    never = llm.stream_complete("never iterated")  # decides lazily: reserves nothing
    del never
    assert ledger.balance("acme").held == 0


class _Broken(MeteredMockLLM):
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> Any:
        raise RuntimeError("provider down")


def test_bad_arguments_fail_at_construction() -> None:
    from clear_integrations import InvalidAccount

    with pytest.raises(InvalidAccount):
        ClearBudgetLLM(MeteredMockLLM(), ledger=_ledger(), tenant="")
    with pytest.raises(InvalidInput, match="on_abandon"):
        ClearBudgetLLM(MeteredMockLLM(), ledger=_ledger(), tenant="acme", on_abandon=3)  # type: ignore[arg-type]


def test_an_error_releases_the_reservation() -> None:
    ledger = _ledger()
    llm = ClearBudgetLLM(_Broken(), ledger=ledger, tenant="acme")
    with pytest.raises(RuntimeError, match="provider down"):
        llm.chat(_user("hi"))
    assert ledger.balance("acme").spent == 0 and ledger.balance("acme").held == 0


def test_tenants_never_charge_each_other_and_scope_overrides_per_task() -> None:
    ledger = _ledger(10_000, "acme", "beta")
    mock = MeteredMockLLM(response_tokens=10)
    llm = ClearBudgetLLM(mock, ledger=ledger, tenant="acme")
    llm.complete("a")
    ClearBudgetLLM(mock, ledger=ledger, tenant="beta").complete("b")
    with clear_scope(tenant="beta", session="s1"):
        llm.complete("c")
    with instrument_tags({"clear_tenant": "beta"}):
        llm.complete("d")
    assert ledger.balance("acme").spent == 11 and ledger.balance("beta").spent == 33
    assert ledger.balance("beta/s1").spent == 11

    async def both() -> None:
        async def as_tenant(tenant: str) -> None:
            with clear_scope(tenant=tenant):
                await anyio.sleep(0)
                await llm.achat(_user("concurrent"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(as_tenant, "acme")
            tg.start_soon(as_tenant, "beta")

    asyncio.run(both())
    assert ledger.balance("acme").spent == 22 and ledger.balance("beta").spent == 44


class _Recorder(BaseEventHandler):
    events: list[BaseEvent]

    @classmethod
    def class_name(cls) -> str:
        return "Recorder"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        self.events.append(event)


def test_one_user_call_emits_one_start_event_tagged_as_budgeted() -> None:
    recorder = _Recorder(events=[])
    dispatcher = get_dispatcher()
    dispatcher.add_event_handler(recorder)
    try:
        llm = ClearBudgetLLM(MeteredMockLLM(response_tokens=5), ledger=_ledger(), tenant="acme", session="s")
        llm.chat(_user("hi"))
        asyncio.run(llm.acomplete("hi"))
        list(llm.stream_chat(_user("hi")))
    finally:
        dispatcher.event_handlers.remove(recorder)
    starts = [e for e in recorder.events if isinstance(e, LLMChatStartEvent | LLMCompletionStartEvent)]
    assert len(starts) == 3
    assert all(e.tags[BUDGETED_TAG] is True and e.tags["clear_tenant"] == "acme" for e in starts)
    assert all(e.tags["clear_session"] == "s" and e.tags["clear_reservation"] for e in starts)
    assert all(e.model_dict["class_name"] == "MeteredMockLLM" for e in starts)


class _RisingEstimator:
    name = "rising"

    def fit(self, prompts: Any, curves: Any, meta: Any = None) -> _RisingEstimator:
        return self

    def predict(self, prompts: Sequence[str], meta: Sequence[Mapping[str, Any]] | None = None) -> CurveBatch:
        return CurveBatch([16, 32, 64, 128], [[0.1, 0.4, 0.9, 0.91]] * len(prompts))

    def to_dict(self) -> dict[str, Any]:
        return {}


def test_a_cut_answer_is_extended_while_tokens_beat_the_price() -> None:
    ledger = _ledger()
    mock = MeteredMockLLM(response_tokens=100)
    policy = BudgetPolicy(estimator=_RisingEstimator(), tokens_per_query=128, max_tokens=32)
    llm = ClearBudgetLLM(mock, ledger=ledger, tenant="acme", policy=policy)
    answer = llm.chat(_user("extend me"))
    assert [c.cap for c in mock.calls] == [32, 32]  # cut at 32, continued to the curve's next point (64)
    assert len((answer.message.content or "").split()) == 64 and answer.additional_kwargs["completion_tokens"] == 64
    completion = asyncio.run(llm.acomplete("extend me too"))
    assert [c.cap for c in mock.calls[2:]] == [32, 32] and len(completion.text.split()) == 64
    assert ledger.balance("acme").spent == _spent(mock) and ledger.balance("acme").held == 0


def test_metadata_tools_and_structured_prediction_go_through_the_inner_llm() -> None:
    from llama_index.core.llms import MockLLM
    from llama_index.core.prompts import PromptTemplate

    class Song(BaseModel):
        title: str

    mock = MeteredMockLLM(tool_calls=[[{"name": "Song", "args": {"title": "Blue"}}]], response_tokens=5)
    llm = ClearBudgetLLM(mock, ledger=_ledger(), tenant="acme")
    assert llm.metadata.is_function_calling_model and llm.metadata.model_name == "metered-mock"
    song = llm.structured_predict(Song, PromptTemplate("a song about {topic}"), topic="the sea")
    assert song == Song(title="Blue") and mock.calls[-1].tool_calls == ("Song",)
    plain = ClearBudgetLLM(MockLLM(), ledger=_ledger(), tenant="acme")
    assert not plain.metadata.is_function_calling_model
    with pytest.raises(Unsupported, match="not a FunctionCallingLLM"):
        plain.get_tool_calls_from_response(plain.chat(_user("x")))
    assert plain.ledger.usage("acme").estimated_calls == 1  # MockLLM reports no usage: tiktoken, marked


# -- agents -----------------------------------------------------------------------------------------------------

# llama-index's workflows inspect agents with inspect.getmembers, which trips pydantic's deprecation warnings
_UPSTREAM = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:inspect"),
    pytest.mark.filterwarnings("ignore:is_running called:DeprecationWarning"),
]


def _upstream(test: Any) -> Any:
    for mark in _UPSTREAM:
        test = mark(test)
    return test


def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def multiply(a: int, b: int) -> int:
    """Multiply two numbers."""
    return a * b


def _agent_mock(**kwargs: Any) -> MeteredMockLLM:
    script = [[{"name": "add", "args": {"a": 1, "b": 2}}], [{"name": "multiply", "args": {"a": 3, "b": 4}}], []]
    return MeteredMockLLM(response_tokens=30, tool_calls=script, **kwargs)


@_upstream
@pytest.mark.anyio
@pytest.mark.parametrize("streaming", [True, False], ids=["streaming", "not-streaming"])
async def test_function_agent_with_two_tools_reserves_caps_and_commits_each_step(streaming: bool) -> None:
    from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult

    ledger = _ledger()
    mock = _agent_mock()
    llm = ClearBudgetLLM(mock, ledger=ledger, tenant="acme", policy=BudgetPolicy(max_tokens=25))
    agent = FunctionAgent(tools=[add, multiply], llm=llm, streaming=streaming)
    handler = agent.run(user_msg="what is (1 + 2) * 4?")
    results = [e.tool_output.content async for e in handler.stream_events() if isinstance(e, ToolCallResult)]
    answer = await handler
    assert results == ["3", "12"] and len(str(answer).split()) == 25
    assert [(c.cap, c.tool_calls, c.streamed) for c in mock.calls] == [
        (25, ("add",), streaming), (25, ("multiply",), streaming), (25, (), streaming)
    ]
    assert ledger.balance("acme").spent == _spent(mock) and ledger.balance("acme").held == 0
    assert ledger.usage("acme").calls == 3


@_upstream
@pytest.mark.anyio
async def test_an_agent_ends_gracefully_when_the_budget_says_stop() -> None:
    from llama_index.core.agent.workflow import FunctionAgent

    mock = _agent_mock()
    first_step = 4 + 25  # the question and the first (tool-calling) step's cap
    ledger = _ledger(first_step + 5)
    llm = ClearBudgetLLM(mock, ledger=ledger, tenant="acme", policy=BudgetPolicy(max_tokens=25, min_tokens=20, wait=0))
    answer = await FunctionAgent(tools=[add, multiply], llm=llm).run(user_msg="what is (1 + 2) * 4?")
    assert "budget" in str(answer) and [c.tool_calls for c in mock.calls] == [("add",)]  # step 2 was abandoned
    assert ledger.balance("acme").spent == _spent(mock) <= first_step + 5 and ledger.balance("acme").held == 0
    strict = ClearBudgetLLM(mock, ledger=ledger, tenant="acme", on_abandon="raise",
                            policy=BudgetPolicy(max_tokens=25, min_tokens=20, wait=0))
    with pytest.raises(QueryAbandoned):
        await FunctionAgent(tools=[add, multiply], llm=strict).run(user_msg="again")


@_upstream
@pytest.mark.anyio
async def test_react_agent_and_agent_workflow_run_on_the_wrapper() -> None:
    from llama_index.core.agent.workflow import AgentWorkflow, ReActAgent

    ledger = _ledger()
    mock = _agent_mock()
    llm = ClearBudgetLLM(mock, ledger=ledger, tenant="acme", policy=BudgetPolicy(max_tokens=25))
    answer = await ReActAgent(tools=[add, multiply], llm=llm).run(user_msg="hi")  # no "Thought:": a direct answer
    assert len(str(answer).split()) == 25 and [c.cap for c in mock.calls] == [25]
    mock.reset()
    workflow = AgentWorkflow.from_tools_or_functions([add, multiply], llm=llm)
    answer = await workflow.run(user_msg="what is (1 + 2) * 4?")
    assert [(c.cap, c.tool_calls) for c in mock.calls] == [(25, ("add",)), (25, ("multiply",)), (25, ())]
    assert ledger.balance("acme").held == 0 and ledger.usage("acme").calls == 4
    broke = _ledger(10)
    poor = ClearBudgetLLM(MeteredMockLLM(), ledger=broke, tenant="acme", policy=BudgetPolicy(min_tokens=50, wait=0))
    assert "budget" in str(await ReActAgent(tools=[add], llm=poor).run(user_msg="hi"))


@_upstream
@pytest.mark.anyio
async def test_concurrent_agents_are_charged_to_their_own_tenant() -> None:
    from llama_index.core.agent.workflow import FunctionAgent

    ledger = _ledger(10_000, "acme", "beta")
    mocks = {"acme": MeteredMockLLM(response_tokens=10), "beta": MeteredMockLLM(response_tokens=40)}
    shared = MeteredMockLLM(response_tokens=10)
    llm = ClearBudgetLLM(shared, ledger=ledger, tenant="acme")

    async def run(tenant: str) -> None:
        own = ClearBudgetLLM(mocks[tenant], ledger=ledger, tenant="nobody")
        with clear_scope(tenant=tenant):  # follows the workflow's steps into their tasks
            await FunctionAgent(tools=[add], llm=own).run(user_msg="hello")

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "acme")
        tg.start_soon(run, "beta")
    assert ledger.balance("acme").spent == _spent(mocks["acme"])
    assert ledger.balance("beta").spent == _spent(mocks["beta"])
    assert ledger.balance("nobody").spent == 0 and llm.tenant == "acme"


class _BrokenStream(MeteredMockLLM):
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        raise RuntimeError("stream refused")


@pytest.mark.anyio
async def test_failed_streams_and_cancelled_calls_release_their_reservation() -> None:
    ledger = _ledger()
    broken = ClearBudgetLLM(_BrokenStream(), ledger=ledger, tenant="acme")
    with pytest.raises(RuntimeError, match="stream refused"):
        list(broken.stream_complete("hi"))
    slow = ClearBudgetLLM(MeteredMockLLM(response_tokens=5, latency=5.0), ledger=ledger, tenant="acme")
    with anyio.move_on_after(0.2):
        await slow.acomplete("never answered")
    with anyio.move_on_after(0.2):
        async for _ in await slow.astream_chat(_user("never streamed")):
            pass
    assert ledger.balance("acme").spent == 0 and ledger.balance("acme").held == 0
    assert ledger.usage("acme").calls == 0
    assert broken.to_dict()["class_name"] == "ClearBudgetLLM" and broken.to_dict()["tenant"] == "acme"


# -- usage as each provider reports it ----------------------------------------------------------------------------


class _Obj:
    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


@pytest.mark.parametrize(
    ("raw", "extra", "message_extra", "expected"),
    [
        ({"usage": {"prompt_tokens": 5, "completion_tokens": 7, "completion_tokens_details": {"reasoning_tokens": 3}}},
         {}, {}, (5, 7, 3)),
        (_Obj(usage=_Obj(prompt_tokens=4, completion_tokens=2, completion_tokens_details=None)), {}, {}, (4, 2, 0)),
        ({"usage": {"input_tokens": 10, "output_tokens": 3, "cache_read_input_tokens": 90}}, {}, {}, (100, 3, 0)),
        ({"prompt_eval_count": 6, "eval_count": 8, "done_reason": "length"}, {}, {}, (6, 8, 0)),
        ({"usage_metadata": {"prompt_token_count": 2, "candidates_token_count": 5, "thoughts_token_count": 4}},
         {}, {}, (2, 9, 4)),
        (None, {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}, {}, (1, 2, 0)),
        ({"type": "message_delta"}, {}, {"usage": {"input_tokens": 3, "output_tokens": 4}}, (3, 4, 0)),
    ],
    ids=["openai-dict", "sdk-object", "anthropic-cache", "ollama", "gemini", "flat-kwargs", "anthropic-stream"],
)
def test_provider_usage_is_read_where_each_provider_puts_it(
    raw: Any, extra: dict[str, Any], message_extra: dict[str, Any], expected: tuple[int, int, int]
) -> None:
    from llama_index.core.base.llms.types import ChatResponse

    from clear_integrations.adapters.llama_index.usage import reported_usage

    response = ChatResponse(message=ChatMessage(role="assistant", content="x", additional_kwargs=message_extra),
                            raw=raw, additional_kwargs=extra)
    usage = reported_usage(response)
    assert usage is not None and (usage.prompt, usage.completion, usage.reasoning) == expected
    assert not usage.estimated


def test_reasoning_tokens_reach_the_ledger() -> None:
    ledger = _ledger()
    mock = MeteredMockLLM(response_tokens=5, reasoning_tokens=10)
    ClearBudgetLLM(mock, ledger=ledger, tenant="acme").chat(_user("think first"))
    usage = ledger.usage("acme")
    assert (usage.prompt, usage.completion, usage.reasoning) == (2, 15, 10)
