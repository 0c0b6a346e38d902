"""LlamaIndex adapter (llama-index-core 0.14).

- :class:`ClearBudgetLLM` wraps any LlamaIndex LLM: every call is decided, capped in its provider's own parameter,
  committed on the ledger, cut at the cap when streamed, and answered with a fallback (or
  :class:`~clear_integrations.errors.QueryAbandoned`) when abandoned. It is a ``FunctionCallingLLM``, so it runs
  under ``FunctionAgent``, ``ReActAgent`` and ``AgentWorkflow`` (enforcement).
- :class:`ClearBudgetEmbedding` wraps an embedding model: its input tokens are charged, and refused past a hard
  budget.
- :class:`ClearEventHandler` accounts for the LLM and embedding calls of any LlamaIndex app from the instrumentation
  events (observation only: instrumentation handlers cannot stop a call).
- :func:`cap_llm` puts a completion cap into one LLM (OpenAI, Anthropic, Ollama, LlamaCPP, MockLLM, ...);
  :func:`clear_scope` names the payer of the calls made in a task.

``ClearEventHandler`` is imported on first use, so the rest of the adapter works without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...budgeting import DEFAULT_FALLBACK, Abandon, Payer, clear_scope
from .caps import CAP_FIELDS, cap_kwargs, cap_llm, current_cap
from .embedding import ClearBudgetEmbedding
from .llm import ClearBudgetLLM
from .scope import BUDGETED_TAG, current_payer

if TYPE_CHECKING:
    from .events import ClearEventHandler

__all__ = [
    "BUDGETED_TAG",
    "CAP_FIELDS",
    "DEFAULT_FALLBACK",
    "Abandon",
    "ClearBudgetEmbedding",
    "ClearBudgetLLM",
    "ClearEventHandler",
    "Payer",
    "cap_kwargs",
    "cap_llm",
    "clear_scope",
    "current_cap",
    "current_payer",
]


def __getattr__(name: str) -> Any:
    if name == "ClearEventHandler":
        from .events import ClearEventHandler

        globals()[name] = ClearEventHandler
        return ClearEventHandler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
