"""A LlamaIndex query engine over a few in-memory documents, its LLM under a per-tenant token budget.

Runs offline in a second: embeddings come from `MockEmbedding`, answers from the shipped `MeteredMockLLM` (its
answer length grows with the prompt, like a model that explains what it retrieved). `ClearBudgetLLM` caps each
synthesis call to what the tenant's budget has left, commits the real usage, and answers with a fallback once the
budget is spent.

    python examples/llama_index_query.py
"""

from __future__ import annotations

from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding

from clear_integrations import Budget, BudgetPolicy, open_ledger
from clear_integrations.adapters.llama_index import ClearBudgetLLM
from clear_integrations.testing import MeteredMockLLM

DOCUMENTS = [
    "CLEAR prices reasoning tokens with a shadow price: the marginal accuracy one more token buys at the optimum.",
    "Queries whose accuracy curve can never pay for its tokens are abandoned, and their tokens go to others.",
    "Budgets are kept per tenant and per session in a ledger on memory, SQLite or Redis.",
    "A capped call gets its limit in the provider's own parameter, such as max_tokens or num_predict.",
]
QUESTIONS = [
    "What is the shadow price?",
    "Where are budgets kept?",
    "What happens to hopeless queries?",
    "How is a call capped?",
]


def main() -> None:
    Settings.embed_model = MockEmbedding(embed_dim=16)  # no network, no model download
    index = VectorStoreIndex.from_documents([Document(text=text) for text in DOCUMENTS])

    ledger = open_ledger("memory://")  # or sqlite:///budgets.db, redis://localhost:6379/0
    ledger.set_budget("acme", Budget(tokens=600, window="1d"))
    model = MeteredMockLLM(response_tokens=lambda messages: sum(len(str(m.content).split()) for m in messages))
    llm = ClearBudgetLLM(model, ledger=ledger, tenant="acme", policy=BudgetPolicy(max_tokens=120))

    engine = index.as_query_engine(llm=llm, similarity_top_k=2)
    for question in QUESTIONS:
        answer = engine.query(question)
        print(f"Q: {question}\nA: {str(answer)[:90]}...  ({len(str(answer).split())} words)")
    balance, usage = ledger.balance("acme"), ledger.usage("acme")
    print(f"acme spent {balance.spent} of {balance.limit} tokens today in {usage.calls} LLM calls "
          f"({usage.prompt} prompt + {usage.completion} completion; {balance.remaining} left)")
    assert balance.spent <= 600
    assert balance.held == 0


if __name__ == "__main__":
    main()
