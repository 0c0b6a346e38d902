"""What budgeting adds to a call: the wrapped chain against the bare one, interleaved in one run.

The model is :class:`~clear_integrations.testing.MeteredFakeChatModel` with a fixed latency (1 ms by default) and
the ledger is ``memory://``, so the difference is the library's own work (decide, reserve, cap, commit). Rounds
alternate bare and wrapped so that a noisy neighbour slows both alike; the report takes the median round.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["OverheadRow", "format_overhead", "langchain_overhead", "llama_index_overhead"]


@dataclass(frozen=True, slots=True)
class OverheadRow:
    framework: str
    calls: int
    bare_us: float
    wrapped_us: float

    @property
    def added_us(self) -> float:
        return self.wrapped_us - self.bare_us

    @property
    def ratio(self) -> float:
        return self.wrapped_us / self.bare_us


def _interleaved(
    bare: Callable[[int], Any], wrapped: Callable[[int], Any], calls: int, rounds: int
) -> tuple[float, float]:
    per_round = max(1, calls // rounds)
    bare_times: list[float] = []
    wrapped_times: list[float] = []
    for _ in range(rounds):
        for run, times in ((bare, bare_times), (wrapped, wrapped_times)):
            started = time.perf_counter()
            for i in range(per_round):
                run(i)
            times.append((time.perf_counter() - started) / per_round * 1e6)
    return statistics.median(bare_times), statistics.median(wrapped_times)


def langchain_overhead(calls: int = 1000, *, latency: float = 0.001, rounds: int = 10) -> OverheadRow:
    """``prompt | model | parser`` bare and inside ``ClearBudget``, ``calls`` invokes each."""
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate

    from ..adapters.langchain import ClearBudget
    from ..ledger import Budget, open_ledger
    from ..testing import MeteredFakeChatModel

    model = MeteredFakeChatModel(response_tokens=20, latency=latency)
    bare = ChatPromptTemplate.from_template("{q}") | model | StrOutputParser()
    ledger = open_ledger("memory://")
    ledger.set_budget("bench", Budget(tokens=10**12))
    wrapped = ClearBudget(bare, ledger=ledger, tenant="bench")
    bare.invoke({"q": "warm up"})
    wrapped.invoke({"q": "warm up"})
    bare_us, wrapped_us = _interleaved(
        lambda i: bare.invoke({"q": f"question {i}"}), lambda i: wrapped.invoke({"q": f"question {i}"}), calls, rounds
    )
    return OverheadRow("langchain", calls, bare_us, wrapped_us)


def llama_index_overhead(calls: int = 1000, *, latency: float = 0.001, rounds: int = 10) -> OverheadRow:
    """``llm.complete(...)`` bare and through ``ClearBudgetLLM``, ``calls`` calls each."""
    from ..adapters.llama_index import ClearBudgetLLM
    from ..ledger import Budget, open_ledger
    from ..testing import MeteredMockLLM

    inner = MeteredMockLLM(response_tokens=20, latency=latency)
    ledger = open_ledger("memory://")
    ledger.set_budget("bench", Budget(tokens=10**12))
    wrapped = ClearBudgetLLM(inner, ledger=ledger, tenant="bench")
    inner.complete("warm up")
    wrapped.complete("warm up")
    bare_us, wrapped_us = _interleaved(
        lambda i: inner.complete(f"question {i}"), lambda i: wrapped.complete(f"question {i}"), calls, rounds
    )
    return OverheadRow("llama_index", calls, bare_us, wrapped_us)


def format_overhead(rows: list[OverheadRow]) -> str:
    lines = [f"{'framework':<12} {'calls':>6} {'bare us':>9} {'wrapped us':>11} {'added us':>9} {'ratio':>7}"]
    lines += [
        f"{r.framework:<12} {r.calls:>6} {r.bare_us:>9.0f} {r.wrapped_us:>11.0f} {r.added_us:>9.0f} {r.ratio:>7.3f}"
        for r in rows
    ]
    return "\n".join(lines)
