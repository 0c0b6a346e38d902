"""Who pays: one Payer type and one resolution order (budgeting.payer), and ids made valid when a framework hands
over thread and user ids."""

from __future__ import annotations

import asyncio

import pytest

from clear_integrations.budgeting import Names, Payer, account_id, clear_scope, resolve_payer
from clear_integrations.errors import InvalidAccount
from clear_integrations.ledger.accounts import parse_scope

DEFAULT = Payer("acme", "s0")


def test_the_defaults_pay_when_nothing_names_another() -> None:
    assert resolve_payer(DEFAULT) == DEFAULT
    assert resolve_payer(Payer("acme")).scope == "acme"


def test_the_order_is_the_call_then_clear_scope_then_the_defaults() -> None:
    with clear_scope(tenant="beta", session="s1"):
        assert resolve_payer(DEFAULT) == Payer("beta", "s1")
        assert resolve_payer(DEFAULT, call=Names("gamma")) == Payer("gamma")  # another tenant: its own session
        assert resolve_payer(DEFAULT, call=Names(session="s2")) == Payer("beta", "s2")  # a session only: same tenant
    with clear_scope(session="s3"):
        assert resolve_payer(DEFAULT) == Payer("acme", "s3")


def test_conventions_fill_what_is_left_unset() -> None:
    thread = Names(session="thread-1")
    assert resolve_payer(Payer("acme"), convention=thread) == Payer("acme", "thread-1")
    assert resolve_payer(DEFAULT, convention=thread) == DEFAULT  # the wrapper's own session is more specific
    with clear_scope(tenant="beta"):
        assert resolve_payer(DEFAULT, convention=thread) == Payer("beta", "thread-1")
    user = Names("user-7", "thread-1")  # tenant_key="user_id": the user is the tenant
    assert resolve_payer(DEFAULT, convention=user) == Payer("user-7", "thread-1")


def test_clear_scope_follows_tasks_and_is_gone_after_its_block() -> None:
    async def inside() -> Payer:
        return resolve_payer(DEFAULT)

    async def main() -> tuple[Payer, Payer]:
        with clear_scope(tenant="beta"):
            task = asyncio.ensure_future(inside())  # a task started inside the block keeps it
        return await task, await inside()

    assert asyncio.run(main()) == (Payer("beta"), DEFAULT)


def test_framework_ids_are_made_valid_and_stay_distinct() -> None:
    assert account_id("thread-1") == "thread-1" and account_id(None) is None and account_id("") is None
    made = [account_id(raw) for raw in ("user/42", "user 42", "user_42", "x" * 300, 42)]
    assert made[2] == "user_42" and made[4] == "42"
    assert len(set(made)) == len(made)
    for value in made:
        assert value is not None and parse_scope(f"acme/{value}").session == value


def test_named_ids_are_checked_not_rewritten() -> None:
    with pytest.raises(InvalidAccount, match="clear_scope"), clear_scope(tenant="not/valid/at/all"):
        pass
    with pytest.raises(InvalidAccount, match="clear_scope"), clear_scope():
        pass
    with pytest.raises(InvalidAccount):
        Payer("acme", "two words").checked()


def test_a_tenant_is_one_id_not_a_path() -> None:
    with pytest.raises(InvalidAccount, match="tenant"):
        Payer("acme/evil").checked()  # refused, not read as acme's session "evil"
    with pytest.raises(InvalidAccount, match="tenant"):
        Payer(None, "s1").checked()  # type: ignore[arg-type]
    with pytest.raises(InvalidAccount, match="session"):
        Payer("acme", "a/b").checked()
    assert Payer("acme", "s1").checked().scope == "acme/s1"
