"""Reserve, commit, release, budgets and balances: every behaviour on every backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from clear_integrations.errors import BudgetExceeded, ReservationClosed, UnknownReservation
from clear_integrations.ledger import Budget, Ledger, Usage, open_ledger

from .conftest import Backend, FakeClock


def test_contract_runs_as_written(backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = "sqlite:///budgets.db" if backend.name == "sqlite" else backend.url
    ledger = open_ledger(url, prefix=backend.prefix)
    ledger.set_budget("acme", Budget(tokens=10_000, window="1d"))
    r = ledger.reserve("acme/session-1", 500)
    assert ledger.balance("acme").held == 500
    assert ledger.balance("acme/session-1").held == 500
    assert ledger.commit(r, used=320) == 180
    b = ledger.balance("acme")
    assert (b.spent, b.held, b.remaining) == (320, 0, 9680)
    ledger.close()
    if backend.name == "sqlite":
        assert (tmp_path / "budgets.db").exists()


def test_reserve_holds_on_tenant_and_session(ledger: Ledger) -> None:
    ledger.set_budget("acme", Budget(1000))
    ledger.set_budget("acme/s1", Budget(300))
    r = ledger.reserve("acme/s1", 200)
    assert (r.tokens, r.requested, r.account, r.tenant) == (200, 200, "acme/s1", "acme")
    assert ledger.balance("acme").remaining == 800
    assert ledger.balance("acme/s1").remaining == 100
    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve("acme/s1", 150)
    assert refused.value.account == "acme/s1"
    assert refused.value.requested == 150
    assert refused.value.remaining == {"acme": 800, "acme/s1": 100}
    ledger.reserve("acme/s2", 700)  # another session still draws on the tenant
    with pytest.raises(BudgetExceeded) as tenant_refused:
        ledger.reserve("acme/s2", 101)
    assert tenant_refused.value.account == "acme"
    assert tenant_refused.value.remaining == {"acme": 100}


def test_a_reservation_says_whether_a_hard_budget_bounds_it(ledger: Ledger) -> None:
    assert not ledger.reserve("free/s", 50).limited  # no budget anywhere on the path
    ledger.set_budget("soft", Budget(100, mode="soft"))
    assert not ledger.reserve("soft/s", 50).limited  # a soft budget never bounds a grant
    ledger.set_budget("hard/s", Budget(100))
    bounded = ledger.reserve_up_to("hard/s", 50)
    assert bounded.limited and ledger.reserve("hard", 10).limited is False  # the session's budget, not the tenant's
    ledger.release(bounded)


def test_accounts_without_budget_are_tracked_but_unlimited(ledger: Ledger) -> None:
    r = ledger.reserve("free/s", 10**9)
    b = ledger.balance("free")
    assert (b.limit, b.held, b.remaining, b.over, b.mode) == (None, 10**9, None, 0, None)
    ledger.commit(r, 5)
    assert ledger.balance("free/s").spent == 5
    assert ledger.get_budget("free") is None


def test_commit_returns_unused_and_release_returns_all(ledger: Ledger) -> None:
    ledger.set_budget("acme", Budget(1000))
    a = ledger.reserve("acme", 400)
    b = ledger.reserve("acme", 300)
    assert ledger.commit(a, 100) == 300
    assert ledger.release(b.id) == 300
    bal = ledger.balance("acme")
    assert (bal.spent, bal.held, bal.remaining) == (100, 0, 900)


def test_commit_and_release_are_idempotent(ledger: Ledger) -> None:
    ledger.set_budget("acme", Budget(1000))
    r = ledger.reserve("acme/s", 400)
    assert ledger.commit(r, 100) == 300
    assert ledger.commit(r, 100) == 300
    assert ledger.commit(r.id, 999) == 300  # a retry never charges twice, whatever it says
    assert ledger.balance("acme").spent == 100
    assert ledger.release(r) == 0  # nothing left to give back after a commit
    q = ledger.reserve("acme/s", 50)
    assert ledger.release(q) == 50
    assert ledger.release(q) == 50
    assert ledger.balance("acme").held == 0
    with pytest.raises(ReservationClosed) as closed:
        ledger.commit(q, 10)
    assert (closed.value.reservation_id, closed.value.state) == (q.id, "released")
    assert ledger.balance("acme").spent == 100


def test_unknown_reservations(ledger: Ledger) -> None:
    for rid in ("acme#nope", "no-tenant-marker"):
        with pytest.raises(UnknownReservation) as unknown:
            ledger.commit(rid, 1)
        assert unknown.value.reservation_id == rid
        with pytest.raises(UnknownReservation):
            ledger.release(rid)


def test_reserve_up_to_grants_what_is_left(ledger: Ledger) -> None:
    ledger.set_budget("acme", Budget(1000))
    ledger.set_budget("acme/s", Budget(300))
    r = ledger.reserve_up_to("acme/s", 500)
    assert (r.tokens, r.requested) == (300, 500)
    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve_up_to("acme/s", 500, minimum=10)
    assert refused.value.account == "acme/s"
    assert refused.value.requested == 10
    assert refused.value.remaining == {"acme": 700, "acme/s": 0}
    ledger.commit(r, 250)
    assert ledger.reserve_up_to("acme/s", 500, minimum=50).tokens == 50
    assert ledger.reserve_up_to("acme/other", 2000).tokens == 1000 - 250 - 50


def test_soft_budget_reports_overage(ledger: Ledger) -> None:
    ledger.set_budget("acme", Budget(100, mode="soft"))
    r = ledger.reserve("acme", 150)
    assert r.tokens == 150
    b = ledger.balance("acme")
    assert (b.held, b.remaining, b.over, b.mode) == (150, 0, 50, "soft")
    assert ledger.reserve_up_to("acme", 40).tokens == 40  # soft budgets never shrink a grant
    reserves = [e for e in ledger.events("acme") if e.kind == "reserve"]
    assert [e.over for e in reserves] == [50, 40]
    ledger.commit(r, 150)
    assert ledger.balance("acme").over == 90


def test_usage_above_the_reservation_is_charged_in_full(ledger: Ledger) -> None:
    ledger.set_budget("acme", Budget(120))
    r = ledger.reserve("acme/s", 100)
    assert ledger.commit(r, 150) == 0
    b = ledger.balance("acme")
    assert (b.spent, b.held, b.remaining, b.over) == (150, 0, 0, 30)
    commit = ledger.events("acme")[-1]
    assert (commit.kind, commit.tokens, commit.returned, commit.over) == ("commit", 150, 0, 50)
    with pytest.raises(BudgetExceeded):
        ledger.reserve("acme", 1)


def test_usage_details_are_recorded(ledger: Ledger, clock: FakeClock) -> None:
    r = ledger.reserve("acme/s1", 100)
    returned = ledger.commit(r, Usage(prompt=10, completion=30, reasoning=20, estimated=True))
    assert returned == 60
    ledger.commit(ledger.reserve("acme/s2", 100), 50)
    start = clock.now
    clock.advance(10)
    ledger.commit(ledger.reserve("acme/s2", 100), Usage(prompt=1, completion=2))
    tenant = ledger.usage("acme")
    assert (tenant.prompt, tenant.completion, tenant.reasoning, tenant.total) == (11, 32, 20, 93)
    assert (tenant.calls, tenant.estimated_calls) == (3, 1)
    assert ledger.usage("acme/s2").total == 53
    assert ledger.usage("acme/s1").estimated_calls == 1
    assert ledger.usage("acme", since=start + 5).total == 3
    from datetime import UTC, datetime

    assert ledger.usage("acme", since=datetime.fromtimestamp(start + 5, UTC)).calls == 1
    assert ledger.usage("nobody").calls == 0


def test_reset_zeroes_spent_and_usage_but_not_held(ledger: Ledger) -> None:
    ledger.set_budget("acme", Budget(1000))
    ledger.commit(ledger.reserve("acme", 300), 200)
    open_reservation = ledger.reserve("acme", 100)
    ledger.reset("acme")
    b = ledger.balance("acme")
    assert (b.spent, b.held, b.remaining) == (0, 100, 900)
    assert ledger.usage("acme").total == 0
    ledger.commit(open_reservation, 40)
    assert ledger.usage("acme").total == 40
    assert ledger.balance("acme").spent == 40


def test_budgets_set_get_remove(ledger: Ledger) -> None:
    budget = Budget(500, window="1h", mode="soft")
    ledger.set_budget("acme/s", budget)
    assert ledger.get_budget("acme/s") == budget
    ledger.commit(ledger.reserve("acme/s", 100), 80)
    ledger.set_budget("acme/s", Budget(90))
    assert ledger.balance("acme/s").spent == 80  # changing a budget never forgets usage
    ledger.remove_budget("acme/s")
    assert ledger.get_budget("acme/s") is None
    assert ledger.reserve("acme/s", 10_000).tokens == 10_000
    kinds = [e.kind for e in ledger.events("acme/s") if e.kind.endswith("budget")]
    assert kinds == ["set_budget", "set_budget", "remove_budget"]


def test_apply_budgets_sets_only_changes(ledger: Ledger) -> None:
    budgets = {"acme": Budget(100, "1d"), "acme/batch": Budget(20, mode="soft")}
    assert ledger.apply_budgets(budgets) == 2
    assert ledger.apply_budgets(budgets) == 0
    assert ledger.get_budget("acme/batch") == Budget(20, mode="soft")


def test_state_slot_compare_and_set(ledger: Ledger) -> None:
    assert ledger.get_state("default") == (None, 0)
    assert ledger.set_state("default", {"price": 0.5, "n": 1}, expected_version=0)
    assert not ledger.set_state("default", {"price": 9.0}, expected_version=0)
    assert ledger.get_state() == ({"n": 1, "price": 0.5}, 1)
    assert ledger.set_state("default", {"price": 0.25, "history": [1, 2]}, expected_version=1)
    assert ledger.get_state("default") == ({"price": 0.25, "history": [1, 2]}, 2)
    assert ledger.get_state("other") == (None, 0)


def test_events_are_an_audit_log(ledger: Ledger, clock: FakeClock) -> None:
    ledger.set_budget("acme", Budget(1000))
    r = ledger.reserve("acme/s", 100)
    clock.advance(1)
    ledger.commit(r, 60)
    q = ledger.reserve("beta", 10)
    clock.advance(1)
    ledger.release(q)
    every = ledger.events()
    assert [e.kind for e in every] == ["set_budget", "reserve", "commit", "reserve", "release"]
    assert [e.ts for e in every] == sorted(e.ts for e in every)
    assert every[1].reservation_id == r.id
    assert every[2].reservation_id == r.id
    assert (every[2].tokens, every[2].returned, every[2].late) == (60, 40, False)
    assert [e.kind for e in ledger.events("acme")] == ["set_budget", "reserve", "commit"]
    assert [e.kind for e in ledger.events("acme/s")] == ["reserve", "commit"]
    assert [e.kind for e in ledger.events(since=clock.now - 1)] == ["commit", "reserve", "release"]
    assert [e.kind for e in ledger.events(limit=2)] == ["reserve", "release"]
    assert ledger.events(limit=0) == []
    assert every[0].note == "window=- mode=hard"


def test_ledger_reopened_keeps_everything(backend: Backend, clock: FakeClock) -> None:
    first = backend.open(clock)
    first.set_budget("acme", Budget(1000, "1d"))
    r = first.reserve("acme/s", 100)
    first.commit(r, 70)
    first.close()
    again = backend.open(clock)
    assert again.get_budget("acme") == Budget(1000, "1d")
    assert again.balance("acme").spent == 70
    assert again.commit(r, 70) == 30  # idempotent across reopen
    assert again.usage("acme/s").total == 70


def test_a_retried_store_step_never_holds_twice(ledger: Ledger, clock: FakeClock) -> None:
    from clear_integrations.ledger.accounts import parse_scope

    scope = parse_scope("acme/s")
    first = ledger.store.reserve(scope, 100, None, 300.0, "acme#retry-1", clock.now)
    again = ledger.store.reserve(scope, 100, None, 300.0, "acme#retry-1", clock.now + 1)
    assert again == first
    assert ledger.balance("acme").held == 100
    assert ledger.commit("acme#retry-1", 60) == 40
