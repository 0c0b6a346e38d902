"""cap_llm against the real LlamaIndex provider classes: the cap is in what each would send (no network, dummy keys)."""

from __future__ import annotations

from typing import Any

import pytest
from llama_index.core.llms import MockLLM

from clear_integrations import ClearWarning, InvalidBudget
from clear_integrations.adapters.llama_index import cap_kwargs, cap_llm, current_cap
from clear_integrations.testing import MeteredMockLLM


def test_openai_instance_field_wins_over_the_per_call_kwarg() -> None:
    from llama_index.llms.openai import OpenAI

    llm = OpenAI(model="gpt-4o-mini", api_key="sk-dummy", max_tokens=1000)
    assert llm._get_model_kwargs(max_tokens=50)["max_tokens"] == 1000  # the pitfall: per-call is ignored
    capped = cap_llm(llm, 50)
    assert capped._get_model_kwargs(max_tokens=2000)["max_tokens"] == 50
    assert llm.max_tokens == 1000 and current_cap(llm) == 1000 and current_cap(capped) == 50
    assert capped._get_client is not None and type(capped) is OpenAI


def test_openai_additional_kwargs_caps_and_reasoning_effort() -> None:
    from llama_index.llms.openai import OpenAI

    llm = OpenAI(model="o3-mini", api_key="sk-dummy", reasoning_effort="high", additional_kwargs={"max_tokens": 900})
    assert current_cap(llm) == 900
    sent = cap_llm(llm, 64)._get_model_kwargs()
    assert sent.get("max_completion_tokens", sent.get("max_tokens")) == 64
    assert sent["reasoning_effort"] == "low"  # a small cap leaves room for the answer
    assert cap_llm(llm, 4096)._get_model_kwargs()["reasoning_effort"] == "high"


def test_anthropic_max_tokens_and_thinking_budget() -> None:
    from llama_index.llms.anthropic import Anthropic

    llm = Anthropic(model="claude-sonnet-4-0", api_key="dummy", max_tokens=8000)
    assert current_cap(llm) == 8000
    assert cap_llm(llm, 300)._get_all_kwargs()["max_tokens"] == 300
    thinking = Anthropic(
        model="claude-sonnet-4-0", api_key="dummy", max_tokens=8000,
        thinking_dict={"type": "enabled", "budget_tokens": 4000},
    )
    kept = cap_llm(thinking, 2000)._get_all_kwargs()
    assert kept["max_tokens"] == 2000 and kept["thinking"] == {"type": "enabled", "budget_tokens": 1500}
    dropped = cap_llm(thinking, 1200)._get_all_kwargs()  # under Anthropic's 1024 minimum once the answer has room
    assert dropped["max_tokens"] == 1200 and "thinking" not in dropped
    assert thinking.thinking_dict == {"type": "enabled", "budget_tokens": 4000}


def test_ollama_num_predict_keeps_the_users_options() -> None:
    from llama_index.llms.ollama import Ollama

    llm = Ollama(model="llama3", context_window=2048, additional_kwargs={"top_k": 5, "num_predict": 500})
    options = cap_llm(llm, 33)._model_kwargs  # what chat()/complete() send as `options`
    assert options["num_predict"] == 33 and options["top_k"] == 5 and options["num_ctx"] == 2048
    assert llm._model_kwargs["num_predict"] == 500 and current_cap(llm) == 500
    assert current_cap(Ollama(model="llama3", context_window=2048)) is None


class _FakeLlama:
    """Stands in for llama_cpp.Llama: records the kwargs LlamaCPP.complete passes to it."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.context_params = type("Params", (), {"n_ctx": 1024})()

    def __call__(self, prompt: str, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        usage = {"prompt_tokens": 1, "completion_tokens": 1}
        return {"choices": [{"text": "ok", "finish_reason": "stop"}], "usage": usage}


def test_llama_cpp_generate_kwargs_reach_llama_cpp() -> None:
    from llama_index.llms.llama_cpp import LlamaCPP

    sent = {"max_tokens": 256, "temperature": 0.1, "top_p": 0.9}
    llm = LlamaCPP.model_construct(model_path="fake.gguf", max_new_tokens=256, temperature=0.1, generate_kwargs=sent)
    fake = _FakeLlama()
    llm._model = fake
    llm.complete("hi", formatted=True, max_tokens=3)  # the per-call kwarg is ignored by LlamaCPP
    assert fake.calls[-1]["max_tokens"] == 256
    capped = cap_llm(llm, 12)
    assert capped._model is fake  # the loaded model is shared, not reloaded
    capped.complete("hi", formatted=True)
    assert fake.calls[-1]["max_tokens"] == 12 and fake.calls[-1]["top_p"] == 0.9
    assert llm.generate_kwargs["max_tokens"] == 256 and capped.max_new_tokens == 12
    assert current_cap(llm) == 256 and current_cap(capped) == 12


def test_mock_llms_use_their_max_tokens_field() -> None:
    mock = MockLLM(max_tokens=100)
    assert current_cap(mock) == 100
    assert cap_llm(mock, 7).complete("hello").text.split() == ["text"] * 7
    metered = MeteredMockLLM(response_tokens=50, max_new_tokens=40)
    assert current_cap(metered) == 40
    cap_llm(metered, 5).complete("x")
    assert metered.calls[-1].cap == 5 and metered.calls[-1].output_tokens == 5
    assert cap_kwargs(metered, 5) == {}


def test_unknown_llm_gets_a_warning_and_a_per_call_kwarg() -> None:
    from llama_index.core.llms.custom import CustomLLM

    class Plain(CustomLLM):
        @property
        def metadata(self) -> Any:
            from llama_index.core.llms import LLMMetadata

            return LLMMetadata()

        def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
            raise NotImplementedError

        def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
            raise NotImplementedError

    plain = Plain()
    with pytest.warns(ClearWarning, match="no known completion-cap field"):
        assert cap_llm(plain, 9) is plain
    assert cap_kwargs(plain, 9) == {"max_tokens": 9} and current_cap(plain) is None


def test_bad_caps_are_refused() -> None:
    with pytest.raises(InvalidBudget):
        cap_llm(MockLLM(), 0)


def test_the_wrapper_caps_an_openai_request_on_the_wire() -> None:
    """Through ClearBudgetLLM, the request body OpenAI sends carries the decided cap, though the instance says 1000."""
    import json

    import httpx
    from llama_index.core.base.llms.types import ChatMessage
    from llama_index.llms.openai import OpenAI

    from clear_integrations import Budget, BudgetPolicy, open_ledger
    from clear_integrations.adapters.llama_index import ClearBudgetLLM

    bodies: list[dict[str, Any]] = []

    def reply(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={
            "id": "c1", "object": "chat.completion", "created": 0, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": "Hi"}}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 40, "total_tokens": 49},
        })

    client = httpx.Client(transport=httpx.MockTransport(reply))
    openai = OpenAI(model="gpt-4o-mini", api_key="sk-dummy", max_tokens=1000, http_client=client, max_retries=0)
    ledger = open_ledger("memory://")
    ledger.set_budget("acme", Budget(tokens=10_000))
    llm = ClearBudgetLLM(openai, ledger=ledger, tenant="acme", policy=BudgetPolicy(max_tokens=40))
    llm.chat([ChatMessage(role="user", content="hello")], max_tokens=2000)
    assert bodies[-1]["max_tokens"] == 40
    assert ledger.usage("acme").total == 49 and ledger.usage("acme").estimated_calls == 0  # OpenAI's own usage
    assert ledger.balance("acme").held == 0
