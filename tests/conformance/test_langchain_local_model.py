"""A real local model: ``ChatLlamaCpp`` (langchain-community) on SmolLM2-135M-Instruct, in a small LangGraph
``StateGraph`` (answer, then re-check once through a conditional edge), on a hard budget that runs out.

What llama.cpp itself reports (``create_chat_completion``'s ``usage``) is the truth: the ledger must equal it, the cap
must be the ``max_tokens`` llama.cpp received, and each reservation's prompt, counted through the GGUF's own chat
template, must be exactly the prompt llama.cpp evaluated.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langgraph.graph import END, START, MessagesState, StateGraph

from clear_integrations import BudgetPolicy
from clear_integrations.adapters.langchain import budgeted
from clear_integrations.budgeting import current_decision
from clear_integrations.calibration.problems import gsm8k_sample

from .conftest import Book

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]

SYSTEM = "You are a careful math tutor. Answer briefly."
CAP = 24


@dataclass(frozen=True)
class Seen:
    """One llama.cpp call: what it was asked (``max_tokens``), what it reported, and the decision that paid for it."""

    max_tokens: int
    prompt_tokens: int
    completion_tokens: int
    reserved_prompt: int
    prompt_estimated: bool
    decided_cap: int | None


@pytest.fixture(scope="module")
def chat_llama() -> Any:
    pytest.importorskip("llama_cpp")
    from clear_integrations.calibration.local_model import LocalModelUnavailable, smollm2_path

    try:
        path = smollm2_path()
    except LocalModelUnavailable as missing:
        pytest.skip(str(missing))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from langchain_community.chat_models import ChatLlamaCpp

    model = ChatLlamaCpp(
        model_path=str(path),
        n_threads=1,
        n_ctx=1024,
        temperature=0.0,
        max_tokens=256,
        verbose=False,
        seed=0,
        streaming=False,
    )
    model.invoke("Hi", max_tokens=1)  # warm up once for the module
    return model


@pytest.fixture
def seen(chat_llama: Any, monkeypatch: pytest.MonkeyPatch) -> list[Seen]:
    """Every ``create_chat_completion`` call, with llama.cpp's own usage and the decision in force."""
    records: list[Seen] = []
    original = chat_llama.client.create_chat_completion

    def recording(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        decision = current_decision()
        assert decision is not None, "llama.cpp was called outside a budgeted call"
        if kwargs.get("stream"):
            return _streamed(out, kwargs, decision, records)
        records.append(
            Seen(
                kwargs["max_tokens"],
                out["usage"]["prompt_tokens"],
                out["usage"]["completion_tokens"],
                decision.prompt_tokens,
                decision.prompt_estimated,
                decision.max_tokens,
            )
        )
        return out

    monkeypatch.setattr(chat_llama.client, "create_chat_completion", recording)
    return records


def _streamed(chunks: Iterator[Any], kwargs: Any, decision: Any, records: list[Seen]) -> Iterator[Any]:
    """llama.cpp streams one token per chunk and reports no usage in a stream: count the chunks that bring text."""
    generated = 0
    for chunk in chunks:
        generated += bool(chunk["choices"][0]["delta"].get("content"))
        yield chunk
    records.append(
        Seen(
            kwargs["max_tokens"], -1, generated, decision.prompt_tokens, decision.prompt_estimated, decision.max_tokens
        )
    )


def _graph(llm: Any, mode: str) -> Any:
    def answer(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [llm.invoke([SystemMessage(SYSTEM), *state["messages"]])]}

    async def aanswer(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [await llm.ainvoke([SystemMessage(SYSTEM), *state["messages"]])]}

    def recheck(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [HumanMessage("Check that answer in one line.")]}

    def route(state: MessagesState) -> str:
        answers = [m for m in state["messages"] if isinstance(m, AIMessage)]
        done = len(answers) >= 2 or answers[-1].response_metadata.get("clear_action") == "abandon"
        return END if done else "recheck"

    builder = StateGraph(MessagesState)
    builder.add_node("answer", answer if mode == "sync" else aanswer)
    builder.add_node("recheck", recheck)
    builder.add_edge(START, "answer")
    builder.add_conditional_edges("answer", route, ["recheck", END])
    builder.add_edge("recheck", "answer")
    return builder.compile()


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.anyio
async def test_a_state_graph_on_smollm2_under_a_hard_budget(
    book: Book, mode: str, chat_llama: Any, seen: list[Seen]
) -> None:
    book.budget("acme", 1_000)
    llm = budgeted(chat_llama, ledger=book.ledger, tenant="acme", policy=BudgetPolicy(max_tokens=CAP, wait=0.0))
    graph = _graph(llm, mode)
    questions = [problem.question for problem in gsm8k_sample(3)]
    finals: list[AIMessage] = []

    async def ask(question: str) -> None:
        state = {"messages": [HumanMessage(question)]}
        result = graph.invoke(state) if mode == "sync" else await graph.ainvoke(state)
        finals.append(result["messages"][-1])

    await ask(questions[0])
    assert len(seen) == 2 and finals[0].response_metadata["clear_action"] != "abandon"
    # the next question's first call finds its prompt and 18 tokens left: it is capped at 18, then the budget is spent
    next_prompt, exact = llm._wired.prompt([SystemMessage(SYSTEM), HumanMessage(questions[1])], None)
    assert exact
    limit = book.ledger.usage("acme").total + next_prompt + 18
    book.budget("acme", limit)
    await ask(questions[1])
    await ask(questions[2])
    assert len(seen) == 3 and seen[2].max_tokens == 18  # capped to what the budget had left, in llama.cpp's field
    assert [f.response_metadata["clear_action"] for f in finals[1:]] == ["abandon", "abandon"]
    assert finals[2].response_metadata["clear_account"] == "acme"
    for call in seen:
        assert call.max_tokens == call.decided_cap and 0 < call.max_tokens <= CAP  # the cap reached llama.cpp
        assert call.completion_tokens <= call.max_tokens
        assert not call.prompt_estimated and call.reserved_prompt == call.prompt_tokens  # exact, chat template
    usage = book.ledger.usage("acme")
    assert usage.prompt == sum(call.prompt_tokens for call in seen)
    assert usage.completion == sum(call.completion_tokens for call in seen)
    assert usage.calls == len(seen) and usage.estimated_calls == 0
    balance = book.ledger.balance("acme")
    assert balance.spent <= limit and balance.over == 0 and balance.held == 0


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.anyio
async def test_the_graph_streamed_token_by_token_on_smollm2(
    book: Book, mode: str, chat_llama: Any, seen: list[Seen]
) -> None:
    """ChatLlamaCpp's default, ``streaming=True``, under ``stream_mode="messages"``: llama.cpp reports no usage in a
    stream, so the ledger counts the streamed text with the GGUF's own tokenizer: it must still equal what was
    generated, and not be marked estimated."""
    book.budget("acme", 1_000)
    streaming = chat_llama.model_copy(update={"streaming": True})  # the same loaded model
    llm = budgeted(streaming, ledger=book.ledger, tenant="acme", policy=BudgetPolicy(max_tokens=CAP, wait=0.0))
    graph = _graph(llm, mode)
    state = {"messages": [HumanMessage(gsm8k_sample(1)[0].question)]}
    if mode == "sync":
        pieces = [
            chunk for chunk, meta in graph.stream(state, stream_mode="messages") if meta["langgraph_node"] == "answer"
        ]
    else:
        pieces = [
            chunk
            async for chunk, meta in graph.astream(state, stream_mode="messages")
            if meta["langgraph_node"] == "answer"
        ]
    assert len(seen) == 2 and sum(1 for piece in pieces if piece.content) == sum(c.completion_tokens for c in seen)
    for call in seen:
        assert call.max_tokens == call.decided_cap == CAP and call.completion_tokens <= CAP
        assert not call.prompt_estimated
    usage = book.ledger.usage("acme")
    assert usage.prompt == sum(call.reserved_prompt for call in seen)  # exact, through the chat template
    assert usage.completion == sum(call.completion_tokens for call in seen)
    assert usage.calls == 2 and usage.estimated_calls == 0
    assert book.ledger.balance("acme").held == 0
