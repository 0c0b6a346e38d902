"""Putting a completion cap into a LangChain model in its provider's own parameter.

A per-call ``max_tokens`` keyword does not work everywhere: ChatOllama reads only ``num_predict`` from its options,
ChatOpenAI's Responses API lets a model-level ``max_tokens`` win over a per-call one. So the cap is set on a
shallow copy of the model (``model_copy`` keeps the provider's client), in the field that provider reads:

=========================  =====================================================================================
ChatOpenAI                 ``max_tokens`` (sent as ``max_completion_tokens``, or ``max_output_tokens`` on the
                           Responses API); a set ``reasoning_effort`` / ``reasoning.effort`` above ``low`` drops to
                           ``low`` under ``LOW_EFFORT_BELOW`` tokens, so reasoning leaves room for an answer
ChatAnthropic              ``max_tokens``; an enabled ``thinking.budget_tokens`` is kept below the cap (Anthropic
                           requires 1024 <= budget < max_tokens), leaving a quarter of the cap (at least 256
                           tokens) for the answer, and thinking is disabled when that leaves under 1024
ChatOllama                 ``num_predict`` (a field, so the user's other options stay)
ChatLlamaCpp, LlamaCpp     ``max_tokens``
anything else              the first of ``max_tokens``, ``max_completion_tokens``, ``max_output_tokens``,
                           ``max_new_tokens``, ``num_predict`` it has; failing that ``.bind(max_tokens=...)``
                           with a :class:`~clear_integrations.errors.ClearWarning`
=========================  =====================================================================================
"""

from __future__ import annotations

import warnings
from typing import Any

from langchain_core.language_models import BaseLanguageModel
from langchain_core.runnables import Runnable

from ...errors import ClearWarning
from ...validation import check_tokens

__all__ = ["CAP_FIELDS", "LOW_EFFORT_BELOW", "cap_model", "current_cap"]

CAP_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens", "max_new_tokens", "num_predict")
LOW_EFFORT_BELOW = 2048
_THINKING_MIN = 1024
_ANSWER_ROOM = 256


def _field(model: BaseLanguageModel[Any]) -> str | None:
    fields = type(model).model_fields
    return next((name for name in CAP_FIELDS if name in fields), None)


def current_cap(model: BaseLanguageModel[Any]) -> int | None:
    """The completion cap the model is configured with (``None`` or a negative Ollama value: none)."""
    name = _field(model)
    value = getattr(model, name, None) if name else None
    return value if isinstance(value, int) and value > 0 else None


def _openai_effort(model: BaseLanguageModel[Any], cap: int) -> dict[str, Any]:
    if cap >= LOW_EFFORT_BELOW:
        return {}
    update: dict[str, Any] = {}
    if getattr(model, "reasoning_effort", None) in ("medium", "high", "xhigh"):
        update["reasoning_effort"] = "low"
    reasoning = getattr(model, "reasoning", None)
    if isinstance(reasoning, dict) and reasoning.get("effort") in ("medium", "high", "xhigh"):
        update["reasoning"] = {**reasoning, "effort": "low"}
    return update


def _anthropic_thinking(model: BaseLanguageModel[Any], cap: int) -> dict[str, Any]:
    thinking = getattr(model, "thinking", None)
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        return {}
    budget = min(int(thinking.get("budget_tokens", cap)), cap - max(_ANSWER_ROOM, cap // 4))
    if budget < _THINKING_MIN:
        return {"thinking": {"type": "disabled"}}
    return {"thinking": {**thinking, "budget_tokens": budget}}


def cap_model(model: BaseLanguageModel[Any], cap: int) -> Runnable[Any, Any]:
    """A copy of ``model`` that generates at most ``cap`` completion tokens (see the module docstring)."""
    cap = check_tokens("cap", cap, minimum=1)
    name = _field(model)
    if name is None:
        warnings.warn(
            f"{type(model).__name__} exposes no known completion-cap field; binding max_tokens={cap} per call, "
            "which this model may ignore",
            ClearWarning,
            stacklevel=2,
        )
        return model.bind(max_tokens=cap)
    update: dict[str, Any] = {name: cap}
    kind = type(model).__name__
    if kind in ("ChatOpenAI", "AzureChatOpenAI"):
        update |= _openai_effort(model, cap)
    elif kind == "ChatAnthropic":
        update |= _anthropic_thinking(model, cap)
    return model.model_copy(update=update)
