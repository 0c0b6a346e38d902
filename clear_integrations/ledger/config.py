"""Budgets from a file that ops can edit: TOML (always) or YAML (when PyYAML is installed).

```toml
[budgets.acme]
tokens = 100000
window = "1d"

[budgets."acme/batch-jobs"]
tokens = 20000
mode = "soft"
```

The YAML form is the same mapping: ``budgets: {acme: {tokens: 100000, window: 1d}}``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import InvalidBudget
from .accounts import parse_scope
from .model import Budget

__all__ = ["budgets_from_mapping", "load_budgets"]

_KEYS = {"tokens", "window", "mode"}


def load_budgets(path: str | Path) -> dict[str, Budget]:
    """Read ``{account: Budget}`` from a ``.toml`` file, or a ``.yaml``/``.yml`` file if PyYAML is installed.

    Every entry is validated; the first bad one raises a :class:`ClearError` naming it
    (``budgets.<account>.<key>``).
    """
    file = Path(path)
    text = file.read_text(encoding="utf-8")
    if file.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml  # type: ignore[import-untyped, unused-ignore]
        except ImportError:  # pragma: no cover - depends on the environment
            raise InvalidBudget("path", str(path), "reading YAML needs PyYAML (pip install pyyaml)") from None
        try:
            data: Any = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InvalidBudget("path", str(path), f"is not valid YAML: {exc}") from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InvalidBudget("path", str(path), f"is not valid TOML: {exc}") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("budgets"), Mapping):
        raise InvalidBudget("budgets", data, "the file must have a 'budgets' table of accounts")
    return budgets_from_mapping(data["budgets"])


def budgets_from_mapping(entries: Mapping[Any, Any]) -> dict[str, Budget]:
    """Validate ``{account: {tokens, window?, mode?}}`` into ``{account: Budget}``."""
    budgets: dict[str, Budget] = {}
    for account, entry in entries.items():
        field = f"budgets.{account}"
        name = parse_scope(account, field).name
        if not isinstance(entry, Mapping):
            raise InvalidBudget(field, entry, "must be a table with 'tokens' (and optionally 'window', 'mode')")
        unknown = set(entry) - _KEYS
        if unknown:
            raise InvalidBudget(field, entry, f"unknown keys {sorted(unknown)}: use tokens, window, mode")
        if "tokens" not in entry:
            raise InvalidBudget(f"{field}.tokens", None, "is required")
        try:
            budgets[name] = Budget(entry["tokens"], entry.get("window"), entry.get("mode", "hard"))
        except InvalidBudget as exc:
            raise InvalidBudget(f"{field}.{exc.field.removeprefix('budget.')}", exc.value, exc.reason) from None
    return budgets
