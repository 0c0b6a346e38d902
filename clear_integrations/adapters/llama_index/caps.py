"""Putting a completion cap into a LlamaIndex LLM in its provider's own parameter.

A per-call ``max_tokens`` keyword does not work everywhere in LlamaIndex: ``OpenAI`` lets its instance
``max_tokens`` win over a per-call one, ``Ollama`` builds its ``options`` from instance fields only, ``LlamaCPP``
sends ``self.generate_kwargs`` and ignores per-call keywords, ``MockLLM`` reads only its field. So the cap is set on
a shallow copy of the LLM (``model_copy`` keeps the provider's private clients and, for ``LlamaCPP``, the loaded
model), in the field that provider reads:

=====================  ==========================================================================================
OpenAI (and Azure)     ``max_tokens`` (the instance field wins over per-call kwargs); cap keys the user put in
                       ``additional_kwargs`` (``max_tokens`` / ``max_completion_tokens``, which override the
                       field) are set to the cap too; a ``reasoning_effort`` above ``low`` drops to ``low`` under
                       ``LOW_EFFORT_BELOW`` tokens so that reasoning leaves room for the answer
Anthropic              ``max_tokens`` (and in ``additional_kwargs`` if the user set it there); an enabled
                       ``thinking_dict`` keeps ``budget_tokens`` below the cap, leaving a quarter of the cap (at
                       least 256 tokens) for the answer, and thinking is turned off when that leaves under 1024
                       (Anthropic's minimum)
Ollama                 ``additional_kwargs["num_predict"]``, the user's other options kept (they become the
                       request's ``options``)
LlamaCPP               ``generate_kwargs["max_tokens"]`` (what ``complete`` passes to llama.cpp; the constructor
                       copies ``max_new_tokens`` there) and ``max_new_tokens`` (reported in ``metadata``)
MockLLM, MeteredMock   ``max_tokens``
anything else          the first of ``max_tokens``, ``max_output_tokens``, ``max_completion_tokens``,
                       ``max_new_tokens``, ``num_output``, ``num_predict`` it has as a field; failing that the LLM
                       is called as it is with a per-call ``max_tokens`` keyword (:func:`cap_kwargs`) and a
                       :class:`~clear_integrations.errors.ClearWarning`
=====================  ==========================================================================================
"""

from __future__ import annotations

import warnings
from functools import cache
from typing import Any

from llama_index.core.llms.llm import LLM

from ...errors import ClearWarning
from ...validation import check_tokens

__all__ = [
    "CAP_FIELDS",
    "CAP_KWARGS",
    "LOW_EFFORT_BELOW",
    "cap_kwargs",
    "cap_llm",
    "capped",
    "current_cap",
    "user_set_cap",
]

CAP_FIELDS = ("max_tokens", "max_output_tokens", "max_completion_tokens", "max_new_tokens", "num_output", "num_predict")
#: per-call keywords read as the caller's requested cap (they are removed from the call: the cap travels in the field)
CAP_KWARGS = ("max_tokens", "max_output_tokens", "max_completion_tokens", "max_new_tokens", "num_predict")
LOW_EFFORT_BELOW = 2048
_OPENAI = ("OpenAI", "AzureOpenAI", "OpenAILike")
_THINKING_MIN = 1024
_ANSWER_ROOM = 256
_OPENAI_KWARG_CAPS = ("max_tokens", "max_completion_tokens")


def _kind(llm: LLM) -> str:
    """The provider family, from the class and its bases (so subclasses of a provider class are treated alike)."""
    return _family(type(llm))


@cache
def _family(cls: type) -> str:
    names = {base.__name__ for base in cls.__mro__}
    for kind in ("LlamaCPP", "Ollama", "Anthropic", *_OPENAI):
        if kind in names:
            return "OpenAI" if kind in _OPENAI else kind
    return cls.__name__


def _positive(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _field(llm: LLM) -> str | None:
    fields = type(llm).model_fields
    return next((name for name in CAP_FIELDS if name in fields), None)


def _kwargs(llm: LLM, name: str) -> dict[str, Any]:
    value = getattr(llm, name, None)
    return dict(value) if isinstance(value, dict) else {}


def current_cap(llm: LLM) -> int | None:
    """The completion cap ``llm`` is configured with, as its provider would send it (``None``: no cap)."""
    kind = _kind(llm)
    if kind == "LlamaCPP":
        return _positive(_kwargs(llm, "generate_kwargs").get("max_tokens"))
    if kind == "Ollama":
        return _positive(_kwargs(llm, "additional_kwargs").get("num_predict"))
    caps = [_positive(getattr(llm, name, None)) for name in ("max_tokens", "max_new_tokens") if name in CAP_FIELDS]
    if kind in ("OpenAI", "Anthropic"):
        extra = _kwargs(llm, "additional_kwargs")
        caps += [_positive(extra.get(name)) for name in _OPENAI_KWARG_CAPS]
    elif (name := _field(llm)) is not None and name not in ("max_tokens", "max_new_tokens"):
        caps.append(_positive(getattr(llm, name, None)))
    found = [cap for cap in caps if cap is not None]
    return min(found) if found else None


def user_set_cap(llm: LLM) -> bool:
    """Whether the cap :func:`current_cap` reads was set by the user (a request) rather than left at the provider
    class's default (a ceiling: the provider stops there anyway, but nobody asked for that many tokens)."""
    kind, given = _kind(llm), llm.model_fields_set
    if kind == "LlamaCPP":
        return "max_new_tokens" in given or "generate_kwargs" in given
    if kind == "Ollama" or any(name in _kwargs(llm, "additional_kwargs") for name in _OPENAI_KWARG_CAPS):
        return True
    name = _field(llm)
    return name is not None and name in given


def _openai(llm: LLM, cap: int) -> dict[str, Any]:
    update: dict[str, Any] = {"max_tokens": cap}
    extra = _kwargs(llm, "additional_kwargs")
    if any(name in extra for name in _OPENAI_KWARG_CAPS):
        update["additional_kwargs"] = {**extra, **{name: cap for name in _OPENAI_KWARG_CAPS if name in extra}}
    if cap < LOW_EFFORT_BELOW and getattr(llm, "reasoning_effort", None) in ("medium", "high", "xhigh"):
        update["reasoning_effort"] = "low"
    return update


def _anthropic(llm: LLM, cap: int) -> dict[str, Any]:
    update: dict[str, Any] = {"max_tokens": cap}
    extra = _kwargs(llm, "additional_kwargs")
    if "max_tokens" in extra:
        update["additional_kwargs"] = {**extra, "max_tokens": cap}
    thinking = getattr(llm, "thinking_dict", None)
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = min(int(thinking.get("budget_tokens", cap)), cap - max(_ANSWER_ROOM, cap // 4))
        update["thinking_dict"] = None if budget < _THINKING_MIN else {**thinking, "budget_tokens": budget}
    return update


def _update(llm: LLM, cap: int) -> dict[str, Any] | None:
    kind = _kind(llm)
    if kind == "LlamaCPP":
        return {"max_new_tokens": cap, "generate_kwargs": {**_kwargs(llm, "generate_kwargs"), "max_tokens": cap}}
    if kind == "Ollama":
        return {"additional_kwargs": {**_kwargs(llm, "additional_kwargs"), "num_predict": cap}}
    if kind == "OpenAI":
        return _openai(llm, cap)
    if kind == "Anthropic":
        return _anthropic(llm, cap)
    name = _field(llm)
    return None if name is None else {name: cap}


def cap_llm(llm: LLM, cap: int) -> LLM:
    """A shallow copy of ``llm`` that generates at most ``cap`` completion tokens (see the module docstring).

    The original is not modified. An LLM with no known cap field is returned as it is, with a
    :class:`~clear_integrations.errors.ClearWarning`: pass :func:`cap_kwargs` with each call instead.
    """
    cap = check_tokens("cap", cap, minimum=1)
    update = _update(llm, cap)
    if update is None:
        warnings.warn(
            f"{type(llm).__name__} exposes no known completion-cap field; passing max_tokens={cap} per call, "
            "which this LLM may ignore",
            ClearWarning,
            stacklevel=2,
        )
        return llm
    return llm.model_copy(update=update)


def cap_kwargs(llm: LLM, cap: int) -> dict[str, Any]:
    """Per-call keywords that carry ``cap`` to an LLM with no cap field (``{}`` when :func:`cap_llm` handles it)."""
    return {} if _update(llm, cap) is not None else {"max_tokens": cap}


def capped(llm: LLM, cap: int | None) -> tuple[LLM, dict[str, Any]]:
    """The LLM to call for a call capped at ``cap`` (``None``: as it is) and the per-call keywords it needs: a copy
    with the cap in its provider's field, or the LLM itself and a ``max_tokens`` keyword (:func:`cap_llm`'s
    warning) when it has no known field."""
    if cap is None:
        return llm, {}
    update = _update(llm, check_tokens("cap", cap, minimum=1))
    if update is None:
        return cap_llm(llm, cap), {"max_tokens": cap}
    return llm.model_copy(update=update), {}
