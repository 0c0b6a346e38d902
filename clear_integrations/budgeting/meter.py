"""``StreamMeter``: what a stream has delivered, and the one rule that cuts it at its cap (both frameworks).

The rule: a chunk is delivered while the tokens before it are under the cap; after the cap, chunks that bring no
new tokens (a finish reason, the provider's usage report) still pass, so a provider that honours the cap ends its
stream normally and its own usage is read; the first chunk that brings tokens past a cap already reached is paid
for but not delivered, and the stream stops there (a model that ignored its cap stops costing).

Counting: each chunk's text is counted alone, a cheap upper bound (a token split across two chunks counts in
both); once that bound reaches the cap, the whole text is counted again, so the cut falls at the real cap, not at a
fraction of it. The usage committed is the provider's when a chunk reported it, else the whole text counted.
"""

from __future__ import annotations

from collections.abc import Callable

from ..ledger import Usage

__all__ = ["StreamMeter"]


class StreamMeter:
    """Meters one stream under ``cap`` completion tokens (``None``: no cap), counting with ``count``.

    ``exact`` says whether ``count`` is the model's own tokenizer (an estimate otherwise)."""

    def __init__(self, cap: int | None, count: Callable[[str], int], *, exact: bool = False) -> None:
        self.cap = cap
        self.count = count
        self.exact = exact
        self.tokens = 0  # an upper bound, exact once it has reached the cap
        self.delivered = 0  # chunks delivered
        self.reported: Usage | None = None
        self._parts: list[str] = []

    @property
    def reached(self) -> bool:
        """The cap is reached (even if the model ignored it): further tokens are not paid for."""
        return self.cap is not None and self.tokens >= self.cap

    @property
    def text(self) -> str:
        """Everything streamed so far."""
        return "".join(self._parts)

    def admit(self, text: str, usage: Usage | None = None) -> bool:
        """Count a chunk in (its new ``text``, and the ``usage`` it reports, if any); False when it brings tokens
        past a cap already reached: it is not delivered, and the stream stops."""
        if usage is not None:
            self.reported = usage
        if text:
            reached = self.reached
            self._parts.append(text)
            self.tokens += self.count(text)
            if self.cap is not None and self.tokens >= self.cap:
                self.tokens = self.count(self.text)
            if reached:
                return False
        self.delivered += 1
        return True

    def usage(self, prompt_tokens: int, prompt_estimated: bool) -> Usage:
        """The usage to commit: the provider's report, else the prompt as counted and the streamed text counted."""
        if self.reported is not None:
            return self.reported
        completion = self.count(self.text) if self._parts else 0
        return Usage(prompt_tokens, completion, estimated=prompt_estimated or not self.exact)
