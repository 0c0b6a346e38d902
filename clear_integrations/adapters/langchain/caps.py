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
from collections.abc import Mapping
from typing import Any, TypeVar

from langchain_core.language_models import BaseLanguageModel
from langchain_core.runnables import Runnable

from ...errors import ClearWarning
from ...validation import check_tokens

__all__ = ["CAP_FIELDS", "LOW_EFFORT_BELOW", "cap_model", "capped", "current_cap", "split_cap"]

CAP_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens", "max_new_tokens", "num_predict")
LOW_EFFORT_BELOW = 2048
_THINKING_MIN = 1024
_ANSWER_ROOM = 256
M = TypeVar("M", bound=BaseLanguageModel[Any])


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


def _capped_copy(model: M, cap: int) -> M | None:
    """A copy of ``model`` with ``cap`` in its provider's field, or None when it has no known field."""
    name = _field(model)
    if name is None:
        return None
    update: dict[str, Any] = {name: cap}
    kind = type(model).__name__
    if kind in ("ChatOpenAI", "AzureChatOpenAI"):
        update |= _openai_effort(model, cap)
    elif kind == "ChatAnthropic":
        update |= _anthropic_thinking(model, cap)
    return model.model_copy(update=update)


def _no_field(model: BaseLanguageModel[Any], cap: int) -> None:
    warnings.warn(
        f"{type(model).__name__} exposes no known completion-cap field; passing max_tokens={cap} per call, "
        "which this model may ignore",
        ClearWarning,
        stacklevel=3,
    )


def cap_model(model: BaseLanguageModel[Any], cap: int) -> Runnable[Any, Any]:
    """A copy of ``model`` that generates at most ``cap`` completion tokens (see the module docstring)."""
    cap = check_tokens("cap", cap, minimum=1)
    copy = _capped_copy(model, cap)
    if copy is None:
        _no_field(model, cap)
        return model.bind(max_tokens=cap)
    return copy


def capped(model: M, cap: int | None) -> tuple[M, dict[str, Any]]:
    """The model to call for a call capped at ``cap`` (``None``: as it is) and the per-call keywords it needs: a copy
    with the cap in its provider's field, or, for a model with no known field, the model itself and
    ``max_tokens`` as a keyword (with a :class:`~clear_integrations.errors.ClearWarning`)."""
    if cap is None:
        return model, {}
    copy = _capped_copy(model, check_tokens("cap", cap, minimum=1))
    if copy is None:
        _no_field(model, cap)
        return model, {"max_tokens": cap}
    return copy, {}


def _positive(value: Any) -> int | None:
    return value if type(value) is int and value > 0 else None


def split_cap(
    model: BaseLanguageModel[Any], kwargs: Mapping[str, Any]
) -> tuple[int | None, int | None, dict[str, Any]]:
    """What a call asks for: ``(requested, ceiling, rest)``.

    ``requested`` is the smallest cap the caller set: a cap keyword of the call (any spelling, or ChatOllama's
    ``options["num_predict"]``) or the model's field when the user set it. ``ceiling`` is a cap the provider applies
    anyway but nobody asked for: a field's default value, or the model profile's ``max_output_tokens`` (ChatAnthropic
    fills ``max_tokens`` with it), so an uncapped call does not hold 64,000 tokens because its provider could
    write that many. ``rest`` is the other keywords: the cap travels in the provider's field instead.
    """
    caps = [_positive(value) for key, value in kwargs.items() if key in CAP_FIELDS]
    options = kwargs.get("options")
    if isinstance(options, Mapping):
        caps.append(_positive(options.get("num_predict")))
    own, ceiling = current_cap(model), None
    if own is not None:
        profile = getattr(model, "profile", None)
        most = profile.get("max_output_tokens") if isinstance(profile, Mapping) else None
        if _field(model) in model.model_fields_set and own != most:
            caps.append(own)  # the user's cap
        else:
            ceiling = own  # a default: the provider's limit, not a request
    found = [cap for cap in caps if cap is not None]
    rest = {key: value for key, value in kwargs.items() if key not in CAP_FIELDS}
    if isinstance(options, Mapping) and "num_predict" in options:
        rest["options"] = {key: value for key, value in options.items() if key != "num_predict"}
    return (min(found) if found else None), ceiling, rest
