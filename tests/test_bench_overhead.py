from __future__ import annotations

from clear_integrations.bench.overhead import format_overhead, langchain_overhead, llama_index_overhead


def test_overhead_benchmark_runs_both_chains_and_reports_the_difference() -> None:
    row = langchain_overhead(40, latency=0.0, rounds=4)
    assert row.calls == 40 and row.bare_us > 0 and row.wrapped_us > 0
    assert row.added_us == row.wrapped_us - row.bare_us
    assert "langchain" in format_overhead([row])


def test_llama_index_overhead_runs_both_llms() -> None:
    row = llama_index_overhead(40, latency=0.0, rounds=4)
    assert row.framework == "llama_index" and row.bare_us > 0 and row.wrapped_us > 0
