"""What an abandoned call gives back: one rule for every adapter (the adapters only wrap the text in their type).

``on_abandon`` is ``"message"`` (the default: :data:`DEFAULT_FALLBACK`, an answer the caller can tell from a real
one by its metadata), ``"raise"`` (:class:`~clear_integrations.errors.QueryAbandoned`, naming the account, what
remains and why), any other string (that answer), or a callable from the
:class:`~clear_integrations.budgeting.Decision` to the answer. Where a fallback text cannot stand in for an answer
(structured output, embeddings), the adapters raise whatever ``on_abandon`` says.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from ..errors import InvalidInput
from .decision import Decision

__all__ = ["DEFAULT_FALLBACK", "Abandon", "abandon_answer", "check_abandon"]

Abandon = Literal["message", "raise"] | str | Callable[[Decision], Any]
DEFAULT_FALLBACK = "I can't answer this within the token budget."


def check_abandon(value: Any) -> Abandon:
    """``value`` if it is a valid ``on_abandon``, else :class:`InvalidInput` naming the field."""
    if isinstance(value, str) or callable(value):
        return value  # type: ignore[no-any-return]
    raise InvalidInput("on_abandon", value, "must be 'message', 'raise', an answer string or a callable")


def abandon_answer(on_abandon: Abandon, decision: Decision) -> Any:
    """The answer of an abandoned call: text, or what the callable returned; raises for ``"raise"``."""
    if on_abandon == "raise":
        raise decision.error()
    if callable(on_abandon):
        return on_abandon(decision)
    return DEFAULT_FALLBACK if on_abandon == "message" else on_abandon
