"""Traffic streams for the online replay: which queries arrive, in what order, and when.

Each stream draws ``size`` queries from a pool (with replacement only if the pool is smaller) by their measured
difficulty (the accuracy the query reaches at its largest budget; the traffic generator may look at outcomes, the
estimator never does):

- ``uniform``: a plain random sample; - ``easy``: 70% from the easiest third, 20% middle, 10% hardest;
- ``hard``: the mirror image; - ``u-shaped``: 45% easy, 10% middle, 45% hard (few medium queries);
- ``bursty``: a uniform mix that arrives in bursts (clustered arrival times), for a pacer on a time target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..curves.curve import CurveBatch
from ..errors import InvalidInput

__all__ = ["STREAMS", "Stream", "make_stream"]

_MIX = {
    "uniform": None,
    "easy": (0.7, 0.2, 0.1),
    "hard": (0.1, 0.2, 0.7),
    "u-shaped": (0.45, 0.1, 0.45),
    "bursty": None,
}
STREAMS = tuple(_MIX)


@dataclass(frozen=True, slots=True)
class Stream:
    """Query indices in arrival order and, for timed streams, arrival times in seconds."""

    name: str
    indices: NDArray[np.int64]
    arrivals: NDArray[np.float64] | None = None


def _draw(pool: NDArray[np.int64], count: int, rng: np.random.Generator) -> NDArray[np.int64]:
    drawn: NDArray[np.int64] = rng.choice(pool, size=count, replace=count > pool.size)
    return drawn


def make_stream(name: str, curves: CurveBatch, size: int, *, seed: int = 0) -> Stream:
    """Draw the stream ``name`` of ``size`` queries from ``curves``."""
    if name not in _MIX:
        raise InvalidInput("stream", name, f"must be one of {', '.join(STREAMS)}")
    rng = np.random.default_rng(seed)
    size = min(size, len(curves)) if _MIX[name] is None else size
    mix: Any = _MIX[name]
    if mix is None:
        indices = rng.permutation(len(curves))[:size].astype(np.int64)
    else:
        order = np.argsort(-curves.matrix[:, -1], kind="stable")  # easiest first
        thirds = np.array_split(order, 3)
        counts = rng.multinomial(size, mix)
        indices = rng.permutation(np.concatenate([_draw(t, c, rng) for t, c in zip(thirds, counts, strict=True)]))
    arrivals = None
    if name == "bursty":  # bursts of ~50 queries within a few seconds, a minute apart
        burst = np.arange(size) // 50
        arrivals = np.sort(burst * 60.0 + rng.uniform(0, 3, size))
    return Stream(name, indices.astype(np.int64), arrivals)
