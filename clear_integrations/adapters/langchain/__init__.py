"""LangChain adapter (langchain-core 1.8).

- :class:`ClearBudget` wraps any runnable: every chat model or LLM inside it is decided, capped in its provider's
  own parameter and accounted for on the ledger (see :mod:`.runnable` for how the cap reaches nested models).
- :class:`ClearBudgetMiddleware` caps each model step of a ``create_agent`` agent and ends the loop gracefully
  when the budget or the price says stop.
- :class:`ClearCallbackHandler` accounts for every model call of any chain or agent, from callbacks only.
- :func:`cap_model` puts a completion cap into one model (OpenAI, Anthropic, Ollama, llama.cpp, ...).
"""

from typing import TYPE_CHECKING, Any

from .callback import ClearCallbackHandler
from .caps import CAP_FIELDS, cap_model, current_cap
from .proxy import BudgetedModel
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
    "CAP_FIELDS",
    "BudgetedModel",
    "ClearBudget",
    "ClearBudgetMiddleware",
    "ClearCallbackHandler",
    "budget_models",
    "cap_model",
    "current_cap",
]
