from __future__ import annotations

import re
from pathlib import Path

import clear_integrations

API_PAGE = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_every_public_name_is_importable() -> None:
    for name in clear_integrations.__all__:
        assert hasattr(clear_integrations, name), name


def test_all_and_the_api_page_list_the_same_names() -> None:
    documented = set(re.findall(r"^### `([A-Za-z_][A-Za-z0-9_]*)`", API_PAGE.read_text(), flags=re.MULTILINE))
    exported = set(clear_integrations.__all__)
    assert documented - exported == set(), "documented but not exported"
    assert exported - documented == set(), "exported but not documented"


def test_all_is_sorted_and_unique() -> None:
    names = clear_integrations.__all__
    assert len(names) == len(set(names))


def test_every_error_derives_from_clear_error() -> None:
    for name in clear_integrations.__all__:
        value = getattr(clear_integrations, name)
        if isinstance(value, type) and issubclass(value, Exception) and not issubclass(value, Warning):
            assert issubclass(value, clear_integrations.ClearError), name
