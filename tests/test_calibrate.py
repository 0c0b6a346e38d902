from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from clear_integrations.bench.curvesets import load_jsonl
from clear_integrations.calibration.calibrate import (
    CalibrationMismatch,
    Generation,
    Generator,
    LangChainGenerator,
    LlamaCppGenerator,
    LlamaIndexGenerator,
    calibrate,
)
from clear_integrations.calibration.problems import Problem
from clear_integrations.errors import InvalidInput, InvalidUsage

BUDGETS = [8, 16, 32, 64]


def _problems() -> list[Problem]:
    return [
        Problem("q_easy", "easy question", "7", "gsm8k"),
        Problem("q_mid", "medium question", "12", "gsm8k"),
        Problem("q_hard", "hard question", "99", "gsm8k"),
        Problem("q_self", "question it finishes alone", "5", "gsm8k"),
    ]


# Sample s of a question is right iff its reasoning got >= THRESHOLD[q] + 16 * s tokens.
THRESHOLD = {"easy question": 8, "medium question": 16, "hard question": 1000, "question it finishes alone": 1000}


def _expected(question: str, samples: int) -> list[float]:
    if question == "question it finishes alone":  # ends by itself after 20 tokens with the right answer
        return [0.0, 0.0, 1.0, 1.0]
    return [sum(b >= THRESHOLD[question] + 16 * s for s in range(samples)) / samples for b in BUDGETS]


@dataclass
class FakeGenerator:
    """Deterministic: the reasoning text carries its token count, the probe answers right past the threshold."""

    name: str = "fake-model"
    fail_on: str | None = None
    calls: list[tuple[str, int, int]] = field(default_factory=list)
    probes: int = 0
    overshoot: int = 0
    estimated: bool = False

    def generate(self, question: str, max_tokens: int, *, seed: int) -> Generation:
        if question == self.fail_on:
            raise RuntimeError("interrupted")
        self.calls.append((question, max_tokens, seed))
        if question == "question it finishes alone" and max_tokens >= 20:
            return Generation("so the answer is \\boxed{5}", 20, "stop", self.estimated)
        return Generation(f"reasoning {max_tokens} {seed}", max_tokens + self.overshoot, "length", self.estimated)

    def answer(self, question: str, partial: str, *, seed: int) -> str:
        self.probes += 1
        _, used, sample_seed = partial.split()
        gold = {"easy question": 7, "medium question": 12}.get(question, 1)
        right = int(used) >= THRESHOLD[question] + 16 * int(sample_seed)
        return f"\\boxed{{{gold if right else -1}}}"


def test_fake_is_a_generator() -> None:
    assert isinstance(FakeGenerator(), Generator)


def test_curve_values_schema_and_meta(tmp_path: Path) -> None:
    out = tmp_path / "curves.jsonl"
    seen: list[tuple[int, int]] = []
    fake = FakeGenerator()
    curves = calibrate(
        _problems(), fake, budgets=[64, 8, 32, 16], samples=2, out=out, progress=lambda d, t: seen.append((d, t))
    )
    assert seen == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]
    assert curves.ids == [p.id for p in _problems()]
    for problem, row in zip(_problems(), curves.curves.matrix, strict=True):
        assert row.tolist() == _expected(problem.question, 2), problem.id
    loaded = load_jsonl(out)
    assert loaded.curves.budgets.tolist() == BUDGETS
    assert np.array_equal(loaded.curves.matrix, curves.curves.matrix)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert set(records[0]) == {"id", "prompt", "budgets", "accuracy", "meta"}
    meta = records[0]["meta"]
    assert meta["model"] == "fake-model"
    assert meta["samples"] == 2
    assert meta["grader"] == "default_grade"
    assert meta["estimated"] is False
    assert meta["tokens"] == [2 * b for b in BUDGETS]
    assert meta["finished"] == [0, 0, 0, 0]
    # the sample that ended by itself at 20 tokens is not re-run at 64
    alone = records[3]["meta"]
    assert alone["finished"] == [0, 0, 2, 2]
    assert alone["tokens"] == [16, 32, 40, 40]
    assert [b for q, b, _ in fake.calls if q == "question it finishes alone"] == [8, 16, 32, 8, 16, 32]
    assert {seed for _, _, seed in fake.calls} == {0, 1}


def test_resume_after_interruption_runs_nothing_twice(tmp_path: Path) -> None:
    out = tmp_path / "curves.jsonl"
    with pytest.raises(RuntimeError, match="interrupted"):
        calibrate(_problems(), FakeGenerator(fail_on="hard question"), budgets=BUDGETS, samples=2, out=out)
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["q_easy", "q_mid"]
    with out.open("a") as handle:  # a write torn by the interruption
        handle.write('{"id": "q_hard", "prompt": "hard qu')
    again = FakeGenerator()
    seen: list[tuple[int, int]] = []
    curves = calibrate(
        _problems(), again, budgets=BUDGETS, samples=2, out=out, progress=lambda d, t: seen.append((d, t))
    )
    assert {q for q, _, _ in again.calls} == {"hard question", "question it finishes alone"}
    assert seen[0] == (2, 4)
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == sorted(p.id for p in _problems())
    fresh = calibrate(_problems(), FakeGenerator(), budgets=BUDGETS, samples=2, out=tmp_path / "fresh.jsonl")
    assert np.array_equal(curves.curves.matrix, fresh.curves.matrix)
    # a third run does nothing at all
    idle = FakeGenerator()
    calibrate(_problems(), idle, budgets=BUDGETS, samples=2, out=out)
    assert idle.calls == []


def test_refuses_other_budgets_or_samples(tmp_path: Path) -> None:
    out = tmp_path / "curves.jsonl"
    calibrate(_problems()[:1], FakeGenerator(), budgets=BUDGETS, samples=2, out=out)
    with pytest.raises(CalibrationMismatch, match="budgets") as info:
        calibrate(_problems(), FakeGenerator(), budgets=[8, 16], samples=2, out=out)
    assert info.value.field == "budgets"
    with pytest.raises(CalibrationMismatch, match="samples") as info:
        calibrate(_problems(), FakeGenerator(), budgets=BUDGETS, samples=3, out=out)
    assert info.value.field == "samples"
    # resume=False starts over with the new settings
    curves = calibrate(_problems()[:2], FakeGenerator(), budgets=[8, 16], samples=3, out=out, resume=False)
    assert len(load_jsonl(out)) == 2
    assert curves.curves.budgets.tolist() == [8, 16]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"budgets": []}, "budgets"),
        ({"budgets": [8, 8]}, "repeat"),
        ({"budgets": [0, 8]}, "budgets"),
        ({"budgets": [8.0]}, "budgets"),
        ({"samples": 0}, "samples"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"budgets": BUDGETS, "samples": 1, "out": tmp_path / "o.jsonl", **kwargs}
    with pytest.raises(InvalidInput, match=match):
        calibrate(_problems(), FakeGenerator(), **args)


def test_duplicate_ids_and_empty_problems(tmp_path: Path) -> None:
    twice = [_problems()[0], _problems()[0]]
    with pytest.raises(InvalidInput, match="unique"):
        calibrate(twice, FakeGenerator(), budgets=BUDGETS, samples=1, out=tmp_path / "o.jsonl")
    with pytest.raises(InvalidInput, match="empty"):
        calibrate([], FakeGenerator(), budgets=BUDGETS, samples=1, out=tmp_path / "o.jsonl")


def test_cap_not_honoured_is_an_error_unless_estimated(tmp_path: Path) -> None:
    with pytest.raises(InvalidUsage, match="max_tokens=8"):
        calibrate(_problems(), FakeGenerator(overshoot=1), budgets=BUDGETS, samples=1, out=tmp_path / "a.jsonl")
    fake = FakeGenerator(overshoot=1, estimated=True)
    calibrate(_problems()[:1], fake, budgets=BUDGETS, samples=1, out=tmp_path / "b.jsonl")
    assert load_jsonl(tmp_path / "b.jsonl").meta[0]["estimated"] is True


def test_custom_grader_name(tmp_path: Path) -> None:
    def always_right(problem: Problem, text: str) -> bool:
        return True

    curves = calibrate(
        _problems()[:1], FakeGenerator(), budgets=BUDGETS, samples=1, out=tmp_path / "o.jsonl", grade=always_right
    )
    assert curves.curves.matrix.tolist() == [[1.0] * 4]
    assert curves.meta[0]["grader"] == "always_right"


@dataclass
class NestedFake(FakeGenerator):
    """Cuts one trace per sample at every budget; ``broken`` returns one generation too few."""

    traces: int = 0
    broken: bool = False

    def generate_nested(self, question: str, budgets: list[int], *, seed: int) -> list[Generation]:
        self.traces += 1
        cuts = [self.generate(question, b, seed=seed) for b in budgets]
        return cuts[:-1] if self.broken else cuts


def test_nested_generator_is_used_and_gives_the_same_curves(tmp_path: Path) -> None:
    nested = NestedFake()
    curves = calibrate(_problems(), nested, budgets=BUDGETS, samples=2, out=tmp_path / "n.jsonl")
    assert nested.traces == 4 * 2
    capped = NestedFake()
    same = calibrate(_problems(), capped, budgets=BUDGETS, samples=2, out=tmp_path / "c.jsonl", nested=False)
    assert capped.traces == 0
    assert np.array_equal(curves.curves.matrix, same.curves.matrix)
    assert curves.meta[0]["method"] == "nested" and same.meta[0]["method"] == "capped"
    with pytest.raises(InvalidUsage, match="one generation per budget"):
        calibrate(_problems(), NestedFake(broken=True), budgets=BUDGETS, samples=1, out=tmp_path / "b.jsonl")


# --- generators over fake framework models ----------------------------------------------------------------------


def test_langchain_generator_reads_usage_and_caps(tmp_path: Path) -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.language_models.chat_models import BaseChatModel
    from langchain_core.messages import AIMessage, BaseMessage
    from langchain_core.outputs import ChatGeneration, ChatResult
    from pydantic import Field

    class WordModel(BaseChatModel):
        """One word per token; reports usage unless told not to; finishes after 12 words."""

        report_usage: bool = True
        caps: list[int] = Field(default_factory=list)

        @property
        def _llm_type(self) -> str:
            return "word-model"

        def _generate(
            self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
        ) -> ChatResult:
            cap = int(kwargs["max_tokens"])
            self.caps.append(cap)
            if len(messages) == 3:  # the probe: [question, partial, request]
                text = "\\boxed{12}" if len(str(messages[1].content).split()) >= 8 else "\\boxed{0}"
                words = [text]
            else:
                words = [f"w{i}" for i in range(min(cap, 12))]
            finish = "length" if len(words) == cap and len(words) < 12 else "stop"
            usage = {"input_tokens": 5, "output_tokens": len(words), "total_tokens": 5 + len(words)}
            message = AIMessage(
                " ".join(words),
                usage_metadata=usage if self.report_usage else None,
                response_metadata={"finish_reason": finish},
            )
            return ChatResult(generations=[ChatGeneration(message=message)])

    model = WordModel()
    generator = LangChainGenerator(model, name="words")
    gen = generator.generate("q", 4, seed=0)
    assert gen == Generation("w0 w1 w2 w3", 4, "length", False)
    assert generator.generate("q", 30, seed=0).finish_reason == "stop"
    problems = [Problem("a", "q", "12", "gsm8k")]
    curves = calibrate(problems, generator, budgets=[4, 8, 16], samples=1, out=tmp_path / "lc.jsonl")
    # 4 words: probe wrong; 8 words: probe right; 16: ends by itself after 12 words, last number "11" is wrong
    assert curves.curves.matrix.tolist() == [[0.0, 1.0, 0.0]]
    assert curves.meta[0]["tokens"] == [4, 8, 12]
    assert curves.meta[0]["model"] == "words"
    assert model.caps == [4, 30, 4, 16, 8, 16, 16]  # probes (after 4 and 8) are capped at probe_tokens=16

    estimated = LangChainGenerator(WordModel(report_usage=False)).generate("q", 4, seed=0)
    assert estimated.estimated and estimated.completion_tokens == len("w0 w1 w2 w3") // 4
    counted = LangChainGenerator(WordModel(report_usage=False), token_counter=lambda t: len(t.split()))
    assert counted.generate("q", 4, seed=0) == Generation("w0 w1 w2 w3", 4, "length", False)


def test_langchain_cap_param_by_provider() -> None:
    class ChatOllama:
        pass

    assert LangChainGenerator(ChatOllama()).cap_param == "num_predict"
    assert LangChainGenerator(ChatOllama(), cap_param="max_completion_tokens").cap_param == "max_completion_tokens"


def _llama_index_models() -> tuple[type[Any], type[Any]]:
    from llama_index.core.llms import CompletionResponse, CustomLLM, LLMMetadata
    from pydantic import Field

    class FieldCapLLM(CustomLLM):
        """An OpenAI-style LLM: the cap is the ``max_tokens`` field; usage in ``raw``."""

        max_tokens: int = 256

        @property
        def metadata(self) -> LLMMetadata:
            return LLMMetadata()

        def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
            if "Stop reasoning now" in prompt:  # the probe (chat turns rendered into one prompt)
                return CompletionResponse(text="\\boxed{12}")
            words = [f"w{i}" for i in range(min(self.max_tokens, 12))]
            finish = "length" if len(words) == self.max_tokens else "stop"
            raw = {"usage": {"completion_tokens": len(words)}, "choices": [{"finish_reason": finish}]}
            return CompletionResponse(text=" ".join(words), raw=raw)

        def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
            raise NotImplementedError

    class LlamaCPPLike(FieldCapLLM):
        """Like LlamaCPP: ignores call kwargs, reads ``generate_kwargs["max_tokens"]`` (set from max_new_tokens)."""

        max_new_tokens: int = 256
        generate_kwargs: dict[str, Any] = Field(default_factory=dict)

        def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
            assert not kwargs
            cap = int(self.generate_kwargs.get("max_tokens", self.max_new_tokens))
            words = [f"w{i}" for i in range(min(cap, 12))]
            return CompletionResponse(text=" ".join(words), raw={"usage": {"completion_tokens": len(words)}})

    return FieldCapLLM, LlamaCPPLike


def test_llama_index_generator_sets_the_cap_per_call(tmp_path: Path) -> None:
    pytest.importorskip("llama_index.core")
    field_cap, llama_cpp_like = _llama_index_models()
    llm = field_cap()
    generator = LlamaIndexGenerator(llm)
    assert generator.generate("q", 5, seed=0) == Generation("w0 w1 w2 w3 w4", 5, "length", False)
    assert generator.generate("q", 50, seed=0).finish_reason == "stop"
    assert llm.max_tokens == 256  # the user's LLM is untouched
    like = llama_cpp_like(generate_kwargs={"max_tokens": 256, "temperature": 0.1})
    gen = LlamaIndexGenerator(like).generate("q", 3, seed=0)
    assert (gen.completion_tokens, gen.finish_reason) == (3, "length")
    assert like.generate_kwargs["max_tokens"] == 256
    curves = calibrate(
        [Problem("a", "q", "12", "gsm8k")], generator, budgets=[4, 8], samples=1, out=tmp_path / "li.jsonl"
    )
    assert curves.curves.matrix.tolist() == [[1.0, 1.0]]


def test_llama_cpp_generator_on_a_fake_llama() -> None:
    class FakeLlama:
        model_path = "/models/fake.gguf"
        metadata: ClassVar[dict[str, str]] = {}

        def __init__(self) -> None:
            self.calls: list[dict[str, Any]] = []

        def create_chat_completion(self, messages: list[dict[str, str]], **kwargs: Any) -> dict[str, Any]:
            self.calls.append({"messages": messages, **kwargs})
            n = int(kwargs["max_tokens"])
            content = "\\boxed{3}" if messages[-1]["role"] == "user" and len(messages) > 1 else "x " * n
            return {
                "choices": [{"message": {"content": content}, "finish_reason": "length"}],
                "usage": {"completion_tokens": n},
            }

    llama = FakeLlama()
    generator = LlamaCppGenerator(llama, temperature=0.5)
    assert generator.name == "fake.gguf"
    gen = generator.generate("q", 6, seed=3)
    assert (gen.completion_tokens, gen.finish_reason) == (6, "length")
    assert llama.calls[0]["seed"] == 3 and llama.calls[0]["temperature"] == 0.5
    assert generator.answer("q", gen.text, seed=3) == "\\boxed{3}"  # no chat template: a new user turn
    assert llama.calls[1]["max_tokens"] == 10 and llama.calls[1]["messages"][1]["role"] == "assistant"


# --- end to end on the real local model -------------------------------------------------------------------------


def _local_llama() -> Any:
    from clear_integrations.calibration.local_model import LocalModelUnavailable, load_local_llama

    try:
        # one thread: on a busy 2-core machine n_threads=2 was measured 10x slower (5.5 vs 57 tok/s)
        return load_local_llama(n_threads=1)
    except LocalModelUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must have the local model: {exc}")
        pytest.skip(str(exc))


def test_nested_cuts_equal_separate_capped_calls_at_temperature_0() -> None:
    llama = _local_llama()
    generator = LlamaCppGenerator(llama, temperature=0.0)
    question = "Tom has 3 apples and buys 5 more. How many apples does he have?"
    budgets = [1, 4, 9, 16]
    nested = generator.generate_nested(question, budgets, seed=0)
    separate = [generator.generate(question, b, seed=0) for b in budgets]
    assert nested == separate
    assert all(g.completion_tokens <= b for g, b in zip(separate, budgets, strict=True))
    assert separate[0].completion_tokens == 1 and separate[0].finish_reason == "length"
    # the probe continues the exact cut tokens, and the same text without the cache gives the same answer
    probed = generator.answer(question, nested[2].text, seed=0)
    assert probed.startswith("\\boxed{")
    generator._cuts.clear()
    assert generator.answer(question, nested[2].text, seed=0).startswith("\\boxed{")
    # a trace that ends by itself: one short question, a large cap
    ended = generator.generate_nested("Say hi.", [64], seed=0)[0]
    assert ended == generator.generate("Say hi.", 64, seed=0)


@pytest.mark.slow
def test_calibrate_end_to_end_on_smollm2(tmp_path: Path) -> None:
    from clear_integrations.calibration.problems import gsm8k_sample

    llama = _local_llama()
    inner = LlamaCppGenerator(llama, probe_tokens=8)
    budgets = [8, 16, 32]
    recorded: list[tuple[int, int]] = []

    class Recording:
        name = inner.name

        def generate(self, question: str, max_tokens: int, *, seed: int) -> Generation:
            generation = inner.generate(question, max_tokens, seed=seed)
            recorded.append((max_tokens, generation.completion_tokens))
            return generation

        def generate_nested(self, question: str, budgets: list[int], *, seed: int) -> list[Generation]:
            generations = inner.generate_nested(question, budgets, seed=seed)
            recorded.extend((b, g.completion_tokens) for b, g in zip(budgets, generations, strict=True))
            return generations

        def answer(self, question: str, partial: str, *, seed: int) -> str:
            return inner.answer(question, partial, seed=seed)

    started = time.perf_counter()
    out = tmp_path / "smollm2.jsonl"
    curves = calibrate(gsm8k_sample(5), Recording(), budgets=budgets, samples=2, out=out)
    elapsed = time.perf_counter() - started
    lines = out.read_text().splitlines()
    assert len(lines) == 5
    loaded = load_jsonl(out)
    assert loaded.curves.budgets.tolist() == budgets
    assert np.all((loaded.curves.matrix >= 0) & (loaded.curves.matrix <= 1))
    assert set(np.unique(loaded.curves.matrix * 2).tolist()) <= {0.0, 1.0, 2.0}  # 2 samples: 0, 0.5 or 1
    assert len(recorded) == 5 * 2 * 3
    assert all(used <= cap for cap, used in recorded)
    assert any(used == cap for cap, used in recorded)  # the cap is where generation stops
    for meta in loaded.meta:
        assert meta["model"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
        assert meta["method"] == "nested" and not meta["estimated"]
        assert all(t <= 2 * b for t, b in zip(meta["tokens"], budgets, strict=True))
    assert np.array_equal(curves.curves.matrix, loaded.curves.matrix)
    print(f"calibrate on SmolLM2: 5 questions x 3 budgets x 2 samples in {elapsed:.1f} s")


def test_load_generator_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clear_integrations.calibration.calibrate import load_generator

    (tmp_path / "my_models.py").write_text(
        "class Chat:\n    def invoke(self, messages, **kwargs):\n        raise NotImplementedError\n\n"
        "def make_llm():\n    return type('LLM', (), {'complete': lambda self, p: None})()\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert isinstance(load_generator("langchain:my_models:Chat"), LangChainGenerator)
    assert isinstance(load_generator("llama-index:my_models:make_llm"), LlamaIndexGenerator)
    with pytest.raises(InvalidInput, match="MODULE:ATTR"):
        load_generator("langchain:my_models")
    with pytest.raises(InvalidInput, match="cannot be imported"):
        load_generator("langchain:my_models:Missing")
