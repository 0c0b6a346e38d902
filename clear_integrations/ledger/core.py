"""The pure state machine of budgets and reservations, shared by the sync and async ledgers (no I/O).

It is written once against the small :class:`Txn` protocol. The memory and SQLite stores run it inside
their atomic step (a lock, a ``BEGIN IMMEDIATE`` transaction); the Redis store runs the same rules as Lua
scripts (``lua/*.lua``), and one parametrised test suite holds all three to the same behaviour.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ..errors import BudgetExceeded, LedgerError, ReservationClosed, UnknownReservation
from .accounts import Scope, parse_scope
from .checks import Charge
from .model import Balance, Budget, Event, EventKind, Reservation, UsageTotals
from .windows import window_bounds

__all__ = [
    "AccountState",
    "EventRow",
    "ReservationRecord",
    "Txn",
    "balance",
    "commit",
    "event_from_row",
    "event_kind",
    "expire_due",
    "make_balance",
    "matches",
    "release",
    "reserve",
    "reset",
    "set_budget",
    "usage_from_events",
]

# ---------------------------------------------------------------- state


#: An event as the stores keep it: the fields of :class:`Event`, in order. Building a tuple is several times
#: cheaper than a frozen dataclass; stores make :class:`Event` objects only when the log is read.
EventRow = tuple[int, float, str, str, str | None, int, int, int, int, int, bool, bool, int, str]


def _row(
    seq: int, now: float, kind: str, account: str, rid: str | None = None, tokens: int = 0, note: str = ""
) -> EventRow:
    return (seq, now, kind, account, rid, tokens, 0, 0, 0, 0, False, False, 0, note)


def event_from_row(row: Sequence[Any]) -> Event:
    """An :class:`Event` from a stored row (checking its kind; flags and counts normalised)."""
    seq, ts, kind, account, rid, tokens, returned, prompt, completion, reasoning, estimated, late, over, note = row
    return Event(
        int(seq), float(ts), event_kind(kind), account, rid or None, int(tokens), int(returned), int(prompt),
        int(completion), int(reasoning), bool(estimated), bool(late), int(over), note,
    )  # fmt: skip


@dataclass(slots=True)
class AccountState:
    """One account's counters as a store keeps them. ``limit`` None: no budget (tracked, unlimited)."""

    name: str
    limit: int | None = None
    mode: Literal["hard", "soft"] = "hard"
    window: str | None = None
    window_seconds: int = 0
    window_start: int = 0
    spent: int = 0
    held: int = 0
    reset_seq: int = 0

    def roll(self, now: float) -> None:
        """Start a new window (spent back to 0) when ``now`` has left the stored one."""
        if self.window_seconds:
            start = math.floor(now / self.window_seconds) * self.window_seconds
            if start != self.window_start:
                self.window_start = start
                self.spent = 0

    def left(self) -> int:
        """Tokens still grantable under the limit (0 when over); only meaningful with a limit."""
        return max(0, (self.limit or 0) - self.spent - self.held)

    def budget(self) -> Budget | None:
        """The account's budget, or None."""
        return None if self.limit is None else Budget(self.limit, self.window, self.mode)


@dataclass(slots=True)
class ReservationRecord:
    """A reservation as a store keeps it; ``state`` is held, committed, released or expired."""

    id: str
    scope: str
    tokens: int
    requested: int
    state: Literal["held", "committed", "released", "expired"]
    created: float
    expires: float
    charged: int = 0
    returned: int = 0
    late: bool = False
    closed: float = 0.0


class Txn(Protocol):
    """What the core needs from a store inside one atomic step."""

    def account(self, name: str) -> AccountState:
        """The account's state (a fresh one if unknown); changes are saved when the step ends."""
        ...

    def reservation(self, rid: str) -> ReservationRecord | None:
        """The reservation with this id, or None."""
        ...

    def save_reservation(self, record: ReservationRecord) -> None:
        """Insert or update a reservation."""
        ...

    def due(self, tenant: str, now: float) -> list[ReservationRecord]:
        """The tenant's held reservations whose lease ran out (``expires <= now``)."""
        ...

    def next_seq(self) -> int:
        """The sequence number of the next event."""
        ...

    def append(self, row: EventRow) -> None:
        """Append an event (as a row, see :data:`EventRow`) to the log."""
        ...


def expire_due(txn: Txn, tenant: str, now: float) -> int:
    """Release every reservation of ``tenant`` whose lease ran out; returns how many."""
    count = 0
    for record in txn.due(tenant, now):
        for name in parse_scope(record.scope).path:
            txn.account(name).held -= record.tokens
        record.state = "expired"
        record.returned = record.tokens
        record.closed = now
        txn.save_reservation(record)
        txn.append(_row(txn.next_seq(), now, "expire", record.scope, record.id, record.tokens))
        count += 1
    return count


def reserve(
    txn: Txn, scope: Scope, tokens: int, minimum: int | None, lease: float, rid: str, now: float
) -> Reservation:
    """Hold ``tokens`` (or, with ``minimum``, up to ``tokens`` but at least ``minimum``) on every account of
    the path, or raise :class:`BudgetExceeded` with what remains on each budgeted account.

    Idempotent by ``rid``: a retried step (a reply lost on the way back) returns the same reservation.
    """
    existing = txn.reservation(rid)
    if existing is not None:
        limited = any(_hard(txn.account(name)) for name in parse_scope(existing.scope).path)
        return Reservation(
            rid, existing.scope, existing.tokens, existing.requested, existing.created, existing.expires, limited
        )
    expire_due(txn, scope.tenant, now)
    accounts = [txn.account(name) for name in scope.path]
    grant, short = tokens, False
    for account in accounts:
        if account.window_seconds:
            account.roll(now)
        if account.limit is not None and account.mode == "hard":
            left = account.limit - account.spent - account.held
            if left < grant:
                grant, short = (left if left > 0 else 0), True
    if short:
        if minimum is None or grant < minimum:
            raise _refusal(accounts, tokens, minimum)
    else:
        grant = tokens
    over = 0
    for account in accounts:
        if account.limit is not None and account.mode == "soft":
            beyond = account.spent + account.held + grant - account.limit
            over = max(over, min(grant, beyond))
        account.held += grant
    expires = now + lease
    txn.save_reservation(ReservationRecord(rid, scope.name, grant, tokens, "held", now, expires))
    txn.append((txn.next_seq(), now, "reserve", scope.name, rid, grant, 0, 0, 0, 0, False, False, over, ""))
    return Reservation(rid, scope.name, grant, tokens, now, expires, any(_hard(a) for a in accounts))


def _hard(account: AccountState) -> bool:
    return account.limit is not None and account.mode == "hard"


def _refusal(accounts: list[AccountState], tokens: int, minimum: int | None) -> BudgetExceeded:
    """The error of a refused reservation: the refusing account and what every budgeted account has left."""
    remaining = {account.name: account.left() for account in accounts if account.limit is not None}
    hard = [account for account in accounts if account.limit is not None and account.mode == "hard"]
    if minimum is None:
        refused = next(account for account in hard if account.left() < tokens)
        return BudgetExceeded(refused.name, tokens, remaining)
    tightest = min(hard, key=lambda account: account.left())
    return BudgetExceeded(tightest.name, minimum, remaining)


def _record(txn: Txn, rid: str, now: float) -> ReservationRecord:
    expire_due(txn, rid.rpartition("#")[0], now)  # ids were checked by the ledger (checks.reservation_id)
    record = txn.reservation(rid)
    if record is None:
        raise UnknownReservation(rid)
    return record


def commit(txn: Txn, rid: str, charge: Charge, now: float) -> int:
    """Settle a reservation: charge ``charge.total`` in full, give back the unused part (returned).

    Idempotent: committing a committed reservation returns the first result and charges nothing. After
    a release: :class:`ReservationClosed`. After the lease expired: the usage is still charged (the tokens
    were spent), nothing is given back (the expiry already did), and the event is marked ``late``.
    """
    record = _record(txn, rid, now)
    if record.state == "committed":
        return record.returned
    if record.state == "released":
        raise ReservationClosed(rid, "released")
    late = record.state == "expired"
    reserved = 0 if late else record.tokens
    returned = reserved - charge.total if reserved > charge.total else 0
    for name in parse_scope(record.scope).path:
        account = txn.account(name)
        if account.window_seconds:
            account.roll(now)
        account.held -= reserved
        account.spent += charge.total
    record.state = "committed"
    record.charged = charge.total
    record.returned = returned
    record.late = late
    record.closed = now
    txn.save_reservation(record)
    over = charge.total - record.tokens if charge.total > record.tokens else 0
    details = (charge.prompt, charge.completion, charge.reasoning, charge.estimated, late, over, "")
    txn.append((txn.next_seq(), now, "commit", record.scope, rid, charge.total, returned, *details))
    return returned


def release(txn: Txn, rid: str, now: float) -> int:
    """Give back all the tokens of a held reservation; idempotent (a second release returns the same).

    Releasing a committed or expired reservation gives back nothing and returns 0.
    """
    record = _record(txn, rid, now)
    if record.state != "held":
        return record.returned if record.state == "released" else 0
    for name in parse_scope(record.scope).path:
        txn.account(name).held -= record.tokens
    record.state = "released"
    record.returned = record.tokens
    record.closed = now
    txn.save_reservation(record)
    txn.append(_row(txn.next_seq(), now, "release", record.scope, rid, record.tokens))
    return record.tokens


def set_budget(txn: Txn, scope: Scope, budget: Budget | None, now: float) -> None:
    """Set (or with None remove) an account's budget. Usage so far is kept and counts in the current window."""
    account = txn.account(scope.name)
    account.roll(now)
    if budget is None:
        account.limit = None
        account.mode = "hard"
        account.window = None
        account.window_seconds = account.window_start = 0
        txn.append(_row(txn.next_seq(), now, "remove_budget", scope.name))
        return
    seconds = budget.window_seconds
    account.limit = budget.tokens
    account.mode = budget.mode
    account.window = budget.window
    account.window_seconds = seconds
    account.window_start = window_bounds(seconds, now)[0] if seconds else 0
    note = f"window={budget.window or '-'} mode={budget.mode}"
    txn.append(_row(txn.next_seq(), now, "set_budget", scope.name, None, budget.tokens, note))


def reset(txn: Txn, scope: Scope, now: float) -> None:
    """Zero an account's spent tokens and start its usage totals afresh (held tokens are untouched)."""
    account = txn.account(scope.name)
    account.roll(now)
    account.spent = 0
    seq = txn.next_seq()
    account.reset_seq = seq
    txn.append(_row(seq, now, "reset", scope.name))


def balance(txn: Txn, scope: Scope, now: float) -> Balance:
    """The account's balance after expiring due leases and rolling its window."""
    expire_due(txn, scope.tenant, now)
    account = txn.account(scope.name)
    account.roll(now)
    return make_balance(account)


def make_balance(account: AccountState) -> Balance:
    """A :class:`Balance` from stored counters (already rolled to the current window)."""
    used = account.spent + account.held
    start: float | None = None
    end: float | None = None
    if account.window_seconds:
        start, end = account.window_start, account.window_start + account.window_seconds
    if account.limit is None:
        return Balance(account.name, None, account.spent, account.held, None, 0, start, end, None)
    remaining, over = max(0, account.limit - used), max(0, used - account.limit)
    return Balance(account.name, account.limit, account.spent, account.held, remaining, over, start, end, account.mode)


def matches(event_account: str, account: str) -> bool:
    """Whether an event on ``event_account`` concerns ``account`` (itself or a session under it)."""
    return event_account == account or event_account.startswith(account + "/")


def usage_from_events(rows: Iterable[Sequence[Any]], account: str, reset_seq: int, since: float | None) -> UsageTotals:
    """Sum the commits of ``account`` (and its sessions) after its last reset and at or after ``since``.

    ``rows`` are event rows (:data:`EventRow` order) or :class:`Event` objects' fields.
    """
    prompt = completion = reasoning = total = calls = estimated = 0
    for row in rows:
        if row[2] != "commit" or row[0] <= reset_seq or not matches(row[3], account):
            continue
        if since is not None and row[1] < since:
            continue
        total += row[5]
        prompt += row[7]
        completion += row[8]
        reasoning += row[9]
        estimated += bool(row[10])
        calls += 1
    return UsageTotals(prompt, completion, reasoning, total, calls, estimated)


def event_kind(value: str) -> EventKind:
    """Check a stored event kind."""
    if value not in ("reserve", "commit", "release", "expire", "set_budget", "remove_budget", "reset"):
        raise LedgerError(f"the store holds an event of unknown kind {value!r}")
    return value  # type: ignore[return-value]
