"""LangChain adapter (langchain-core 1.8).

- :class:`ClearBudget` wraps any runnable: every chat model or LLM inside it is decided, capped in its provider's
  own parameter and accounted for on the ledger (see :mod:`.runnable` for how the cap reaches nested models).
- :class:`ClearBudgetMiddleware` caps each model step of a ``create_agent`` agent and ends the loop gracefully
  when the budget or the price says stop.
- :class:`ClearCallbackHandler` accounts for every model call of any chain or agent, from callbacks only.
- :func:`cap_model` puts a completion cap into one model (OpenAI, Anthropic, Ollama, llama.cpp, ...).
"""

from .callback import ClearCallbackHandler
from .caps import CAP_FIELDS, cap_model, current_cap
from .middleware import ClearBudgetMiddleware
from .proxy import BudgetedModel
from .runnable import ClearBudget, budget_models

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
