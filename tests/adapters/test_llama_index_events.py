"""ClearEventHandler: every LlamaIndex LLM call accounted once on the ledger, from the instrumentation events."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.llms.types import ChatResponse, CompletionResponse
from llama_index.core.llms import ChatMessage, CustomLLM, LLMMetadata, MessageRole, MockLLM
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.tools import FunctionTool
from llama_index_instrumentation import get_dispatcher
from llama_index_instrumentation.dispatcher import instrument_tags

from clear_integrations.adapters.llama_index.events import BUDGETED_TAG, ClearEventHandler
from clear_integrations.adapters.llama_index.usage import reported_counts
from clear_integrations.errors import ClearWarning, InvalidBudget, LedgerUnavailable
from clear_integrations.ledger import Budget, Ledger, UsageTotals, open_ledger
from clear_integrations.testing import MeteredCall, MeteredMockLLM

agent_warnings = pytest.mark.filterwarnings("ignore::DeprecationWarning:inspect")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def ledger() -> Ledger:
    return open_ledger("memory://")


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def user(text: str) -> list[ChatMessage]:
    return [ChatMessage(role=MessageRole.USER, content=text)]


def exact(calls: Sequence[MeteredCall]) -> UsageTotals:
    """What the ledger must show for the mock's recorded calls."""
    prompt, completion = sum(c.prompt_tokens for c in calls), sum(c.output_tokens for c in calls)
    reasoning = sum(c.reasoning_tokens for c in calls)
    return UsageTotals(prompt, completion, reasoning, prompt + completion, len(calls), 0)


def test_sync_calls_are_counted_exactly_once_each(ledger: Ledger, handler: ClearEventHandler) -> None:
    llm = MeteredMockLLM(response_tokens=7, reasoning_tokens=3)
    llm.complete("how many words are here")
    llm.chat(user("and here"))
    assert len(list(llm.stream_complete("streamed prompt"))) == 7  # reasoning is not streamed
    assert len(list(llm.stream_chat(user("a streamed chat")))) == 7
    assert ledger.usage("acme") == exact(llm.calls)
    assert ledger.usage("acme").reasoning == 4 * 3
    assert handler.open_calls == 0


@pytest.mark.anyio
async def test_async_calls_are_counted_exactly_once_each(ledger: Ledger, handler: ClearEventHandler) -> None:
    llm = MeteredMockLLM(response_tokens=5)
    await llm.acomplete("one two three")
    await llm.achat(user("four five"))
    assert len([r async for r in await llm.astream_complete("six")]) == 5
    assert len([r async for r in await llm.astream_chat(user("seven eight nine ten"))]) == 5
    assert ledger.usage("acme") == exact(llm.calls)
    assert ledger.usage("acme").calls == 4


@pytest.mark.anyio
async def test_mock_llm_nested_events_are_counted_once_and_estimated(
    ledger: Ledger, handler: ClearEventHandler
) -> None:
    llm = MockLLM(max_tokens=4)  # chat -> complete, achat -> chat -> complete, astream_* -> stream_* in a generator
    llm.chat(user("hello there"))
    list(llm.stream_chat(user("hello there")))
    await llm.achat(user("hello there"))
    [r async for r in await llm.astream_chat(user("hello there"))]
    [r async for r in await llm.astream_complete("hello there")]
    usage = ledger.usage("acme")
    assert (usage.calls, usage.estimated_calls) == (5, 5)
    assert usage.prompt > 0
    assert 5 * 3 <= usage.completion <= 5 * 4  # "text text ..." (MockLLM's streams give max_tokens - 1 words)
    assert handler.open_calls == 0


@pytest.mark.anyio
async def test_function_calling_mock_achat_calls_chat_counted_once(ledger: Ledger, handler: ClearEventHandler) -> None:
    llm = MockFunctionCallingLLM()
    await llm.achat(user("echo this"))
    assert (ledger.usage("acme").calls, ledger.usage("acme").estimated_calls) == (1, 1)


class Wrapper(CustomLLM):
    """A wrapper LLM that calls its inner LLM and drops the usage from its own response."""

    inner: MeteredMockLLM

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata()

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text=self.inner.complete(prompt, **kwargs).text)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        def gen() -> Iterator[CompletionResponse]:
            for chunk in self.inner.stream_complete(prompt, **kwargs):
                yield CompletionResponse(text=chunk.text, delta=chunk.delta)

        return gen()


def test_wrapper_llm_counted_once_with_its_inner_llms_usage(ledger: Ledger, handler: ClearEventHandler) -> None:
    inner = MeteredMockLLM(response_tokens=6)
    wrapper = Wrapper(inner=inner)
    wrapper.complete("one two three")  # nested in the wrapper's function
    list(wrapper.stream_complete("four five"))  # nested in the wrapper's stream generator
    wrapper.chat(user("six"))  # chat -> complete -> inner.complete: three levels
    assert ledger.usage("acme") == exact(inner.calls)  # reported by the inner call: exact, not estimated


def test_threads_with_two_tenants_are_exact(ledger: Ledger, handler: ClearEventHandler) -> None:
    llms = {"acme": MeteredMockLLM(response_tokens=3), "globex": MeteredMockLLM(response_tokens=8)}

    def call(i: int) -> None:
        tenant = "acme" if i % 2 else "globex"
        with instrument_tags({"clear_tenant": tenant}):
            if i % 3:
                llms[tenant].complete(f"thread {i}")
            else:
                list(llms[tenant].stream_chat(user(f"thread {i} streams")))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(call, range(40)))
    for tenant, llm in llms.items():
        assert ledger.usage(tenant) == exact(llm.calls)


def test_estimates_include_the_tool_schemas(ledger: Ledger, handler: ClearEventHandler) -> None:
    llm = MockFunctionCallingLLM()  # reports no usage
    llm.chat_with_tools([FunctionTool.from_defaults(add)], user_msg="hello")
    with_tools = ledger.usage("acme").prompt
    llm.chat_with_tools([], user_msg="hello")
    assert with_tools > 10 * (ledger.usage("acme").prompt - with_tools)  # the schema outweighs "user: hello"


def test_tags_override_tenant_and_session(ledger: Ledger, handler: ClearEventHandler) -> None:
    llm = MeteredMockLLM(response_tokens=2)
    with instrument_tags({"clear_tenant": "globex", "clear_session": "s1"}):
        llm.complete("a b")
    with instrument_tags({"clear_session": "s2"}):
        llm.complete("a b c")
    llm.complete("d")
    assert ledger.usage("globex/s1") == exact(llm.calls[:1])
    assert ledger.usage("acme/s2") == exact(llm.calls[1:2])
    assert ledger.usage("acme") == exact(llm.calls[1:])


@pytest.mark.anyio
async def test_concurrent_calls_of_two_tenants_are_exact(ledger: Ledger, handler: ClearEventHandler) -> None:
    llms = {
        "acme": MeteredMockLLM(response_tokens=lambda m: 1 + len(str(m[-1].content)) % 7, latency=0.001),
        "globex": MeteredMockLLM(response_tokens=lambda m: 2 + len(str(m[-1].content)) % 5),
    }

    async def call(i: int) -> None:
        tenant = "acme" if i % 2 else "globex"
        with instrument_tags({"clear_tenant": tenant}):
            llm = llms[tenant]
            if i % 3 == 0:
                [r async for r in await llm.astream_chat(user(f"question {i} " * (i % 4 + 1)))]
            else:
                await llm.acomplete(f"question {i} " * (i % 5 + 1))

    await asyncio.gather(*(call(i) for i in range(50)))
    for tenant, llm in llms.items():
        assert len(llm.calls) == 25
        assert ledger.usage(tenant) == exact(llm.calls)
    assert handler.open_calls == 0


@agent_warnings
@pytest.mark.anyio
@pytest.mark.parametrize("streaming", [True, False])
async def test_function_agent_every_step_is_counted(
    ledger: Ledger, handler: ClearEventHandler, streaming: bool
) -> None:
    llm = MeteredMockLLM(response_tokens=6, tool_calls=[[{"name": "add", "args": {"a": 2, "b": 3}}], []])
    agent = FunctionAgent(tools=[FunctionTool.from_defaults(add)], llm=llm, streaming=streaming)
    with instrument_tags({"clear_tenant": "agents"}):
        await agent.run(user_msg="what is 2 plus 3?")
    assert len(llm.calls) == 2
    assert ledger.usage("agents") == exact(llm.calls)
    assert ledger.usage("acme").calls == 0


def test_stream_stopped_early_is_committed_as_an_estimate(ledger: Ledger, handler: ClearEventHandler) -> None:
    llm = MeteredMockLLM(response_tokens=50)
    stream = llm.stream_complete("a prompt of six words here")
    for _ in range(3):
        next(stream)
    assert handler.open_calls == 1
    del stream  # garbage collection closes the generator: LlamaIndex sends an ExceptionEvent(GeneratorExit)
    gc.collect()
    usage = ledger.usage("acme")
    assert (usage.calls, usage.estimated_calls, handler.open_calls) == (1, 1, 0)
    assert 0 < usage.completion < 50
    unread = llm.stream_chat(user("never read"))
    unread.close()  # no chunk was read: nothing was generated, nothing is charged
    assert ledger.usage("acme").calls == 1


@pytest.mark.anyio
async def test_async_stream_closed_early_is_committed(ledger: Ledger, handler: ClearEventHandler) -> None:
    llm = MeteredMockLLM(response_tokens=40)
    stream = await llm.astream_chat(user("tell me"))
    async for _ in stream:
        break
    await stream.aclose()
    usage = ledger.usage("acme")
    assert (usage.calls, usage.estimated_calls, handler.open_calls) == (1, 1, 0)
    dropped = await llm.astream_complete("dropped without aclose")
    await dropped.__anext__()
    del dropped  # asyncio's async-generator finaliser closes it on the loop
    gc.collect()
    await asyncio.sleep(0.01)
    assert (ledger.usage("acme").calls, handler.open_calls) == (2, 0)


def test_a_call_made_while_a_stream_is_held_is_not_nested(ledger: Ledger, handler: ClearEventHandler) -> None:
    llm = MeteredMockLLM(response_tokens=4)
    stream = llm.stream_complete("held")
    llm.complete("meanwhile")
    list(stream)
    assert ledger.usage("acme") == exact(llm.calls)


def test_stale_stream_is_committed_at_the_next_call(ledger: Ledger) -> None:
    now = [0.0]
    with ClearEventHandler.install(ledger, tenant="acme", stale_after=60, clock=lambda: now[0]) as handler:
        llm = MeteredMockLLM(response_tokens=20)
        stream = llm.stream_complete("forgotten")
        next(stream)
        unread = llm.stream_complete("never read: it generated nothing")
        now[0] = 61.0
        llm.complete("next")
        assert ledger.usage("acme").calls == 2
        assert ledger.usage("acme").estimated_calls == 1
        assert handler.open_calls == 0
        list(stream)  # events of a settled call are ignored
        assert ledger.usage("acme").calls == 2
        unread.close()


def test_detach_settles_open_calls_and_failed_calls_are_free(ledger: Ledger) -> None:
    with ClearEventHandler.install(ledger, tenant="acme") as handler:
        stream = MeteredMockLLM(response_tokens=9).stream_chat(user("open"))
        next(stream)
        with pytest.raises(InvalidBudget):
            MeteredMockLLM().complete("bad", max_tokens="many")
        assert handler.open_calls == 1
    assert handler not in get_dispatcher().event_handlers
    assert (ledger.usage("acme").calls, handler.open_calls) == (1, 0)
    stream.close()


def test_budgeted_calls_are_skipped_with_their_nested_calls(ledger: Ledger, handler: ClearEventHandler) -> None:
    class ClearBudgetLLM(MockLLM):  # stands for the wrapper: its class name marks it
        @classmethod
        def class_name(cls) -> str:
            return "ClearBudgetLLM"

    with instrument_tags({BUDGETED_TAG: True, "clear_tenant": "acme"}):
        MeteredMockLLM(response_tokens=3).complete("accounted by the wrapper")
    ClearBudgetLLM(max_tokens=3).chat(user("the wrapper's own events, and its inner complete"))
    assert ledger.usage("acme").calls == 0
    MockLLM(max_tokens=3).chat(user("counted"))
    assert ledger.usage("acme").calls == 1


@pytest.mark.anyio
async def test_clear_budget_llm_calls_are_left_to_the_wrapper(ledger: Ledger, handler: ClearEventHandler) -> None:
    from clear_integrations.adapters.llama_index import ClearBudgetLLM

    inner = MeteredMockLLM(response_tokens=5)
    llm = ClearBudgetLLM(inner, ledger=ledger, tenant="acme")
    llm.complete("a b c")
    list(llm.stream_chat(user("x y")))
    await llm.achat(user("z"))
    assert ledger.usage("acme") == exact(inner.calls)  # committed once, by the wrapper


def test_hard_budget_records_full_usage_and_keeps_what_it_cannot(
    ledger: Ledger, handler: ClearEventHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger.set_budget("acme", Budget(tokens=10))
    llm = MeteredMockLLM(response_tokens=30)
    llm.complete("one two")
    llm.complete("three")  # nothing left: the tokens were spent all the same, so they are recorded
    assert ledger.balance("acme").spent == 32 + 31 and handler.unbilled() == []
    charge = ledger.charge

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise LedgerUnavailable("redis://down", "connection refused")

    monkeypatch.setattr(ledger, "charge", unreachable)
    with pytest.warns(ClearWarning, match="unbilled"):
        llm.complete("four five six")
    assert [usage.total for _, usage in handler.unbilled()] == [33]
    monkeypatch.setattr(ledger, "charge", charge)
    assert handler.flush() == 0
    assert ledger.usage("acme") == exact(llm.calls)


def test_attach_is_idempotent_and_detach_removes_only_this_handler(ledger: Ledger) -> None:
    dispatcher = get_dispatcher()
    before = list(dispatcher.event_handlers), list(dispatcher.span_handlers)
    first, second = ClearEventHandler(ledger, tenant="a"), ClearEventHandler(ledger, tenant="a")
    try:
        first.attach().attach()
        second.attach()
        assert [h for h in dispatcher.event_handlers if isinstance(h, ClearEventHandler)] == [first, second]
        assert len(dispatcher.span_handlers) == len(before[1]) + 2  # one span handler each
        first.detach()
        assert [h for h in dispatcher.event_handlers if h is first or h is second] == [second]
        assert len(dispatcher.span_handlers) == len(before[1]) + 1
    finally:
        first.detach()
        second.detach()
    assert (dispatcher.event_handlers, dispatcher.span_handlers) == before
    with pytest.raises(RuntimeError), ClearEventHandler.install(ledger, tenant="a"):
        raise RuntimeError("the block failed")
    assert (dispatcher.event_handlers, dispatcher.span_handlers) == before


def _obj(**fields: Any) -> SimpleNamespace:
    return SimpleNamespace(**fields)


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (CompletionResponse(text="x", raw={"usage": {"prompt_tokens": 3, "completion_tokens": 4}}), (3, 4, 0)),
        (  # OpenAI SDK object, reasoning in the details
            CompletionResponse(
                text="x",
                raw=_obj(
                    usage=_obj(prompt_tokens=5, completion_tokens=9, completion_tokens_details=_obj(reasoning_tokens=6))
                ),
            ),
            (5, 9, 6),
        ),
        (  # Anthropic: cache reads and writes are prompt tokens too
            ChatResponse(
                message=ChatMessage(content="x"),
                raw={
                    "usage": _obj(
                        input_tokens=2, output_tokens=7, cache_read_input_tokens=10, cache_creation_input_tokens=1
                    )
                },
            ),
            (13, 7, 0),
        ),
        (  # Anthropic streams: usage in the message's additional_kwargs
            ChatResponse(
                message=ChatMessage(content="x", additional_kwargs={"usage": {"input_tokens": 4, "output_tokens": 8}}),
                raw={"type": "message_delta"},
            ),
            (4, 8, 0),
        ),
        (ChatResponse(message=ChatMessage(content="x"), raw={"prompt_eval_count": 6, "eval_count": 2}), (6, 2, 0)),
        (  # Gemini: thoughts are reasoning, not part of candidates_token_count
            CompletionResponse(
                text="x",
                raw={
                    "usage_metadata": {"prompt_token_count": 1, "candidates_token_count": 2, "thoughts_token_count": 3}
                },
            ),
            (1, 5, 3),
        ),
        (CompletionResponse(text="x", additional_kwargs={"prompt_tokens": 1, "completion_tokens": 1}), (1, 1, 0)),
        (CompletionResponse(text="x", raw={"usage": {"output_tokens": 12}}), (None, 12, 0)),
        (CompletionResponse(text="x", raw={"content": "no usage"}), None),
    ],
)
def test_usage_is_read_where_each_provider_puts_it(response: Any, expected: Any) -> None:
    assert reported_counts(response) == expected
