"""Ledger URLs: ``memory://[name]``, ``sqlite:///relative.db``, ``sqlite:////absolute.db``,
``redis://host:port/db`` and ``rediss://...``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..errors import InvalidLedgerURL

__all__ = ["InvalidLedgerURL", "LedgerURL", "parse_ledger_url"]


@dataclass(frozen=True, slots=True)
class LedgerURL:
    """A parsed ledger URL: the backend ``kind`` and its ``location`` (memory name, file path, Redis URL)."""

    kind: Literal["memory", "sqlite", "redis"]
    location: str


def parse_ledger_url(url: Any) -> LedgerURL:
    """Parse a ledger URL; :class:`InvalidLedgerURL` names the url when it is not one of the known forms."""
    if not isinstance(url, str):
        raise InvalidLedgerURL("url", url, "must be a string such as 'sqlite:///budgets.db'")
    scheme, separator, rest = url.partition("://")
    if not separator:
        raise InvalidLedgerURL("url", url, "must look like 'memory://', 'sqlite:///path.db' or 'redis://host:6379/0'")
    scheme = scheme.lower()
    if scheme == "memory":
        return LedgerURL("memory", rest.strip("/"))
    if scheme == "sqlite":
        if not rest.startswith("/") or len(rest) < 2 or "?" in rest:
            raise InvalidLedgerURL("url", url, "must be sqlite:///relative/path.db or sqlite:////absolute/path.db")
        path = rest[1:]
        if "\x00" in path:
            raise InvalidLedgerURL("url", url, "a file path cannot hold a NUL character")
        if path.strip() == ":memory:" or path.startswith("file:"):
            raise InvalidLedgerURL(
                "url", url, "an in-memory SQLite database belongs to the one connection that made it, so two ledgers"
                " opened on this URL would not share budgets: use memory://name for a ledger shared in this process,"
                " or sqlite:///path.db for a file",
            )
        return LedgerURL("sqlite", path)
    if scheme in ("redis", "rediss"):
        return LedgerURL("redis", url)
    raise InvalidLedgerURL("url", url, f"unknown ledger scheme {scheme!r}: use memory://, sqlite:/// or redis://")
