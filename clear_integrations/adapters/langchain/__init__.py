"""LangChain adapter (langchain-core 1.8, langchain 1.x, LangGraph).

- :func:`budgeted` puts one model under a ledger's budgets: the result is a real chat model / LLM / embeddings
  object (:class:`BudgetedChatModel`, :class:`BudgetedLLM`, :class:`BudgetedEmbeddings`) usable wherever the model
  went: LCEL, LangGraph nodes, ``create_agent``, ``create_react_agent``, tools, structured output.
- :class:`ClearBudget` wraps a chain or a compiled graph: it budgets every model it can reach, says which it cannot.
- :class:`ClearBudgetMiddleware` budgets each model step of a ``create_agent`` agent and ends the loop gracefully.
- :class:`ClearCallbackHandler` accounts for every model call of any chain or agent, from callbacks only.
- :func:`cap_model` puts a completion cap into one model (OpenAI, Anthropic, Ollama, llama.cpp, ...).
"""

from typing import TYPE_CHECKING, Any

from .budgeted import budgeted
from .callback import ClearCallbackHandler
from .caps import CAP_FIELDS, cap_model, current_cap
from .chat_model import BudgetedChatModel
from .embeddings import BudgetedEmbeddings
from .llm import BudgetedLLM
from .proxy import BUDGETED_TAG
from .runnable import ClearBudget, budget_models

if TYPE_CHECKING:
    from .middleware import ClearBudgetMiddleware


def __getattr__(name: str) -> Any:
    """``ClearBudgetMiddleware`` needs the ``langchain`` package (agents), not only langchain-core: load it on use."""
    if name == "ClearBudgetMiddleware":
        from .middleware import ClearBudgetMiddleware

        return ClearBudgetMiddleware
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BUDGETED_TAG",
    "CAP_FIELDS",
    "BudgetedChatModel",
    "BudgetedEmbeddings",
    "BudgetedLLM",
    "ClearBudget",
    "ClearBudgetMiddleware",
    "ClearCallbackHandler",
    "budget_models",
    "budgeted",
    "cap_model",
    "current_cap",
]
