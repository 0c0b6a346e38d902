"""Reading token usage from what a LangChain model returned, and estimating it where the provider is silent.

Provider usage (``AIMessage.usage_metadata``) wins. A cached answer (LangChain re-emits the original usage with
``total_cost == 0``) costs nothing. Without usage (ChatLlamaCpp, LlamaCpp, a stream cut short), the completion is
counted with the model's own tokenizer when it has one (an overridden ``get_num_tokens``), else with tiktoken, and
the :class:`~clear_integrations.ledger.Usage` is marked ``estimated``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain_core.language_models import BaseLanguageModel
from langchain_core.messages import BaseMessage

from ...ledger import Usage
from ...tokens import count_tokens

__all__ = ["is_cache_hit", "model_name", "model_tokenizer", "usage_from_output"]


def model_name(model: BaseLanguageModel[Any]) -> str | None:
    """The provider's model name, if the model says (``model_name`` / ``model`` fields)."""
    for attribute in ("model_name", "model"):
        value = getattr(model, attribute, None)
        if isinstance(value, str):
            return value
    return None


def model_tokenizer(model: BaseLanguageModel[Any]) -> Callable[[str], int] | None:
    """The model's own token counter: a llama.cpp ``client``'s tokenizer (ChatLlamaCpp, LlamaCpp), or
    ``get_num_tokens`` when the model's class overrides it; ``None`` when it has neither."""
    client = getattr(model, "client", None)
    tokenize = getattr(client, "tokenize", None)
    if callable(tokenize) and hasattr(client, "n_vocab"):  # a llama_cpp.Llama
        return lambda text: len(tokenize(text.encode(), add_bos=False, special=False))
    if type(model).get_num_tokens is BaseLanguageModel.get_num_tokens:
        return None
    return model.get_num_tokens


def is_cache_hit(message: Any) -> bool:
    usage = getattr(message, "usage_metadata", None)
    return isinstance(usage, dict) and usage.get("total_cost") == 0


def _text(output: Any) -> str:
    if isinstance(output, BaseMessage):
        return output.text
    return output if isinstance(output, str) else str(output)


def usage_from_output(
    output: Any,
    *,
    prompt_tokens: int,
    prompt_estimated: bool,
    model: str | None = None,
    tokenizer: Callable[[str], int] | None = None,
) -> Usage:
    """The usage to commit for one call's output (an ``AIMessage``, a chunk, or text)."""
    if is_cache_hit(output):
        return Usage()
    usage = getattr(output, "usage_metadata", None)
    if isinstance(usage, dict) and usage.get("output_tokens") is not None:
        details = usage.get("output_token_details") or {}
        completion = int(usage["output_tokens"])
        return Usage(
            prompt=int(usage.get("input_tokens") or 0),
            completion=completion,
            reasoning=min(int(details.get("reasoning") or 0), completion),
        )
    counted = count_tokens(_text(output), model=model, tokenizer=tokenizer)
    return Usage(prompt=prompt_tokens, completion=counted.tokens, estimated=counted.estimated or prompt_estimated)
