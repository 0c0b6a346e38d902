"""How a cut answer is continued, the same way in both frameworks: the answer so far goes back to the model with
the :data:`CONTINUE` turn (chat) or appended to the prompt (completion), and the pieces are joined as one text."""

from __future__ import annotations

__all__ = ["CONTINUE", "joined_text"]

CONTINUE = "Continue exactly where you stopped."


def joined_text(first: str, second: str) -> str:
    """A cut answer and its continuation as one text (a space between them unless one side has it)."""
    if not first or not second or first[-1].isspace() or second[0].isspace():
        return first + second
    return f"{first} {second}"
