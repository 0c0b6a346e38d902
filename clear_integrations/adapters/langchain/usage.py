"""Token usage of LangChain models: one parser for what the providers report, and offline counts where they are
silent.

Provider usage wins: ``AIMessage.usage_metadata`` (``input_tokens``, ``output_tokens``, reasoning in
``output_token_details["reasoning"]``, a part of ``output_tokens``), else the ``token_usage`` / ``usage`` mapping a
model puts in ``llm_output`` (ChatLlamaCpp, LlamaCpp, OpenAI completions: ``prompt_tokens`` /
``completion_tokens``, reasoning in ``completion_tokens_details.reasoning_tokens``), which LangChain also copies into
``response_metadata``. A cached answer (LangChain re-emits the original usage with ``total_cost == 0``) costs
nothing. Stream chunks carry usage in parts that add up (``AIMessageChunk`` addition), so a stream's usage is the
sum of its chunks'. Without usage (a stream cut short, a model that reports none), the text is counted with the
model's own tokenizer when it has one, else with tiktoken offline, and the :class:`~clear_integrations.ledger.Usage`
is marked ``estimated``.

Prompts are counted as the provider will see them: ChatLlamaCpp's prompts through the GGUF's own chat template and
tokenizer (exact; the template may add a system prompt), otherwise the messages' text with tiktoken (exact for
OpenAI models' own encodings, an estimate for others), tool schemas included.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from langchain_core.language_models import BaseLanguageModel
from langchain_core.messages import BaseMessage, convert_to_openai_messages, get_buffer_string
from langchain_core.outputs import ChatResult, Generation, LLMResult

from ...ledger import Usage
from ...tokens import count_tokens

__all__ = [
    "PromptCounter",
    "generation_text",
    "is_cache_hit",
    "model_name",
    "model_tokenizer",
    "prompt_counter",
    "usage_of_mapping",
    "usage_of_message",
    "usage_of_result",
]

Counter = Callable[[str], int]
PromptCounter = Callable[[Sequence[BaseMessage] | str, Any], tuple[int, bool]]


def model_name(model: BaseLanguageModel[Any]) -> str | None:
    """The provider's model name, if the model says (``model_name`` / ``model`` fields)."""
    for attribute in ("model_name", "model"):
        value = getattr(model, attribute, None)
        if isinstance(value, str):
            return value
    return None


def _llama(model: BaseLanguageModel[Any]) -> Any:
    """The ``llama_cpp.Llama`` of a ChatLlamaCpp / LlamaCpp model, or None."""
    client = getattr(model, "client", None)
    return client if callable(getattr(client, "tokenize", None)) and hasattr(client, "n_vocab") else None


def model_tokenizer(model: BaseLanguageModel[Any]) -> Counter | None:
    """The model's own token counter: a llama.cpp client's tokenizer (ChatLlamaCpp, LlamaCpp), or
    ``get_num_tokens`` when the model's class overrides it; ``None`` when it has neither."""
    llama = _llama(model)
    if llama is not None:
        return lambda text: len(llama.tokenize(text.encode(), add_bos=False, special=False))
    if type(model).get_num_tokens is BaseLanguageModel.get_num_tokens:
        return None
    return model.get_num_tokens


def _template(llama: Any) -> Callable[[list[dict[str, Any]]], int] | None:
    """Exact prompt tokens of chat messages as llama.cpp formats them with the GGUF's own chat template."""
    template = llama.metadata.get("tokenizer.chat_template") if isinstance(llama.metadata, Mapping) else None
    if template is None or getattr(llama, "chat_format", None) != "chat_template.default" or llama.chat_handler:
        return None
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    def token(index: int) -> str:
        return str(llama._model.token_get_text(index)) if index != -1 else ""

    formatter = Jinja2ChatFormatter(
        template=template, eos_token=token(llama.token_eos()), bos_token=token(llama.token_bos())
    )

    def count(messages: list[dict[str, Any]]) -> int:
        formatted = formatter(messages=messages)  # type: ignore[arg-type]
        return len(llama.tokenize(formatted.prompt.encode(), add_bos=not formatted.added_special, special=True))

    return count


def prompt_counter(model: BaseLanguageModel[Any]) -> PromptCounter:
    """A function from (messages or text, tools) to (prompt tokens, exact) for ``model``."""
    llama = _llama(model)
    templated = _template(llama) if llama is not None else None
    own = model_tokenizer(model)
    name = model_name(model)

    def count(prompt: Sequence[BaseMessage] | str, tools: Any) -> tuple[int, bool]:
        if templated is not None and not isinstance(prompt, str) and not tools:
            return templated(convert_to_openai_messages(list(prompt))), True
        text = prompt if isinstance(prompt, str) else get_buffer_string(list(prompt))
        if tools:
            text += "\n" + json.dumps(tools, default=str, sort_keys=True)
        counted = count_tokens(text, model=name, tokenizer=own)
        return counted.tokens, isinstance(prompt, str) and not counted.estimated  # chat formats add tokens

    return count


def is_cache_hit(message: Any) -> bool:
    """A LangChain cache hit: the cached usage re-emitted with ``total_cost == 0``."""
    usage = getattr(message, "usage_metadata", None)
    return isinstance(usage, Mapping) and usage.get("total_cost") == 0


def usage_of_mapping(usage: Any) -> Usage | None:
    """A provider's usage mapping (``usage_metadata``, or an OpenAI-style ``token_usage``), or None."""
    if not isinstance(usage, Mapping):
        return None
    completion = usage.get("output_tokens", usage.get("completion_tokens"))
    prompt = usage.get("input_tokens", usage.get("prompt_tokens"))
    if type(completion) is not int or (prompt is not None and type(prompt) is not int):
        return None
    details = usage.get("output_token_details") or usage.get("completion_tokens_details") or {}
    reasoning = details.get("reasoning", details.get("reasoning_tokens")) if isinstance(details, Mapping) else 0
    return Usage(prompt or 0, completion, min(reasoning if type(reasoning) is int else 0, completion))


def usage_of_message(message: Any) -> Usage | None:
    """The usage one answer reports: ``usage_metadata``, else ``response_metadata["token_usage"]``; a cache hit
    costs nothing; None when it reports nothing."""
    if is_cache_hit(message):
        return Usage()
    found = usage_of_mapping(getattr(message, "usage_metadata", None))
    if found is None:
        metadata = getattr(message, "response_metadata", None) or {}
        found = usage_of_mapping(metadata.get("token_usage") or metadata.get("usage"))
    return found


def generation_text(generation: Generation) -> str:
    """The completion text of a generation, tool calls included (they are completion tokens too)."""
    message = getattr(generation, "message", None)
    if not isinstance(message, BaseMessage):
        return generation.text
    calls = getattr(message, "tool_calls", None) or getattr(message, "tool_call_chunks", None)
    return message.text + (json.dumps(calls, default=str) if calls else "")


def usage_of_result(result: ChatResult | LLMResult) -> Usage | None:
    """The usage of one model call's result: each answer's reported usage (one response's usage repeated on its
    ``n`` choices counts once), else the call's ``llm_output`` usage; None when nothing was reported."""
    rows = result.generations if isinstance(result, LLMResult) else [result.generations]
    total, seen = None, []
    for generations in rows:
        for generation in generations:
            message = getattr(generation, "message", None)
            usage = getattr(message, "usage_metadata", None)
            if usage is not None and usage in seen:
                continue
            seen.append(usage)
            found = usage_of_message(message)
            if found is not None:
                total = found if total is None else total + found
    if total is None:
        output = result.llm_output or {}
        total = usage_of_mapping(output.get("token_usage") or output.get("usage"))
    return total
