"""The framework-free core of the metered test doubles: the token model, answer scripts, caps and call records.

One token is one whitespace-separated word, so every count is exact and easy to check by hand:
``len(text.split())``. Answers are words of :data:`VOCABULARY`, repeated in order. An answer may spend hidden
*reasoning* tokens before its visible text; they count as output tokens and come first, so a small cap can leave
an empty answer, as with real reasoning models.

Both :class:`~clear_integrations.testing.MeteredFakeChatModel` (LangChain) and
:class:`~clear_integrations.testing.MeteredMockLLM` (LlamaIndex) are thin layers over this module.
"""

from __future__ import annotations

import json
import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

from ..errors import InvalidBudget, InvalidInput, ScriptExhausted

__all__ = [
    "CAP_PARAMS", "VOCABULARY", "AnswerLength", "CallLog", "MeteredCall", "Plan", "ScriptExhausted", "ScriptState",
    "ToolCall", "ToolCallScript", "Turn", "answer_words", "begin_call", "check_length_spec", "collect_caps",
    "count_words", "plan_answer", "resolve_length", "token_ids",
]  # fmt: skip

M = TypeVar("M")

VOCABULARY: tuple[str, ...] = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett", "kilo", "lima",
    "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform", "victor", "whiskey",
    "xray", "yankee", "zulu",
)  # fmt: skip
"""The words answers are made of (one word = one token)."""

CAP_PARAMS: tuple[str, ...] = (
    "max_tokens", "max_completion_tokens", "max_new_tokens", "num_predict", "max_output_tokens",
)  # fmt: skip
"""Output-cap spellings honoured, as providers name them (OpenAI, HuggingFace, Ollama, Google/Responses API)."""

AnswerLength: TypeAlias = int | Sequence[int] | Callable[[list[M]], int]
"""How many tokens an answer needs: a fixed int, a list (entry *i* for call *i*), or a function of the messages."""

ToolCallScript: TypeAlias = Sequence[Sequence[Mapping[str, Any]]]
"""One entry per call made with tools bound: the tool calls (``{"name", "args", "id"?}``) to answer with."""


def count_words(text: str) -> int:
    """Tokens in ``text``: its whitespace-separated words."""
    return len(text.split())


def answer_words(n: int) -> list[str]:
    """The deterministic answer of ``n`` tokens: the vocabulary repeated in order."""
    return [VOCABULARY[i % len(VOCABULARY)] for i in range(n)]


def token_ids(text: str) -> list[int]:
    """One stable id per word: the vocabulary index, else a CRC32 past the vocabulary (never Python's ``hash``)."""
    index = {word: i for i, word in enumerate(VOCABULARY)}
    return [index.get(word, len(VOCABULARY) + zlib.crc32(word.encode())) for word in text.split()]


def _amount(field_name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidBudget(field_name, value, "must be an int")
    if value < 0:
        raise InvalidBudget(field_name, value, "must be >= 0")
    return value


def check_length_spec(field_name: str, spec: Any) -> Any:
    """Validate an :data:`AnswerLength` at construction (ints and list entries >= 0); returns it unchanged."""
    if callable(spec):
        return spec
    if isinstance(spec, Sequence) and not isinstance(spec, str | bytes):
        for i, value in enumerate(spec):
            _amount(f"{field_name}[{i}]", value)
        return spec
    return _amount(field_name, spec)


def resolve_length(field_name: str, spec: AnswerLength[M], call_index: int, messages: list[M]) -> int:
    """The length ``spec`` gives call number ``call_index`` (0-based) on ``messages``."""
    if callable(spec):
        return _amount(f"{field_name}(messages)", spec(messages))
    if isinstance(spec, Sequence):
        if call_index >= len(spec):
            raise ScriptExhausted(field_name, list(spec), f"no entry for call {call_index + 1} ({len(spec)} given)")
        return _amount(f"{field_name}[{call_index}]", spec[call_index])
    return _amount(field_name, spec)


def _check_cap(name: str, value: Any) -> int | None:
    if name.endswith("num_predict") and isinstance(value, int) and not isinstance(value, bool) and value < 0:
        return None  # Ollama: -1 generates without limit, -2 fills the context
    return _amount(name, value)


def collect_caps(fields: Mapping[str, Any], call_kwargs: Mapping[str, Any]) -> dict[str, int]:
    """The caps in force, by spelling: a per-call value replaces the field of the same spelling (``None`` clears it).

    ``options={"num_predict": n}`` (ChatOllama) is reported as ``"options.num_predict"``. The effective cap is the
    smallest value of the result.
    """
    merged = {**fields, **{k: v for k, v in call_kwargs.items() if k in CAP_PARAMS or k == "options"}}
    caps: dict[str, int] = {}
    for name in CAP_PARAMS:
        if merged.get(name) is not None and (cap := _check_cap(name, merged[name])) is not None:
            caps[name] = cap
    options = merged.get("options")
    if options is not None:
        if not isinstance(options, Mapping):
            raise InvalidInput("options", options, "must be a mapping")
        if options.get("num_predict") is not None:
            cap = _check_cap("options.num_predict", options["num_predict"])
            if cap is not None:
                caps["options.num_predict"] = cap
    return caps


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A scripted tool call: the tool's name, its arguments and the call id."""

    name: str
    args: dict[str, Any]
    id: str

    @property
    def tokens(self) -> int:
        """Output tokens this call costs: the words of ``name`` and of the JSON of ``args``."""
        return count_words(f"{self.name} {json.dumps(self.args, sort_keys=True)}")


@dataclass(frozen=True, slots=True)
class Plan:
    """What one call produces once caps and stop sequences are applied."""

    reasoning_tokens: int
    words: tuple[str, ...]
    tool_calls: tuple[ToolCall, ...]
    tool_tokens: int
    wanted_tokens: int
    finish_reason: str

    @property
    def output_tokens(self) -> int:
        """Reasoning + visible words + tool-call tokens."""
        return self.reasoning_tokens + len(self.words) + self.tool_tokens

    def pieces(self) -> list[str]:
        """The streamed pieces: one per visible word (joined by spaces), or a single empty piece if none."""
        return [word if i == 0 else f" {word}" for i, word in enumerate(self.words)] or [""]


def plan_answer(
    answer_tokens: int,
    reasoning_tokens: int,
    cap: int | None,
    stop: Sequence[str] | None = None,
    tool_calls: Sequence[ToolCall] = (),
) -> Plan:
    """Plan a call: reasoning first, then the tool calls or the text; ``finish_reason`` is stop/length/tool_calls.

    The text stops before the first word that contains a stop sequence (finish "stop"). When reasoning + answer
    exceed ``cap``, the call ends after exactly ``cap`` output tokens with finish "length"; tool calls cut short
    are dropped (their tokens are still spent), as a provider returns an unusable partial call.
    """
    words = answer_words(answer_tokens)
    cut = next((i for i, word in enumerate(words) if any(s and s in word for s in stop or ())), None)
    if cut is not None:
        words = words[:cut]
    calls = tuple(tool_calls)
    body = sum(call.tokens for call in calls) if calls else len(words)
    wanted = reasoning_tokens + body
    if cap is None or wanted <= cap:
        finish = "tool_calls" if calls else "stop"
        return Plan(reasoning_tokens, () if calls else tuple(words), calls, body if calls else 0, wanted, finish)
    reasoning = min(reasoning_tokens, cap)
    room = cap - reasoning
    if calls:
        return Plan(reasoning, (), (), room, wanted, "length")
    return Plan(reasoning, tuple(words[:room]), (), 0, wanted, "length")


@dataclass(frozen=True, slots=True)
class MeteredCall:
    """The record of one model call, as kept in ``model.calls``.

    ``cap`` is the effective cap (the smallest of ``cap_params``, the caps received by spelling), ``None`` if none.
    ``output_tokens`` are the tokens actually produced (reasoning included); a stream abandoned by its consumer
    records the tokens it had emitted, with ``finish_reason="cancelled"``. ``wanted_tokens`` is what the answer
    needed without a cap. ``tool_calls`` names the tools called.
    """

    cap: int | None
    cap_params: Mapping[str, int]
    prompt_tokens: int
    output_tokens: int
    reasoning_tokens: int
    wanted_tokens: int
    finish_reason: str
    streamed: bool
    tool_calls: tuple[str, ...] = ()

    @property
    def total_tokens(self) -> int:
        """Prompt + output tokens."""
        return self.prompt_tokens + self.output_tokens


@dataclass
class CallLog:
    """A thread-safe, append-only list of :class:`MeteredCall` records."""

    _items: list[MeteredCall] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def append(self, call: MeteredCall) -> None:
        """Record one call."""
        with self._lock:
            self._items.append(call)

    def snapshot(self) -> list[MeteredCall]:
        """A copy of the records so far, in the order the calls finished."""
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        """Forget every record."""
        with self._lock:
            self._items.clear()


@dataclass
class ScriptState:
    """Where a model is in its scripts: calls started and tool turns taken, advanced atomically."""

    calls: int = 0
    tool_turns: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start_call(self) -> int:
        """Claim the next call index (0-based)."""
        with self._lock:
            self.calls += 1
            return self.calls - 1

    def take_tool_turn(self, script: ToolCallScript | None, bound: Sequence[str]) -> list[ToolCall]:
        """The scripted tool calls for a call made with tools ``bound`` ([] once the script is used up)."""
        if not script:
            return []
        with self._lock:
            turn = self.tool_turns
            if turn >= len(script):
                return []
            self.tool_turns += 1
        calls: list[ToolCall] = []
        for i, spec in enumerate(script[turn]):
            where = f"tool_calls[{turn}][{i}]"
            name = spec.get("name") if isinstance(spec, Mapping) else None
            if not isinstance(name, str):
                raise InvalidInput(where, spec, 'must be a mapping with a "name" string')
            if bound and name not in bound:
                raise InvalidInput(where, spec, f"calls {name!r}, but the bound tools are {sorted(bound)}")
            args = spec.get("args", {})
            if not isinstance(args, Mapping):
                raise InvalidInput(f"{where}.args", args, "must be a mapping")
            call_id = spec.get("id") or f"call-{turn}-{i}"
            calls.append(ToolCall(name=name, args=dict(args), id=str(call_id)))
        return calls

    def reset(self) -> None:
        """Start the scripts again from their first entries."""
        with self._lock:
            self.calls = 0
            self.tool_turns = 0


@dataclass(frozen=True, slots=True)
class Turn:
    """One call in progress: its plan, its prompt size and the caps it received."""

    plan: Plan
    prompt_tokens: int
    caps: Mapping[str, int]

    @property
    def cap(self) -> int | None:
        """The effective cap: the smallest received, ``None`` if none."""
        return min(self.caps.values(), default=None)

    @property
    def text(self) -> str:
        """The visible answer."""
        return " ".join(self.plan.words)

    def usage(self) -> tuple[int, int, int]:
        """``(prompt_tokens, output_tokens, total_tokens)`` of the complete call."""
        out = self.plan.output_tokens
        return self.prompt_tokens, out, self.prompt_tokens + out

    def record(self, *, streamed: bool, delivered: int | None = None) -> MeteredCall:
        """The call's record; ``delivered`` is the number of stream pieces handed out before an early close."""
        plan = self.plan
        output, finish = plan.output_tokens, plan.finish_reason
        if delivered is not None and delivered < len(plan.pieces()):
            output = plan.reasoning_tokens + min(delivered, len(plan.words)) + (plan.tool_tokens if delivered else 0)
            finish = "cancelled"
        return MeteredCall(
            cap=self.cap,
            cap_params=dict(self.caps),
            prompt_tokens=self.prompt_tokens,
            output_tokens=output,
            reasoning_tokens=plan.reasoning_tokens,
            wanted_tokens=plan.wanted_tokens,
            finish_reason=finish,
            streamed=streamed,
            tool_calls=tuple(call.name for call in plan.tool_calls),
        )


def begin_call(
    state: ScriptState,
    *,
    messages: list[M],
    prompt_tokens: int,
    response_tokens: AnswerLength[M],
    reasoning_tokens: AnswerLength[M],
    tool_script: ToolCallScript | None,
    bound_tools: Sequence[str] | None,
    fields: Mapping[str, Any],
    call_kwargs: Mapping[str, Any],
    stop: Sequence[str] | None,
) -> Turn:
    """Start a call: check the caps, claim the next script entries, plan the answer.

    ``bound_tools`` is ``None`` when the call carries no tools; the tool-call script advances only on calls that do.
    """
    caps = collect_caps(fields, call_kwargs)
    index = state.start_call()
    answer = resolve_length("response_tokens", response_tokens, index, messages)
    reasoning = resolve_length("reasoning_tokens", reasoning_tokens, index, messages)
    calls = state.take_tool_turn(tool_script, bound_tools) if bound_tools is not None else []
    plan = plan_answer(answer, reasoning, min(caps.values(), default=None), stop, calls)
    return Turn(plan=plan, prompt_tokens=prompt_tokens, caps=caps)
