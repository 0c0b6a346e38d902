"""The pure parts: account ids, windows, URLs, argument checks, the async twin's surface."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

import clear_integrations.ledger as ledger_package
from clear_integrations.errors import ClearError, InvalidAccount, LedgerUnavailable, UnknownReservation
from clear_integrations.ledger import AsyncLedger, InvalidLedgerURL, Ledger, open_async_ledger, open_ledger
from clear_integrations.ledger.accounts import parse_scope, tenant_of_reservation
from clear_integrations.ledger.urls import parse_ledger_url
from clear_integrations.ledger.windows import parse_window, window_bounds


def test_scopes() -> None:
    scope = parse_scope("acme/session-1")
    assert (scope.tenant, scope.path, scope.session) == ("acme", ("acme", "acme/session-1"), "session-1")
    assert parse_scope("a.b:c@d-e_f").path == ("a.b:c@d-e_f",)
    assert parse_scope("x" * 128).session is None
    with pytest.raises(InvalidAccount) as refused:
        parse_scope("x" * 129, "tenant")
    assert refused.value.field == "tenant"


def test_reservation_ids_name_their_tenant() -> None:
    assert tenant_of_reservation("acme#abc") == "acme"
    for bad in ("acme", "#abc", "acme#", "a b#c"):
        with pytest.raises(UnknownReservation):
            tenant_of_reservation(bad)


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("15m", 900), ("1h", 3600), ("1d", 86_400), ("7d", 604_800), ("2w", 1_209_600)]
)
def test_windows(text: str, seconds: int) -> None:
    assert parse_window(text) == seconds


def test_window_bounds_are_epoch_aligned() -> None:
    assert window_bounds(86_400, 86_400 * 3 + 5) == (86_400 * 3, 86_400 * 4)
    assert window_bounds(86_400, 86_400 * 3 - 0.001) == (86_400 * 2, 86_400 * 3)
    assert window_bounds(3600, 0) == (0, 3600)


@pytest.mark.parametrize(
    ("url", "kind", "location"),
    [
        ("memory://", "memory", ""),
        ("memory://shared", "memory", "shared"),
        ("sqlite:///budgets.db", "sqlite", "budgets.db"),
        ("sqlite:///data/budgets.db", "sqlite", "data/budgets.db"),
        ("sqlite:////var/lib/budgets.db", "sqlite", "/var/lib/budgets.db"),
        ("redis://localhost:6379/0", "redis", "redis://localhost:6379/0"),
        ("rediss://h:6380/1", "redis", "rediss://h:6380/1"),
    ],
)
def test_urls(url: str, kind: str, location: str) -> None:
    parsed = parse_ledger_url(url)
    assert (parsed.kind, parsed.location) == (kind, location)


@pytest.mark.parametrize("url", ["postgres://x/y", "budgets.db", "sqlite://budgets.db", "", 5, "sqlite:///"])
def test_bad_urls_name_the_url(url: Any) -> None:
    with pytest.raises(InvalidLedgerURL) as refused:
        open_ledger(url)
    assert refused.value.field == "url"
    assert isinstance(refused.value, ClearError)


def test_unreachable_stores() -> None:
    with pytest.raises(LedgerUnavailable):
        open_ledger("sqlite:////nonexistent-dir/x/budgets.db")
    pytest.importorskip("redis")
    with pytest.raises(LedgerUnavailable) as refused:
        open_ledger("redis://:secret@127.0.0.1:1/0")
    assert "secret" not in str(refused.value)


def test_memory_names_share_a_store() -> None:
    first, second = open_ledger("memory://units-shared"), open_ledger("memory://units-shared")
    first.reserve("acme", 5)
    assert second.balance("acme").held == 5
    assert open_ledger("memory://").balance("acme").held == 0


def test_async_twin_has_the_same_methods() -> None:
    public = {name for name in dir(Ledger) if not name.startswith("_")}
    bridges = {"of", "shares_store_with"}  # the async twin of a sync ledger, and whether two share a store
    assert public == {name for name in dir(AsyncLedger) if not name.startswith("_")} - bridges
    for name in public - {"url"}:
        sync, twin = getattr(Ledger, name), getattr(AsyncLedger, name)
        assert inspect.iscoroutinefunction(twin), name
        assert list(inspect.signature(sync).parameters) == list(inspect.signature(twin).parameters), name


def test_all_is_importable() -> None:
    for name in ledger_package.__all__:
        assert hasattr(ledger_package, name), name


def test_drivers_are_imported_lazily() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import clear_integrations.ledger as l; l.open_ledger('memory://');"
        "assert 'redis' not in sys.modules and 'sqlite3' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.anyio
async def test_async_ledger_basic_flow(tmp_path: Any) -> None:
    for url in ("memory://", f"sqlite:///{tmp_path}/a.db"):
        async with open_async_ledger(url) as ledger:
            from clear_integrations.ledger import Budget

            await ledger.set_budget("acme", Budget(10_000, window="1d"))
            r = await ledger.reserve("acme/session-1", 500)
            assert await ledger.commit(r, used=320) == 180
            b = await ledger.balance("acme")
            assert (b.spent, b.held, b.remaining) == (320, 0, 9680)
