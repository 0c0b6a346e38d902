"""MeteredMockLLM: exact tokens, caps, usage in raw, native streaming and events, tool calls, FunctionAgent."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, cast

import anyio
import pytest
from llama_index.core.agent.workflow import AgentOutput, AgentStream, FunctionAgent, ToolCallResult
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.llms import ChatMessage, ChatResponse, CompletionResponse, MessageRole, TextBlock
from llama_index.core.tools import FunctionTool
from llama_index_instrumentation import get_dispatcher
from pydantic import Field

from clear_integrations.errors import InvalidBudget, InvalidInput
from clear_integrations.testing import VOCABULARY, MeteredMockLLM, ScriptExhausted


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


# llama-index-workflows builds agents with inspect.getmembers, which trips pydantic's deprecation warnings
agent_warnings = pytest.mark.filterwarnings("ignore::DeprecationWarning:inspect")

TOOLS = [FunctionTool.from_defaults(add), FunctionTool.from_defaults(multiply)]


def user(text: str) -> list[ChatMessage]:
    return [ChatMessage(role=MessageRole.USER, content=text)]


def raw(response: ChatResponse | CompletionResponse) -> dict[str, Any]:
    assert isinstance(response.raw, dict)
    return response.raw


def words(n: int) -> str:
    return " ".join(VOCABULARY[i % len(VOCABULARY)] for i in range(n))


class LLMEvents(BaseEventHandler):
    """Counts LLM start events on the root dispatcher."""

    starts: list[str] = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "LLMEvents"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        name = type(event).__name__
        if name.startswith("LLM") and name.endswith("StartEvent"):
            self.starts.append(name)


@pytest.fixture
def llm_events() -> Iterator[LLMEvents]:
    handler = LLMEvents()
    dispatcher = get_dispatcher()
    dispatcher.add_event_handler(handler)
    try:
        yield handler
    finally:
        dispatcher.event_handlers.remove(handler)


def test_complete_and_chat_answer_with_exact_usage_in_raw_and_additional_kwargs() -> None:
    llm = MeteredMockLLM(response_tokens=12)
    done = llm.complete("why is the sky blue")
    assert done.text == words(12)
    assert raw(done)["usage"] == {"prompt_tokens": 5, "completion_tokens": 12, "total_tokens": 17}
    assert raw(done)["finish_reason"] == "stop"
    assert raw(done)["model"] == "metered-mock"
    assert done.additional_kwargs == {"prompt_tokens": 5, "completion_tokens": 12, "total_tokens": 17}
    chat = llm.chat([ChatMessage(role="system", content="be brief"), *user("why")])
    assert chat.message.role == MessageRole.ASSISTANT
    assert chat.message.content == words(12)
    assert raw(chat)["usage"] == {"prompt_tokens": 3, "completion_tokens": 12, "total_tokens": 15}
    assert [c.prompt_tokens for c in llm.calls] == [5, 3]


@pytest.mark.anyio
async def test_async_complete_and_chat() -> None:
    llm = MeteredMockLLM(response_tokens=8)
    done = await llm.acomplete("a b", max_tokens=3)
    assert done.text == words(3)
    assert raw(done)["finish_reason"] == "length"
    chat = await llm.achat(user("a b c"), max_new_tokens=5)
    assert raw(chat)["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    assert [(c.cap, c.streamed) for c in llm.calls] == [(3, False), (5, False)]


@pytest.mark.parametrize("spelling", ["max_tokens", "max_new_tokens", "max_completion_tokens", "num_predict"])
def test_per_call_caps(spelling: str) -> None:
    llm = MeteredMockLLM(response_tokens=20)
    four: dict[str, Any] = {spelling: 4}
    six: dict[str, Any] = {spelling: 6}
    assert raw(llm.complete("q", **four))["usage"]["completion_tokens"] == 4
    assert llm.chat(user("q"), **six).message.content == words(6)
    assert [c.cap_params for c in llm.calls] == [{spelling: 4}, {spelling: 6}]
    assert all(c.finish_reason == "length" for c in llm.calls)


@pytest.mark.parametrize("spelling", ["max_tokens", "max_new_tokens"])
def test_field_caps_and_metadata(spelling: str) -> None:
    llm = MeteredMockLLM(response_tokens=20, **{spelling: 7})
    assert llm.complete("q").text == words(7)
    assert llm.metadata.num_output == 7
    assert llm.complete("q", max_completion_tokens=2).text == words(2)  # the smallest cap wins
    nine: dict[str, Any] = {spelling: 9}
    assert llm.complete("q", **nine).text == words(9)  # a per-call value replaces its field


def test_metadata() -> None:
    meta = MeteredMockLLM(response_tokens=30, reasoning_tokens=5, context_window=4096, model_name="m").metadata
    assert (meta.context_window, meta.num_output, meta.model_name) == (4096, 35, "m")
    assert meta.is_chat_model and meta.is_function_calling_model


def test_malformed_caps_are_refused() -> None:
    with pytest.raises(ValueError, match="max_new_tokens"):
        MeteredMockLLM(max_new_tokens=-1)
    with pytest.raises(InvalidBudget, match="max_tokens"):
        MeteredMockLLM().complete("q", max_tokens=-2)


def test_streams_yield_one_delta_per_token_and_the_last_carries_usage() -> None:
    llm = MeteredMockLLM(response_tokens=5)
    parts = list(llm.stream_complete("a b", max_tokens=4))
    assert [p.delta for p in parts] == ["alpha", " bravo", " charlie", " delta"]
    assert parts[-1].text == words(4)
    assert all(p.raw is None for p in parts[:-1])
    assert raw(parts[-1])["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
    assert raw(parts[-1])["finish_reason"] == "length"
    chats = list(llm.stream_chat(user("a")))
    assert [c.delta for c in chats] == ["alpha", " bravo", " charlie", " delta", " echo"]
    assert chats[-1].message.content == words(5)
    assert chats[-1].additional_kwargs["completion_tokens"] == 5
    assert [c.streamed for c in llm.calls] == [True, True]


@pytest.mark.anyio
async def test_async_streams() -> None:
    llm = MeteredMockLLM(response_tokens=3)
    parts = [p async for p in await llm.astream_complete("x y z")]
    assert [p.delta for p in parts] == ["alpha", " bravo", " charlie"]
    assert raw(parts[-1])["usage"]["total_tokens"] == 6
    chats = [c async for c in await llm.astream_chat(user("x"), max_tokens=2)]
    assert chats[-1].message.content == "alpha bravo"
    assert raw(chats[-1])["usage"] == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    assert [(c.output_tokens, c.streamed) for c in llm.calls] == [(3, True), (2, True)]


def test_an_abandoned_stream_records_what_it_emitted() -> None:
    llm = MeteredMockLLM(response_tokens=10)
    stream = llm.stream_chat(user("q"))
    next(stream)
    next(stream)
    stream.close()
    assert (llm.calls[-1].output_tokens, llm.calls[-1].finish_reason) == (2, "cancelled")


@pytest.mark.anyio
async def test_one_user_call_emits_exactly_one_llm_event(llm_events: LLMEvents) -> None:
    llm = MeteredMockLLM(response_tokens=2)
    llm.complete("q")
    llm.chat(user("q"))
    list(llm.stream_complete("q"))
    list(llm.stream_chat(user("q")))
    await llm.acomplete("q")
    await llm.achat(user("q"))
    [r async for r in await llm.astream_complete("q")]
    [r async for r in await llm.astream_chat(user("q"))]
    assert llm_events.starts == ["LLMCompletionStartEvent", "LLMChatStartEvent"] * 4
    assert len(llm.calls) == 8


def test_token_counting_handler_reads_the_reported_usage() -> None:
    counter = TokenCountingHandler(tokenizer=lambda text: [0] * 1000)  # a tokenizer fallback would be way off
    llm = MeteredMockLLM(response_tokens=9, callback_manager=CallbackManager([counter]))
    llm.chat(user("three short words"))
    list(llm.stream_complete("two words", max_tokens=4))
    assert counter.prompt_llm_token_count == 5
    assert counter.completion_llm_token_count == 13


def test_reasoning_tokens_are_reported_in_raw_usage() -> None:
    llm = MeteredMockLLM(response_tokens=4, reasoning_tokens=3)
    done = llm.complete("q")
    assert done.text == words(4)
    assert raw(done)["usage"]["completion_tokens"] == 7
    assert raw(done)["usage"]["completion_tokens_details"] == {"reasoning_tokens": 3}
    starved = llm.complete("q", max_tokens=3)
    assert (starved.text, raw(starved)["finish_reason"]) == ("", "length")


def test_answer_lengths_from_a_function_or_a_list() -> None:
    def by_length(messages: list[ChatMessage]) -> int:
        return 2 * len(str(messages[-1].content).split())

    llm = MeteredMockLLM(response_tokens=by_length)
    assert llm.complete("one two three").text == words(6)
    assert llm.chat(user("one")).message.content == words(2)
    scripted = MeteredMockLLM(response_tokens=[1, 2])
    assert [scripted.complete("q").text for _ in range(2)] == [words(1), words(2)]
    with pytest.raises(ScriptExhausted):
        scripted.complete("q")


def test_chat_with_tools_and_tool_selections() -> None:
    llm = MeteredMockLLM(response_tokens=3, tool_calls=[[{"name": "add", "args": {"a": 1, "b": 2}, "id": "t1"}]])
    response = llm.chat_with_tools(TOOLS, user_msg="add 1 and 2")
    selections = llm.get_tool_calls_from_response(response)
    assert [(s.tool_id, s.tool_name, s.tool_kwargs) for s in selections] == [("t1", "add", {"a": 1, "b": 2})]
    assert raw(response)["finish_reason"] == "tool_calls"
    final = llm.chat_with_tools(TOOLS, user_msg="again")
    assert final.message.content == words(3)
    assert llm.get_tool_calls_from_response(final, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="tool call"):
        llm.get_tool_calls_from_response(final)
    assert llm.predict_and_call(TOOLS, user_msg="no more tools", error_on_no_tool_call=False).response == words(3)


def test_scripted_tool_must_be_among_the_tools() -> None:
    llm = MeteredMockLLM(tool_calls=[[{"name": "divide", "args": {}}]])
    with pytest.raises(InvalidInput, match="divide"):
        llm.chat_with_tools(TOOLS, user_msg="q")


@agent_warnings
@pytest.mark.anyio
@pytest.mark.parametrize("streaming", [True, False])
async def test_function_agent_calls_a_tool_then_answers(streaming: bool) -> None:
    llm = MeteredMockLLM(
        response_tokens=6,
        tool_calls=[[{"name": "multiply", "args": {"a": 6, "b": 7}}], []],
    )
    agent = FunctionAgent(tools=TOOLS, llm=llm, streaming=streaming)
    handler = agent.run(user_msg="what is 6 times 7?")
    deltas = [event.delta async for event in handler.stream_events() if isinstance(event, AgentStream)]
    result = cast(AgentOutput, await handler)
    assert [call.tool_name for call in result.tool_calls] == ["multiply"]
    assert cast(ToolCallResult, result.tool_calls[0]).tool_output.raw_output == 42
    assert result.response.content == words(6)
    assert isinstance(result.raw, dict)
    assert result.raw["usage"]["completion_tokens"] == 6
    assert [c.tool_calls for c in llm.calls] == [("multiply",), ()]
    assert [c.streamed for c in llm.calls] == [streaming, streaming]
    assert llm.calls[1].prompt_tokens == 5 + 1  # the question and the tool's output "42"
    if streaming:
        assert "".join(deltas) == words(6)


@agent_warnings
@pytest.mark.anyio
async def test_function_agent_run_awaited_directly() -> None:
    llm = MeteredMockLLM(response_tokens=2, tool_calls=[[{"name": "add", "args": {"a": 2, "b": 2}}], []])
    result = await FunctionAgent(tools=TOOLS, llm=llm).run(user_msg="2 + 2?")
    assert str(result) == words(2)
    assert len(llm.calls) == 2


def test_sync_latency_is_waited() -> None:
    llm = MeteredMockLLM(response_tokens=1, latency=0.02)
    started = time.monotonic()
    llm.complete("q")
    list(llm.stream_chat(user("q")))
    assert time.monotonic() - started >= 0.04


@pytest.mark.anyio
async def test_async_latency_yields_to_other_tasks() -> None:
    order: list[str] = []
    llm = MeteredMockLLM(response_tokens=1, latency=0.05)

    async def call() -> None:
        response: ChatResponse = await llm.achat(user("q"))
        assert isinstance(response.message.blocks[0], TextBlock)
        order.append("achat")

    async def ticker() -> None:
        await anyio.sleep(0.005)
        order.append("tick")

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        tg.start_soon(ticker)
    assert order == ["tick", "achat"]


@pytest.mark.anyio
async def test_concurrent_calls_are_all_recorded() -> None:
    llm = MeteredMockLLM(response_tokens=5)

    async def one(i: int) -> None:
        await llm.acomplete(f"question {i}", max_tokens=3)

    async with anyio.create_task_group() as tg:
        for i in range(100):
            tg.start_soon(one, i)
    assert len(llm.calls) == 100
    assert {(c.prompt_tokens, c.output_tokens, c.cap) for c in llm.calls} == {(2, 3, 3)}
    llm.reset()
    assert llm.calls == []
