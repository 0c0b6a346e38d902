"""Reading token usage from what a LlamaIndex LLM returned, and counting it where the provider is silent.

Where the providers put their usage (the first found wins):

- ``raw["usage"]`` as a dict or an object: OpenAI-style ``prompt_tokens`` / ``completion_tokens`` (with
  ``completion_tokens_details.reasoning_tokens``), Anthropic-style ``input_tokens`` / ``output_tokens`` (cache
  reads and writes count as prompt), Gemini-style ``prompt_token_count`` / ``candidates_token_count``
  (``MeteredMockLLM``, ``LlamaCPP``, Anthropic, Ollama after its own conversion);
- ``raw.usage`` of an SDK response object; ``raw["usage_metadata"]`` (Gemini: ``thoughts_token_count`` is
  reasoning, billed beside ``candidates_token_count``);
- ``message.additional_kwargs["usage"]`` (Anthropic streams);
- ``raw["prompt_eval_count"]`` / ``raw["eval_count"]`` (Ollama's native fields);
- the flat keys of ``additional_kwargs`` (``llama-index-llms-openai``).

Without usage (``MockLLM``, a stream cut short, most streams), the completion is counted with the LLM's own
tokenizer when there is one (``LlamaCPP``: its llama.cpp model's ``tokenize``; ``MeteredMockLLM``: its word count),
else with tiktoken, and the :class:`~clear_integrations.ledger.Usage` is marked ``estimated``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)
from llama_index.core.llms.llm import LLM

from ...ledger import Usage
from ...tokens import count_tokens

__all__ = [
    "Reported",
    "finish_reason",
    "llm_model_name",
    "llm_tokenizer",
    "message_text",
    "prompt_of_messages",
    "reported_counts",
    "reported_usage",
    "response_text",
    "tool_calls_text",
    "usage_from_response",
]

_PROMPT = ("prompt_tokens", "input_tokens", "prompt_token_count", "prompt_eval_count")
_COMPLETION = ("completion_tokens", "output_tokens", "candidates_token_count", "eval_count")
_CACHE = ("cache_creation_input_tokens", "cache_read_input_tokens")
_CUT = ("length", "max_tokens", "MAX_TOKENS")

Response = ChatResponse | CompletionResponse


def _get(source: Any, key: str) -> Any:
    if isinstance(source, Mapping):
        return source.get(key)
    return getattr(source, key, None)


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _first(source: Any, keys: Sequence[str]) -> int | None:
    for key in keys:
        value = _int(_get(source, key))
        if value is not None:
            return value
    return None


#: What a provider reported: prompt tokens (``None`` when it reported only its completion), completion, reasoning.
Reported = tuple[int | None, int, int]


def _read(source: Any) -> Reported | None:
    if source is None or isinstance(source, str | bytes | int | float):
        return None
    completion = _first(source, _COMPLETION)
    if completion is None:
        return None
    prompt = _first(source, _PROMPT)
    if prompt is not None:
        prompt = max(0, prompt + sum(_int(_get(source, key)) or 0 for key in _CACHE))
    details = _get(source, "completion_tokens_details") or _get(source, "output_tokens_details")
    reasoning = _int(_get(details, "reasoning_tokens")) or 0 if details is not None else 0
    thoughts = _int(_get(source, "thoughts_token_count"))
    if thoughts:  # Gemini counts thinking apart from the answer
        completion, reasoning = completion + thoughts, thoughts
    completion = max(completion, 0)
    return prompt, completion, min(max(reasoning, 0), completion)


def reported_counts(response: Any) -> Reported | None:
    """What the provider reported in ``response`` (see the module docstring), ``None`` if nothing; the prompt may be
    missing (``None``) where a provider reports only its completion."""
    if response is None:
        return None
    raw, extra = getattr(response, "raw", None), getattr(response, "additional_kwargs", None)
    message = _get(getattr(response, "message", None), "additional_kwargs")
    sources = (_get(raw, "usage"), _get(raw, "usage_metadata"), raw, extra, _get(message, "usage"))
    return next((found for found in map(_read, sources) if found is not None), None)


def reported_usage(response: Response | None) -> Usage | None:
    """The usage the provider reported in ``response`` in full (prompt and completion), ``None`` otherwise."""
    found = reported_counts(response)
    if found is None or found[0] is None:
        return None
    return Usage(found[0], found[1], found[2])


def response_text(response: Response) -> str:
    if isinstance(response, CompletionResponse):
        return response.text
    return message_text(response.message)


def message_text(message: ChatMessage, *, thinking: bool = False) -> str:
    """The text blocks of a message (and its thinking blocks with ``thinking``: they are completion tokens too)."""
    kinds = (TextBlock, ThinkingBlock) if thinking else (TextBlock,)
    blocks = [block for block in message.blocks if isinstance(block, kinds)]
    return "".join((b.text if isinstance(b, TextBlock) else b.content) or "" for b in blocks)


def _tool_call_text(call: Any) -> str:
    """``name(arguments)`` of a ``ToolCallBlock``, ``ToolSelection``, or OpenAI / Ollama / Anthropic tool call."""
    function = _get(call, "function") or call  # OpenAI and Ollama nest the name and arguments in "function"
    name = _get(call, "tool_name") or _get(function, "name") or ""
    values = (_get(call, "tool_kwargs"), _get(function, "arguments"), _get(call, "input"))
    args = next((value for value in values if value is not None), "")
    return f"{name}({args if isinstance(args, str) else json.dumps(args, default=str)})"


def tool_calls_text(message: Any) -> str:
    """A message's tool calls as text to count: its ``ToolCallBlock``s, else ``additional_kwargs["tool_calls"]``."""
    calls: Any = [block for block in getattr(message, "blocks", ()) if isinstance(block, ToolCallBlock)]
    calls = calls or _get(getattr(message, "additional_kwargs", None), "tool_calls")
    return "".join(map(_tool_call_text, calls)) if isinstance(calls, list | tuple) else ""


def finish_reason(response: Response) -> str | None:
    """Why the provider stopped (``"length"`` for a completion cut at its cap, whatever the provider's word)."""
    raw = response.raw
    reason = _get(raw, "finish_reason") or _get(raw, "stop_reason") or _get(raw, "done_reason")
    if reason is None and isinstance(response, ChatResponse):
        reason = response.message.additional_kwargs.get("stop_reason")
    choices = _get(raw, "choices")
    if reason is None and isinstance(choices, Sequence) and choices:
        reason = _get(choices[0], "finish_reason")
    if reason is None:
        return None
    return "length" if reason in _CUT else str(reason)


def usage_from_response(
    response: Response | None,
    *,
    prompt_tokens: int,
    prompt_estimated: bool,
    text: str | None = None,
    model: str | None = None,
    tokenizer: Callable[[str], int] | None = None,
) -> Usage:
    """The usage to commit for one call: the provider's, else ``text`` (default: the response's) counted."""
    reported = reported_usage(response)
    if reported is not None:
        return reported
    if text is None:
        text = "" if response is None else response_text(response)
    counted = count_tokens(text, model=model, tokenizer=tokenizer)
    return Usage(prompt=prompt_tokens, completion=counted.tokens, estimated=counted.estimated or prompt_estimated)


def llm_model_name(llm: LLM) -> str | None:
    """The provider's model name (``model`` / ``model_name`` fields, else ``metadata.model_name``)."""
    for attribute in ("model", "model_name"):
        value = getattr(llm, attribute, None)
        if isinstance(value, str):
            return value
    try:
        name = llm.metadata.model_name
    except Exception:  # a metadata property that needs the network or a loaded model
        return None
    return name if isinstance(name, str) else None


def llm_tokenizer(llm: LLM) -> Callable[[str], int] | None:
    """The LLM's own token counter: a ``LlamaCPP``'s llama.cpp tokenizer (no BOS, special tokens parsed as llama.cpp
    parses a prompt), ``MeteredMockLLM``'s word count;
    ``None`` for anything else (tiktoken then estimates)."""
    names = {cls.__name__ for cls in type(llm).__mro__}
    if "MeteredMockLLM" in names:
        from ...testing.script import count_words

        return count_words
    model = getattr(llm, "_model", None) if "LlamaCPP" in names else None
    tokenize = getattr(model, "tokenize", None)
    if callable(tokenize):
        # special=True: a chat template's markers (<|im_start|>, ...) are one token each, as llama.cpp sends them
        return lambda text: len(tokenize(text.encode("utf-8"), add_bos=False, special=True))
    return None


def prompt_of_messages(llm: LLM, messages: Sequence[ChatMessage], *, exact: bool) -> str:
    """The text a chat sends, for counting: ``LlamaCPP``'s own ``messages_to_prompt`` (what llama.cpp receives),
    the messages' text for an LLM with an exact tokenizer, else ``role: text`` lines (roughly what chat
    formats add per message, so the estimate errs on the high side)."""
    names = {cls.__name__ for cls in type(llm).__mro__}
    template = llm.messages_to_prompt
    if "LlamaCPP" in names and template is not None:
        return str(template(messages))
    if exact:
        return "\n".join(message_text(message) for message in messages)
    return "\n".join(f"{message.role.value}: {message_text(message)}" for message in messages)
