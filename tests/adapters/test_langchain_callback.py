"""ClearCallbackHandler: exact ledger accounting for chains and agents on every call path, no wrapping needed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.caches import InMemoryCache
from langchain_core.globals import set_llm_cache
from langchain_core.language_models import FakeListChatModel, FakeListLLM
from langchain_core.language_models.fake_chat_models import FakeListChatModelError
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGeneration, Generation, LLMResult
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import tool
from langchain_core.tracers.context import _configure_hooks

from clear_integrations.adapters.langchain.callback import ClearCallbackHandler
from clear_integrations.errors import QueryAbandoned
from clear_integrations.ledger import Budget, Ledger, open_ledger
from clear_integrations.testing import MeteredFakeChatModel
from clear_integrations.tokens import count_tokens

PROMPT = ChatPromptTemplate.from_template("{q}")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def ledger() -> Ledger:
    ledger = open_ledger("memory://")
    ledger.set_budget("acme", Budget(tokens=1_000_000))
    return ledger


@pytest.fixture
def cache() -> Iterator[None]:
    set_llm_cache(InMemoryCache())
    yield
    set_llm_cache(None)


def config(handler: ClearCallbackHandler, **metadata: Any) -> RunnableConfig:
    return {"callbacks": [handler], "metadata": metadata}


def real(model: MeteredFakeChatModel) -> int:
    return sum(call.total_tokens for call in model.calls)


def assert_exact(ledger: Ledger, model: MeteredFakeChatModel, account: str = "acme") -> None:
    balance = ledger.balance(account)
    assert (balance.spent, balance.held) == (real(model), 0)
    assert ledger.usage(account).estimated_calls == 0


def test_invoke_batch_and_stream_commit_the_real_usage(ledger: Ledger) -> None:
    model = MeteredFakeChatModel(response_tokens=[5, 7, 9, 11, 13], reasoning_tokens=2)
    chain = PROMPT | model | StrOutputParser()
    handler = ClearCallbackHandler(ledger, tenant="acme")
    chain.invoke({"q": "one two"}, config=config(handler))
    chain.batch([{"q": "a"}, {"q": "b c"}], config=config(handler))
    assert "".join(chain.stream({"q": "stream me"}, config=config(handler)))
    assert_exact(ledger, model)
    totals = ledger.usage("acme")
    assert (totals.calls, totals.reasoning) == (4, 8)
    assert handler.totals().calls == 4 and handler.totals().in_flight == 0
    assert handler.totals().completion == sum(c.output_tokens for c in model.calls)


@pytest.mark.anyio
async def test_ainvoke_abatch_and_astream_commit_the_real_usage(ledger: Ledger) -> None:
    model = MeteredFakeChatModel(response_tokens=6)
    chain = PROMPT | model | StrOutputParser()
    handler = ClearCallbackHandler(ledger, tenant="acme")
    await chain.ainvoke({"q": "x"}, config=config(handler))
    await chain.abatch([{"q": "y"}, {"q": "z z"}], config=config(handler))
    assert [chunk async for chunk in chain.astream({"q": "w"}, config=config(handler))]
    assert_exact(ledger, model)
    assert ledger.usage("acme").calls == 4


def test_reservation_covers_prompt_tools_and_cap_while_in_flight(ledger: Ledger) -> None:
    held: list[int] = []

    @tool
    def lookup(city: str) -> str:
        """Look up the weather of a city."""
        return city

    class Spy(MeteredFakeChatModel):
        def _generate(self, *args: Any, **kwargs: Any) -> Any:
            held.append(ledger.balance("acme").held)
            return super()._generate(*args, **kwargs)

    handler = ClearCallbackHandler(ledger, tenant="acme", reserve_tokens=500)
    Spy(response_tokens=3).invoke("hi", config=config(handler), max_tokens=40)
    Spy(response_tokens=3).invoke("hi", config=config(handler))
    Spy(response_tokens=3).bind_tools([lookup]).invoke("hi", config=config(handler), max_tokens=40)
    assert 40 < held[0] < 60 and 500 < held[1] < 520  # prompt + cap, else prompt + reserve_tokens
    assert held[2] > held[0] + 20  # the tool schema is part of the prompt
    assert ledger.balance("acme").held == 0


def test_a_model_without_usage_is_estimated(ledger: Ledger) -> None:
    model = FakeListChatModel(responses=["the answer is forty two"])
    handler = ClearCallbackHandler(ledger, tenant="acme")
    (PROMPT | model | StrOutputParser()).invoke({"q": "what is six times seven?"}, config=config(handler))
    "".join((PROMPT | model | StrOutputParser()).stream({"q": "again"}, config=config(handler)))
    totals, balance = ledger.usage("acme"), ledger.balance("acme")
    assert (totals.calls, totals.estimated_calls, balance.held) == (2, 2, 0)
    assert totals.completion == 2 * 5 and totals.prompt > 0  # five tiktoken tokens, counted on the whole text
    assert handler.totals().estimated_calls == 2


def test_llm_output_token_usage_is_the_fallback(ledger: Ledger) -> None:
    handler = ClearCallbackHandler(ledger, tenant="acme")
    run = handler_run(handler)
    response = LLMResult(
        generations=[[ChatGeneration(message=AIMessage("hi"))]],
        llm_output={"token_usage": {"prompt_tokens": 11, "completion_tokens": 4}},
    )
    handler.on_llm_end(response, run_id=run)
    totals = ledger.usage("acme")
    assert (totals.prompt, totals.completion, totals.estimated_calls) == (11, 4, 0)


def test_a_text_llm_batch_reporting_the_whole_calls_usage_on_its_first_run_is_not_counted_twice(
    ledger: Ledger,
) -> None:
    class Aggregating(FakeListLLM):  # as OpenAI's completions LLM: one token_usage for all the prompts
        def _generate(self, prompts: list[str], *args: Any, **kwargs: Any) -> LLMResult:
            usage = {"prompt_tokens": 10, "completion_tokens": 6, "total_tokens": 16}
            texts = [[Generation(text="two words")] for _ in prompts]
            return LLMResult(generations=texts, llm_output={"token_usage": usage})

    handler = ClearCallbackHandler(ledger, tenant="acme")
    Aggregating(responses=["x"]).batch(["first", "second", "third"], config=config(handler))
    totals = ledger.usage("acme")
    assert (totals.total, totals.calls, totals.estimated_calls) == (16, 3, 0)
    FakeListLLM(responses=["a b c"]).batch(["first", "second"], config=config(handler))  # no usage: estimated
    assert ledger.usage("acme").estimated_calls == 2


def test_usage_is_summed_over_all_generations_and_a_shared_usage_counted_once(ledger: Ledger) -> None:
    handler = ClearCallbackHandler(ledger, tenant="acme")

    def gen(i: int, o: int, r: int = 0) -> ChatGeneration:
        usage: Any = {"input_tokens": i, "output_tokens": o, "total_tokens": i + o}
        usage["output_token_details"] = {"reasoning": r}
        return ChatGeneration(message=AIMessage("x", usage_metadata=usage))

    handler.on_llm_end(LLMResult(generations=[[gen(3, 5, 2)], [gen(4, 6, 1)]]), run_id=handler_run(handler))
    shared = gen(10, 20)  # ChatOpenAI with n=2: one response's usage on both choices
    handler.on_llm_end(LLMResult(generations=[[shared, shared]]), run_id=handler_run(handler))
    totals = ledger.usage("acme")
    assert (totals.prompt, totals.completion, totals.reasoning, totals.calls) == (17, 31, 3, 2)


def handler_run(handler: ClearCallbackHandler) -> Any:
    from uuid import uuid4

    run = uuid4()
    handler.on_chat_model_start({}, [[HumanMessage("q")]], run_id=run)
    return run


def test_a_stream_broken_early_commits_what_was_streamed(ledger: Ledger) -> None:
    model = MeteredFakeChatModel(response_tokens=50)
    handler = ClearCallbackHandler(ledger, tenant="acme")
    with closing((PROMPT | model).stream({"q": "go on"}, config=config(handler))) as stream:
        seen = [chunk.text for _, chunk in zip(range(3), stream, strict=False)]
    assert model.calls[-1].finish_reason == "cancelled" and model.calls[-1].output_tokens == 3
    totals, balance = ledger.usage("acme"), ledger.balance("acme")
    assert (totals.calls, totals.estimated_calls, balance.held) == (1, 1, 0)
    assert totals.completion == count_tokens("".join(seen)).tokens and totals.prompt > 0


def test_a_parser_after_the_model_drains_the_stream_and_the_real_usage_is_committed(ledger: Ledger) -> None:
    model = MeteredFakeChatModel(response_tokens=50)
    handler = ClearCallbackHandler(ledger, tenant="acme")
    with closing((PROMPT | model | StrOutputParser()).stream({"q": "go on"}, config=config(handler))) as stream:
        assert len([chunk for _, chunk in zip(range(3), stream, strict=False)]) == 3
    assert model.calls[-1].output_tokens == 50  # LangChain reads the rest of a step's input when closed
    assert_exact(ledger, model)


@pytest.mark.anyio
async def test_an_async_stream_broken_early_commits_what_was_streamed(ledger: Ledger) -> None:
    model = MeteredFakeChatModel(response_tokens=50)
    handler = ClearCallbackHandler(ledger, tenant="acme")
    stream = model.astream("go on", config=config(handler))
    async for _chunk in stream:
        break
    await stream.aclose()  # type: ignore[attr-defined]
    totals = ledger.usage("acme")
    assert (totals.calls, totals.estimated_calls, ledger.balance("acme").held) == (1, 1, 0)
    assert totals.completion >= 1


def test_an_exception_in_the_model_releases(ledger: Ledger) -> None:
    class Broken(MeteredFakeChatModel):
        def _generate(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("provider down")

    handler = ClearCallbackHandler(ledger, tenant="acme")
    with pytest.raises(RuntimeError, match="provider down"):
        (PROMPT | Broken() | StrOutputParser()).invoke({"q": "x"}, config=config(handler))
    with pytest.raises(FakeListChatModelError):  # fails before its first chunk: nothing was streamed
        list(FakeListChatModel(responses=["boom"], error_on_chunk_number=0).stream("q", config=config(handler)))
    balance = ledger.balance("acme")
    assert (balance.spent, balance.held, ledger.usage("acme").calls) == (0, 0, 0)
    assert handler.totals().released == 2 and handler.totals().in_flight == 0


def test_a_cache_hit_charges_nothing(ledger: Ledger, cache: None) -> None:
    model = MeteredFakeChatModel(response_tokens=8)
    handler = ClearCallbackHandler(ledger, tenant="acme")
    first = model.invoke("same question", config=config(handler))
    spent = ledger.balance("acme").spent
    second = model.invoke("same question", config=config(handler))
    assert second.content == first.content and len(model.calls) == 1
    assert (ledger.balance("acme").spent, ledger.balance("acme").held) == (spent, 0) and spent == real(model)
    assert (handler.totals().cache_hits, handler.totals().released, ledger.usage("acme").calls) == (1, 0, 1)


def test_metadata_overrides_tenant_and_session(ledger: Ledger) -> None:
    model = MeteredFakeChatModel(response_tokens=4)
    chain = PROMPT | model | StrOutputParser()
    handler = ClearCallbackHandler(ledger, tenant="acme", session="s1")
    chain.invoke({"q": "a"}, config=config(handler))
    chain.invoke({"q": "b"}, config=config(handler, clear_tenant="globex"))
    chain.invoke({"q": "c"}, config=config(handler, clear_session="s2"))
    per_call = [call.total_tokens for call in model.calls]
    assert ledger.balance("acme/s1").spent == per_call[0]
    assert ledger.balance("globex").spent == per_call[1]  # another tenant brings its own session: none here
    assert ledger.balance("globex/s1").spent == 0
    assert ledger.balance("acme/s2").spent == per_call[2]
    assert ledger.balance("acme").spent == per_call[0] + per_call[2]


def test_runs_budgeted_by_clear_budget_are_skipped(ledger: Ledger) -> None:
    model = MeteredFakeChatModel(response_tokens=4)
    handler = ClearCallbackHandler(ledger, tenant="acme")
    model.invoke("q", config={"callbacks": [handler], "tags": ["clear:budgeted"]})
    assert ledger.balance("acme").spent == 0 and handler.totals().calls == 0


def test_with_clear_budget_nothing_is_counted_twice(ledger: Ledger) -> None:
    from clear_integrations.adapters.langchain.runnable import ClearBudget

    model = MeteredFakeChatModel(response_tokens=12)
    handler = ClearCallbackHandler(ledger, tenant="acme")
    chain = ClearBudget(PROMPT | model | StrOutputParser(), ledger=ledger, tenant="acme")
    chain.invoke({"q": "x"}, config=config(handler))
    assert_exact(ledger, model)
    assert ledger.usage("acme").calls == 1 and handler.totals().calls == 0


def test_text_llms_are_accounted_through_on_llm_start(ledger: Ledger) -> None:
    llm = FakeListLLM(responses=["four score and seven"])
    handler = ClearCallbackHandler(ledger, tenant="acme")
    llm.invoke("hello", config=config(handler))
    assert "".join(llm.stream("hello", config=config(handler))) == "four score and seven"
    totals = ledger.usage("acme")
    assert (totals.calls, totals.estimated_calls, totals.completion) == (2, 2, 8)
    assert ledger.balance("acme").held == 0


def test_raise_on_exhausted_prevents_the_provider_call(ledger: Ledger) -> None:
    ledger.set_budget("acme", Budget(tokens=0))
    model = MeteredFakeChatModel(response_tokens=4)
    handler = ClearCallbackHandler(ledger, tenant="acme", raise_on_exhausted=True)
    with pytest.raises(QueryAbandoned):
        (PROMPT | model | StrOutputParser()).invoke({"q": "x"}, config=config(handler))
    with pytest.raises(QueryAbandoned):
        list(model.stream("x", config=config(handler)))
    assert model.calls == [] and handler.totals().in_flight == 0
    assert ledger.balance("acme").held == 0


@pytest.mark.anyio
async def test_raise_on_exhausted_prevents_the_provider_call_async(ledger: Ledger) -> None:
    ledger.set_budget("acme", Budget(tokens=0))
    model = MeteredFakeChatModel(response_tokens=4)
    handler = ClearCallbackHandler(ledger, tenant="acme", raise_on_exhausted=True)
    with pytest.raises(QueryAbandoned):
        await (PROMPT | model | StrOutputParser()).ainvoke({"q": "x"}, config=config(handler))
    with pytest.raises(QueryAbandoned):
        await model.abatch(["x", "y"], config=config(handler))
    assert model.calls == []


def test_a_refused_run_in_a_batch_of_prompts_releases_the_runs_started_before_it(ledger: Ledger) -> None:
    ledger.set_budget("acme", Budget(tokens=10))
    llm = FakeListLLM(responses=["never"])
    handler = ClearCallbackHandler(ledger, tenant="acme", raise_on_exhausted=True)
    with pytest.raises(QueryAbandoned):
        llm.batch(["first prompt", "second prompt"], config=config(handler))  # one call, two runs
    assert llm.i == 0 and ledger.balance("acme").held == 0
    assert handler.totals().in_flight == 0 and handler.totals().released == 1


def test_a_nearly_spent_budget_reserves_what_is_left_and_charges_it_all() -> None:
    ledger = open_ledger("memory://")
    ledger.set_budget("acme", Budget(tokens=30))
    model = MeteredFakeChatModel(response_tokens=20)
    handler = ClearCallbackHandler(ledger, tenant="acme")
    model.invoke("q", config=config(handler))  # reserves the 30 left, uses 21
    model.invoke("q", config=config(handler))  # 9 left: reserves them, charged 21 in full
    model.invoke("q", config=config(handler))  # nothing left: runs unreserved, charged in full all the same
    assert handler.totals().unreserved == 1 and handler.totals().calls == 3
    balance = ledger.balance("acme")
    assert balance.spent == real(model) == 63 and balance.held == 0 and ledger.usage("acme").calls == 3


@pytest.mark.anyio
async def test_abatch_of_100_on_one_handler_is_exact(ledger: Ledger) -> None:
    model = MeteredFakeChatModel(response_tokens=lambda messages: 1 + len(messages[-1].text) % 17)
    handler = ClearCallbackHandler(ledger, tenant="acme")
    chain = PROMPT | model | StrOutputParser()
    outs = await chain.abatch([{"q": f"question number {i}"} for i in range(100)], config=config(handler))
    assert len(outs) == 100
    assert_exact(ledger, model)
    assert ledger.usage("acme").calls == handler.totals().calls == 100


def test_threads_share_one_handler(ledger: Ledger) -> None:
    model = MeteredFakeChatModel(response_tokens=3)
    handler = ClearCallbackHandler(ledger, tenant="acme")
    threads = [threading.Thread(target=model.batch, args=([f"q {i}"] * 10, config(handler))) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert_exact(ledger, model)
    assert ledger.usage("acme").calls == 80


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def test_create_agent_counts_every_step(ledger: Ledger) -> None:
    model = MeteredFakeChatModel(response_tokens=7, tool_calls=[[{"name": "add", "args": {"a": 2, "b": 3}}], []])
    handler = ClearCallbackHandler(ledger, tenant="acme")
    state = create_agent(model, tools=[add]).invoke({"messages": [HumanMessage("2 + 3?")]}, config=config(handler))
    assert state["messages"][2].content == "5" and len(model.calls) == 2
    assert_exact(ledger, model)
    assert ledger.usage("acme").calls == 2


@pytest.mark.anyio
async def test_create_agent_streaming_counts_every_step(ledger: Ledger) -> None:
    model = MeteredFakeChatModel(response_tokens=3, tool_calls=[[{"name": "add", "args": {"a": 1, "b": 1}}], []])
    handler = ClearCallbackHandler(ledger, tenant="acme")
    agent = create_agent(model, tools=[add])
    async for _ in agent.astream({"messages": [HumanMessage("go")]}, config=config(handler), stream_mode="messages"):
        pass
    assert all(call.streamed for call in model.calls) and len(model.calls) == 2
    assert_exact(ledger, model)


def test_no_global_hooks_are_registered(ledger: Ledger) -> None:
    before = len(_configure_hooks)
    for _ in range(3):
        MeteredFakeChatModel(response_tokens=1).invoke("q", config=config(ClearCallbackHandler(ledger, tenant="a")))
    assert len(_configure_hooks) == before


def test_bad_arguments_are_refused(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="tenant"):
        ClearCallbackHandler(ledger, tenant="not a tenant")
    with pytest.raises(ValueError, match="reserve_tokens"):
        ClearCallbackHandler(ledger, tenant="acme", reserve_tokens=0)
