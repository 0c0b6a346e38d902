"""The one cut rule for streams (budgeting.meter.StreamMeter), for both frameworks."""

from __future__ import annotations

from clear_integrations import Usage
from clear_integrations.budgeting import StreamMeter
from clear_integrations.testing import count_words


def _meter(cap: int | None) -> StreamMeter:
    return StreamMeter(cap, count_words, exact=True)


def test_chunks_pass_until_the_cap_then_the_first_token_past_it_stops_the_stream() -> None:
    meter = _meter(3)
    assert [meter.admit(text) for text in ("one ", "two ", "three")] == [True, True, True]
    assert meter.reached and not meter.admit(" four")  # paid for, not delivered
    assert meter.usage(5, False) == Usage(5, 4)  # the provider generated it: it is charged


def test_chunks_without_tokens_still_pass_after_the_cap_so_the_providers_usage_is_read() -> None:
    meter = _meter(2)
    assert meter.admit("one ") and meter.admit("two")
    assert meter.admit("", usage=Usage(7, 2)) and meter.admit("")  # a finish reason, a usage report
    assert meter.usage(5, True) == Usage(7, 2)  # the provider's own count wins over the estimate


def test_a_token_split_across_chunks_is_counted_once_at_the_cap() -> None:
    counted = StreamMeter(4, count_words, exact=False)
    pieces = ["alpha be", "ta gam", "ma delta ", "epsilon"]  # alone, each piece counts the word it splits
    delivered = [piece for piece in pieces if counted.admit(piece)]
    # the pieces add up to 4 after two chunks, but the whole text has 3 words: recounted, the cut falls at 4
    assert delivered == pieces[:3]
    assert counted.usage(1, False) == Usage(1, 5, estimated=True)  # the refused word was generated: it is paid


def test_no_cap_never_cuts() -> None:
    meter = _meter(None)
    assert all(meter.admit(f"w{i} ") for i in range(1_000)) and not meter.reached
    assert meter.delivered == 1_000 and meter.usage(0, False).completion == 1_000
