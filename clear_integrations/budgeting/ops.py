"""The operations a budgeting flow asks its driver to perform, and the model call's request and reply.

A flow (:mod:`.flows`) is a generator: it yields one of these and receives the answer (or has the error thrown
in), so the decisions are written once and the I/O is left to a sync, async or thread-offloaded driver
(:mod:`.drivers`), as httpx's ``auth_flow`` leaves sending to its client.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from ..ledger import Reservation, Usage
from .decision import Decision

__all__ = [
    "Commit",
    "Flow",
    "Generate",
    "Generated",
    "LedgerOp",
    "Op",
    "ReadBalance",
    "ReadState",
    "Release",
    "Reserve",
    "Sleep",
    "WriteState",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Reserve:
    """Hold ``tokens`` on ``scope``; with ``minimum``, up to ``tokens`` but at least ``minimum``."""

    scope: str
    tokens: int
    minimum: int | None
    lease: float


@dataclass(frozen=True, slots=True)
class Commit:
    """Charge ``usage`` to ``reservation``; the reply is the tokens given back."""

    reservation: Reservation
    usage: Usage


@dataclass(frozen=True, slots=True)
class Release:
    """Give back the whole ``reservation``; the reply is the tokens given back."""

    reservation: Reservation


@dataclass(frozen=True, slots=True)
class ReadBalance:
    """The :class:`~clear_integrations.ledger.Balance` of ``account``."""

    account: str


@dataclass(frozen=True, slots=True)
class ReadState:
    """The pool's price state: ``(value, version)``."""

    pool: str


@dataclass(frozen=True, slots=True)
class WriteState:
    """Compare-and-set the pool's price state; the reply is True when ``version`` still matched."""

    pool: str
    value: dict[str, Any]
    version: int


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait ``seconds`` (for tokens held by calls in flight to come back)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Generate:
    """Call the model with ``decision.max_tokens`` as its cap: the caller's prompt when ``outputs`` is empty, else a
    continuation of the answer so far (``outputs``, in order). The reply is a :class:`Generated`."""

    decision: Decision
    outputs: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Generated:
    """What one model call gave: its ``output`` (the framework's own object), its ``usage``; ``cut`` when it stopped
    at its cap and may be continued, then ``again_tokens``: the prompt tokens a continuation would send."""

    output: Any
    usage: Usage
    cut: bool = False
    again_tokens: int = 0


LedgerOp = Reserve | Commit | Release | ReadBalance | ReadState | WriteState
Op = LedgerOp | Sleep | Generate
Flow = Generator[Op, Any, T]
