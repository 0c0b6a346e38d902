"""MeteredFakeChatModel: exact tokens, caps in every spelling, usage on every path, streaming, tools, agents."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from types import GeneratorType
from typing import Any, cast
from uuid import UUID

import anyio
import pytest
from langchain.agents import create_agent
from langchain_core.callbacks import BaseCallbackHandler, get_usage_metadata_callback
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    UsageMetadata,
)
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tools import tool
from pydantic import BaseModel

from clear_integrations.errors import InvalidBudget, InvalidInput
from clear_integrations.testing import VOCABULARY, MeteredFakeChatModel, ScriptExhausted

SPELLINGS = ["max_tokens", "max_completion_tokens", "max_new_tokens", "num_predict", "max_output_tokens"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


class Recorder(BaseCallbackHandler):
    """Collects new tokens, start metadata and end results."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.starts: list[dict[str, Any]] = []
        self.ends = 0

    def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.starts.append(kwargs.get("metadata") or {})

    def on_llm_new_token(self, token: Any, **kwargs: Any) -> None:
        self.tokens.append(token)

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self.ends += 1


def usage(message: BaseMessage) -> UsageMetadata:
    assert isinstance(message, AIMessage)
    assert message.usage_metadata is not None
    return message.usage_metadata


def merge(chunks: Sequence[BaseMessage]) -> AIMessageChunk:
    assert all(isinstance(chunk, AIMessageChunk) for chunk in chunks)
    total = cast(AIMessageChunk, chunks[0])
    for chunk in chunks[1:]:
        total = total + cast(AIMessageChunk, chunk)
    return total


def test_importing_the_package_loads_no_framework() -> None:
    import subprocess

    code = (
        "import sys, clear_integrations.testing as t; "
        "assert 'langchain_core' not in sys.modules and 'llama_index' not in sys.modules; "
        "assert 'MeteredFakeChatModel' in t.__all__ and 'MeteredMockLLM' in dir(t)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_answers_with_exactly_response_tokens_words_and_counts_the_prompt() -> None:
    model = MeteredFakeChatModel(response_tokens=30)
    reply = model.invoke([SystemMessage("be brief"), HumanMessage("why is the sky blue")])
    assert isinstance(reply, AIMessage)
    words = str(reply.content).split()
    assert len(words) == 30
    assert set(words) <= set(VOCABULARY)
    assert reply.usage_metadata == {"input_tokens": 7, "output_tokens": 30, "total_tokens": 37}
    assert reply.response_metadata["finish_reason"] == "stop"
    assert reply.response_metadata["model_name"] == "metered-fake"
    assert usage(MeteredFakeChatModel().invoke("x"))["output_tokens"] == 400


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_per_call_cap_in_every_spelling(spelling: str) -> None:
    model = MeteredFakeChatModel(response_tokens=20)
    caps: dict[str, Any] = {spelling: 5}
    reply = model.invoke("q", **caps)
    assert len(str(reply.content).split()) == 5
    assert usage(reply)["output_tokens"] == 5
    assert reply.response_metadata["finish_reason"] == "length"
    assert model.calls[-1].cap == 5
    assert model.calls[-1].cap_params == {spelling: 5}


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_field_cap_in_every_spelling(spelling: str) -> None:
    model = MeteredFakeChatModel(response_tokens=20, **{spelling: 6})
    reply = model.invoke("q")
    assert usage(reply)["output_tokens"] == 6
    assert reply.response_metadata["finish_reason"] == "length"
    assert model.calls[-1].cap == 6


def test_ollama_options_num_predict_per_call_and_as_field() -> None:
    model = MeteredFakeChatModel(response_tokens=20, options={"num_predict": 4, "temperature": 0})
    assert len(str(model.invoke("q").content).split()) == 4
    assert model.calls[-1].cap_params == {"options.num_predict": 4}
    assert len(str(model.invoke("q", options={"num_predict": 2}).content).split()) == 2
    # Ollama's -1 means "no limit"; per-call options replace the field's, as ChatOllama does
    assert len(str(model.invoke("q", options={"num_predict": -1}).content).split()) == 20
    assert model.calls[-1].cap is None


def test_effective_cap_is_the_smallest_and_per_call_replaces_the_same_spelling() -> None:
    model = MeteredFakeChatModel(response_tokens=20, max_tokens=10, num_predict=8)
    assert usage(model.invoke("q"))["output_tokens"] == 8
    assert usage(model.invoke("q", max_completion_tokens=3))["output_tokens"] == 3
    assert usage(model.invoke("q", num_predict=15))["output_tokens"] == 10
    assert usage(model.invoke("q", num_predict=None, max_tokens=None))["output_tokens"] == 20
    assert [c.cap for c in model.calls] == [8, 3, 10, None]


def test_cap_above_the_answer_finishes_with_stop() -> None:
    reply = MeteredFakeChatModel(response_tokens=4).invoke("q", max_tokens=10)
    assert usage(reply)["output_tokens"] == 4
    assert reply.response_metadata["finish_reason"] == "stop"


def test_cap_zero_gives_an_empty_answer() -> None:
    reply = MeteredFakeChatModel(response_tokens=4).invoke("q", max_tokens=0)
    assert reply.content == ""
    assert usage(reply)["output_tokens"] == 0
    assert reply.response_metadata["finish_reason"] == "length"


@pytest.mark.parametrize("bad", [-1, 2.5, True, "7"])
def test_malformed_caps_are_refused_naming_the_field(bad: Any) -> None:
    with pytest.raises(InvalidBudget, match="max_tokens"):
        MeteredFakeChatModel().invoke("q", max_tokens=bad)


def test_malformed_construction_is_refused() -> None:
    with pytest.raises(ValueError, match="max_completion_tokens"):
        MeteredFakeChatModel(max_completion_tokens=-3)
    with pytest.raises(ValueError, match="response_tokens"):
        MeteredFakeChatModel(response_tokens=-1)
    with pytest.raises(ValueError, match=r"response_tokens\[1\]"):
        MeteredFakeChatModel(response_tokens=[3, -1])
    with pytest.raises(InvalidInput, match="options"):
        MeteredFakeChatModel().invoke("q", options=5)


def test_bind_with_config_and_stream_of_a_binding_honour_the_cap() -> None:
    model = MeteredFakeChatModel(response_tokens=20)
    bound = model.bind(max_tokens=5).with_config(tags=["t"])
    assert usage(bound.invoke("q"))["output_tokens"] == 5
    chunks = list(bound.stream("q"))
    assert len(chunks) == 5
    assert usage(merge(chunks))["output_tokens"] == 5
    assert [(c.cap, c.streamed) for c in model.calls] == [(5, False), (5, True)]


def test_ls_max_tokens_reports_the_effective_cap() -> None:
    recorder = Recorder()
    model = MeteredFakeChatModel(response_tokens=3, max_tokens=50)
    model.invoke("q", config={"callbacks": [recorder]}, max_completion_tokens=7)
    model.invoke("q", config={"callbacks": [recorder]})
    MeteredFakeChatModel(response_tokens=3).invoke("q", config={"callbacks": [recorder]})
    assert [s.get("ls_max_tokens") for s in recorder.starts] == [7, 50, None]
    assert recorder.starts[0]["ls_model_name"] == "metered-fake"


def test_stream_yields_one_chunk_per_token_and_the_last_carries_usage() -> None:
    recorder = Recorder()
    model = MeteredFakeChatModel(response_tokens=6)
    chunks = list(model.stream("hello world", config={"callbacks": [recorder]}))
    assert [c.content for c in chunks] == ["alpha", " bravo", " charlie", " delta", " echo", " foxtrot"]
    assert all(c.usage_metadata is None for c in chunks[:-1])
    merged = merge(chunks)
    assert merged.content == "alpha bravo charlie delta echo foxtrot"
    assert merged.usage_metadata == {"input_tokens": 2, "output_tokens": 6, "total_tokens": 8}
    assert merged.response_metadata["finish_reason"] == "stop"
    assert merged.response_metadata["model_name"] == "metered-fake"
    assert recorder.tokens == [c.content for c in chunks]
    assert model.calls[-1].streamed


def test_usage_is_exact_on_invoke_batch_and_stream() -> None:
    model = MeteredFakeChatModel(response_tokens=9, max_tokens=7)
    with get_usage_metadata_callback() as cb:
        model.invoke("one two")
        model.batch(["one two", "one two three"], config={"max_concurrency": 2})
        list(model.stream("one"))
    assert cb.usage_metadata["metered-fake"] == {"input_tokens": 8, "output_tokens": 28, "total_tokens": 36}
    assert sum(c.total_tokens for c in model.calls) == 36


@pytest.mark.anyio
async def test_usage_is_exact_on_ainvoke_abatch_and_astream() -> None:
    model = MeteredFakeChatModel(response_tokens=9)
    reply = await model.ainvoke("one two", max_tokens=4)
    assert reply.usage_metadata == {"input_tokens": 2, "output_tokens": 4, "total_tokens": 6}
    replies = await model.abatch(["a", "b c"])
    assert [usage(r)["total_tokens"] for r in replies] == [10, 11]
    chunks = [chunk async for chunk in model.astream("a b c", max_new_tokens=5)]
    assert len(chunks) == 5
    merged = merge(chunks)
    assert merged.usage_metadata == {"input_tokens": 3, "output_tokens": 5, "total_tokens": 8}
    assert merged.response_metadata["finish_reason"] == "length"
    assert [c.streamed for c in model.calls] == [False, False, False, True]


def test_reasoning_tokens_count_as_output_and_come_before_the_answer() -> None:
    model = MeteredFakeChatModel(response_tokens=5, reasoning_tokens=3)
    reply = model.invoke("q")
    assert len(str(reply.content).split()) == 5
    assert reply.usage_metadata == {
        "input_tokens": 1,
        "output_tokens": 8,
        "total_tokens": 9,
        "output_token_details": {"reasoning": 3},
    }
    capped = model.invoke("q", max_tokens=5)
    assert len(str(capped.content).split()) == 2
    assert usage(capped)["output_token_details"] == {"reasoning": 3}
    starved = model.invoke("q", max_tokens=2)
    assert starved.content == ""
    assert usage(starved)["output_tokens"] == 2
    assert starved.response_metadata["finish_reason"] == "length"
    merged = merge(list(model.stream("q", max_tokens=6)))
    assert usage(merged)["output_token_details"] == {"reasoning": 3}
    assert merged.content == "alpha bravo charlie"
    assert [(c.reasoning_tokens, c.output_tokens, c.wanted_tokens) for c in model.calls][-1] == (3, 6, 8)


def test_answer_lengths_from_a_function_of_the_messages() -> None:
    def harder_needs_more(messages: list[BaseMessage]) -> int:
        return 50 if "hard" in str(messages[-1].content) else 5

    model = MeteredFakeChatModel(response_tokens=harder_needs_more, max_tokens=20)
    assert usage(model.invoke("easy one"))["output_tokens"] == 5
    hard = model.invoke("a hard one")
    assert usage(hard)["output_tokens"] == 20
    assert model.calls[-1].wanted_tokens == 50


def test_answer_lengths_from_a_list_are_consumed_in_order_then_raise() -> None:
    model = MeteredFakeChatModel(response_tokens=[3, 1, 4], reasoning_tokens=[0, 2, 0])
    outs = [usage(model.invoke("q"))["output_tokens"] for _ in range(3)]
    assert outs == [3, 3, 4]
    with pytest.raises(ScriptExhausted, match="call 4"):
        model.invoke("q")
    model.reset()
    assert model.calls == []
    assert usage(model.invoke("q"))["output_tokens"] == 3


def test_stop_sequences_end_the_answer() -> None:
    reply = MeteredFakeChatModel(response_tokens=10).invoke("q", stop=["charlie"])
    assert reply.content == "alpha bravo"
    assert reply.response_metadata["finish_reason"] == "stop"


def test_token_counting_helpers_match_reported_input_tokens() -> None:
    model = MeteredFakeChatModel(response_tokens=1)
    messages: list[BaseMessage] = [
        SystemMessage("you are terse"),
        HumanMessage(["two words", {"type": "text", "text": "x"}]),
    ]
    assert model.get_num_tokens("alpha bravo  unknownword") == 3
    assert model.get_token_ids("alpha bravo")[:2] == [0, 1]
    assert model.get_token_ids("zzz") == model.get_token_ids("zzz")
    assert model.get_num_tokens_from_messages(messages) == 6
    assert usage(model.invoke(messages))["input_tokens"] == 6


def test_calls_are_recorded_from_many_threads() -> None:
    model = MeteredFakeChatModel(response_tokens=3)
    model.batch([f"question {i}" for i in range(64)], config={"max_concurrency": 16}, max_tokens=2)
    calls = model.calls
    assert len(calls) == 64
    assert all(c.cap == 2 and c.output_tokens == 2 and c.prompt_tokens == 2 and not c.streamed for c in calls)


def test_an_abandoned_stream_records_the_tokens_it_emitted() -> None:
    model = MeteredFakeChatModel(response_tokens=10)
    stream = model.stream("q")
    assert isinstance(stream, GeneratorType)
    got = [next(stream) for _ in range(3)]
    stream.close()
    assert "".join(str(c.content) for c in got) == "alpha bravo charlie"
    assert model.calls[-1].output_tokens == 3
    assert model.calls[-1].finish_reason == "cancelled"


def test_sync_latency_is_waited() -> None:
    model = MeteredFakeChatModel(response_tokens=1, latency=0.02)
    started = time.monotonic()
    model.invoke("q")
    list(model.stream("q"))
    assert time.monotonic() - started >= 0.04


@pytest.mark.anyio
async def test_async_latency_yields_to_other_tasks() -> None:
    order: list[str] = []
    model = MeteredFakeChatModel(response_tokens=1, latency=0.05)

    async def call() -> None:
        await model.ainvoke("q")
        order.append("ainvoke")

    async def stream() -> None:
        async for _ in model.astream("q"):
            pass
        order.append("astream")

    async def ticker() -> None:
        await anyio.sleep(0.005)
        order.append("tick")

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        tg.start_soon(stream)
        tg.start_soon(ticker)
    assert order[0] == "tick"
    assert sorted(order[1:]) == ["ainvoke", "astream"]


def test_prompt_model_parser_chain() -> None:
    model = MeteredFakeChatModel(response_tokens=12, max_tokens=10)
    chain = ChatPromptTemplate.from_template("Answer briefly: {q}") | model | StrOutputParser()
    assert chain.invoke({"q": "why"}) == " ".join(VOCABULARY[:10])
    pieces = list(chain.stream({"q": "why"}))
    assert len(pieces) == 10
    assert [c.prompt_tokens for c in model.calls] == [3, 3]


def test_create_agent_runs_a_tool_call_then_a_final_answer() -> None:
    model = MeteredFakeChatModel(response_tokens=7, tool_calls=[[{"name": "add", "args": {"a": 2, "b": 3}}], []])
    agent = create_agent(model, tools=[add, multiply])
    with get_usage_metadata_callback() as cb:
        state = agent.invoke({"messages": [HumanMessage("what is 2 + 3?")]})
    kinds = [type(m).__name__ for m in state["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    assert state["messages"][1].tool_calls[0]["name"] == "add"
    assert state["messages"][2].content == "5"
    assert len(str(state["messages"][3].content).split()) == 7
    assert [c.finish_reason for c in model.calls] == ["tool_calls", "stop"]
    assert [c.tool_calls for c in model.calls] == [("add",), ()]
    assert cb.usage_metadata["metered-fake"]["total_tokens"] == sum(c.total_tokens for c in model.calls)


@pytest.mark.anyio
async def test_create_agent_streams_messages_asynchronously() -> None:
    script = [[{"name": "multiply", "args": {"a": 4, "b": 5}, "id": "m1"}, {"name": "add", "args": {"a": 1, "b": 1}}]]
    model = MeteredFakeChatModel(response_tokens=3, tool_calls=script)
    agent = create_agent(model, tools=[add, multiply])
    tokens: list[str] = []
    async for chunk, _meta in agent.astream({"messages": [HumanMessage("go")]}, stream_mode="messages"):
        if isinstance(chunk, AIMessageChunk) and chunk.content:
            tokens.append(str(chunk.content))
    assert [c.tool_calls for c in model.calls] == [("multiply", "add"), ()]
    assert all(c.streamed for c in model.calls)
    assert "".join(tokens) == "alpha bravo charlie"


def test_scripted_tool_must_be_bound() -> None:
    model = MeteredFakeChatModel(tool_calls=[[{"name": "divide", "args": {}}]])
    with pytest.raises(InvalidInput, match="divide"):
        model.bind_tools([add, multiply]).invoke("q")


def test_tool_calls_are_only_scripted_when_tools_are_bound_and_can_be_cut_by_a_cap() -> None:
    model = MeteredFakeChatModel(response_tokens=2, tool_calls=[[{"name": "add", "args": {"a": 1, "b": 2}}]])
    assert model.invoke("q").tool_calls == []  # no tools: text answer, script untouched
    cut = model.bind_tools([add]).invoke("q", max_tokens=2)
    assert cut.tool_calls == []
    assert cut.response_metadata["finish_reason"] == "length"
    assert usage(cut)["output_tokens"] == 2
    assert model.bind_tools([add]).invoke("q").content == "alpha bravo"  # script used up


def test_with_structured_output_uses_the_tool_call_script() -> None:
    class Answer(BaseModel):
        value: int

    model = MeteredFakeChatModel(tool_calls=[[{"name": "Answer", "args": {"value": 42}}]])
    assert model.with_structured_output(Answer).invoke("q") == Answer(value=42)


@pytest.mark.anyio
async def test_astream_events_see_one_stream_event_per_token() -> None:
    model = MeteredFakeChatModel(response_tokens=8)
    events = [event async for event in model.astream_events("q", version="v2", max_tokens=3)]
    streamed = [e for e in events if e["event"] == "on_chat_model_stream"]
    assert len(streamed) == 3
    end = next(e for e in events if e["event"] == "on_chat_model_end")
    assert usage(end["data"]["output"])["output_tokens"] == 3


def test_generate_combines_token_usage_over_prompts() -> None:
    model = MeteredFakeChatModel(response_tokens=4)
    result = model.generate([[HumanMessage("a b")], [HumanMessage("c")]])
    assert result.llm_output == {
        "token_usage": {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11},
        "model_name": "metered-fake",
    }
