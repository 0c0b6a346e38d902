"""Metered test doubles for LangChain and LlamaIndex, shipped so that you can test your own apps with them.

* :class:`MeteredFakeChatModel` (needs ``langchain-core``): a ``BaseChatModel``.
* :class:`MeteredMockLLM` (needs ``llama-index-core``): a ``FunctionCallingLLM``.

Both answer with an exact, configurable number of tokens (one token = one whitespace-separated word), honour
output caps in every provider's spelling, report usage the way their framework expects (also when streaming),
answer with scripted tool calls so agents run, and record every call in ``.calls``::

    from clear_integrations.testing import MeteredFakeChatModel

    model = MeteredFakeChatModel(response_tokens=[10, 300], max_tokens=100)
    model.invoke("a")   # 10 tokens, finish_reason "stop"
    model.invoke("b")   # 100 tokens, finish_reason "length"
    assert [c.output_tokens for c in model.calls] == [10, 100]

Importing this package imports neither framework; each class loads its framework on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .script import VOCABULARY, MeteredCall, ScriptExhausted, count_words

if TYPE_CHECKING:
    from .langchain import MeteredFakeChatModel
    from .llama_index import MeteredMockLLM

__all__ = ["VOCABULARY", "MeteredCall", "MeteredFakeChatModel", "MeteredMockLLM", "ScriptExhausted", "count_words"]

_LAZY = {"MeteredFakeChatModel": ".langchain", "MeteredMockLLM": ".llama_index"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
