"""LangChain adapter (langchain-core 1.8): provider cap mapping so far; ``ClearBudget``, the callback handler and
the agent middleware build on it."""

from .caps import CAP_FIELDS, cap_model, current_cap

__all__ = ["CAP_FIELDS", "cap_model", "current_cap"]
