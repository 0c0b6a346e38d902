from __future__ import annotations

import numpy as np
import pytest

from clear_integrations import CurveBatch, InvalidInput
from clear_integrations.bench.streams import STREAMS, make_stream


@pytest.fixture
def pool() -> CurveBatch:
    """300 curves whose final accuracy encodes their difficulty: row i ends at i / 299."""
    ends = np.linspace(0, 1, 300)
    return CurveBatch([16, 32], np.column_stack([ends / 2, ends]))


def _ease(pool: CurveBatch, indices: np.ndarray) -> np.ndarray:
    return pool.matrix[indices, -1]


def test_mixes_lean_the_way_their_names_say(pool: CurveBatch) -> None:
    easy, hard, u = (make_stream(name, pool, 500, seed=0) for name in ("easy", "hard", "u-shaped"))
    assert _ease(pool, easy.indices).mean() > 0.6 > 0.4 > _ease(pool, hard.indices).mean()
    middle = (_ease(pool, u.indices) > 1 / 3) & (_ease(pool, u.indices) < 2 / 3)
    assert middle.mean() < 0.2
    assert all(len(s.indices) == 500 and s.arrivals is None for s in (easy, hard, u))


def test_uniform_is_a_sample_without_replacement(pool: CurveBatch) -> None:
    stream = make_stream("uniform", pool, 500, seed=3)
    assert len(stream.indices) == 300 and len(set(stream.indices.tolist())) == 300


def test_bursty_arrivals_come_in_clusters(pool: CurveBatch) -> None:
    stream = make_stream("bursty", pool, 200, seed=1)
    assert stream.arrivals is not None
    gaps = np.diff(stream.arrivals)
    assert np.all(gaps >= 0)
    assert (gaps > 30).sum() == 3  # four bursts of 50, a minute apart
    assert set(STREAMS) == {"uniform", "easy", "hard", "u-shaped", "bursty"}


def test_unknown_stream_is_refused(pool: CurveBatch) -> None:
    with pytest.raises(InvalidInput, match="stream"):
        make_stream("weekend", pool, 10)
