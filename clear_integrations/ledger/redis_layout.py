"""The Redis key layout, Lua script sources and reply decoding, shared by the sync and async Redis stores.

Pure: no Redis import. Keys (``P`` is the prefix, default ``clear:``; ``{tenant}`` is a hash tag, so one
tenant's keys share a Redis Cluster slot and every per-tenant script is atomic there too)::

    P{tenant}:acct     hash  <account>|lim|mode|win|wtx|ws|sp|hd|rs (limit, mode, window seconds and
                             text, window start, spent, held, seq of the last reset); '#seq' the event counter
    P{tenant}:res      hash  reservation id -> JSON [state, scope, tokens, requested, created, expires,
                             charged, returned, late, closed]
    P{tenant}:lease    zset  held reservation ids scored by lease expiry
    P{tenant}:events   list  JSON events [seq, ts, kind, account, rid, tokens, returned, prompt,
                             completion, reasoning, estimated, late, over, note]
    P{pool:<name>}:state hash value (JSON), version, writer (the id of the last write, for a retried swap)
    P{#ledger}:marker    string written with the first budget (the time): see redis_support.DataGuard

Closed reservations stay in ``P{tenant}:res`` for the retention period (idempotent retries), then the
``expire()`` sweep purges them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any

from ..errors import BudgetExceeded, InvalidInput, ReservationClosed, UnknownReservation
from . import core
from .accounts import Scope
from .model import Balance, Budget, Event, Reservation, UsageTotals

__all__ = ["SCRIPTS", "RedisLayout", "decode_event", "script_source"]

#: The per-tenant scripts (``lua/<name>.lua`` after ``lua/common.lua``), plus ``set_state``.
SCRIPTS = ("reserve", "commit", "release", "balance", "set_budget", "reset", "expire", "purge", "set_state")


@cache
def script_source(name: str) -> str:
    """The Lua source of a script (the common prelude first, except for ``set_state``)."""
    folder = resources.files(__package__).joinpath("lua")
    body = folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    if name == "set_state":
        return body
    return folder.joinpath("common.lua").read_text(encoding="utf-8") + "\n" + body


def decode_event(raw: str) -> Event:
    """An :class:`Event` from its JSON form in a tenant's event list."""
    return core.event_from_row(json.loads(raw))


class RedisLayout:
    """Key names and script arguments for one prefix; decodes script replies into results or errors."""

    def __init__(self, prefix: str) -> None:
        if not isinstance(prefix, str) or "{" in prefix or "}" in prefix:
            raise InvalidInput("prefix", prefix, "must be a string without '{' or '}' (they delimit hash tags)")
        self.prefix = prefix
        self._keys: dict[str, list[str]] = {}

    def tenant_keys(self, tenant: str) -> list[str]:
        """KEYS of every per-tenant script: acct, res, lease, events."""
        keys = self._keys.get(tenant)
        if keys is None:
            base = f"{self.prefix}{{{tenant}}}:"
            keys = [base + "acct", base + "res", base + "lease", base + "events"]
            if len(self._keys) < 100_000:
                self._keys[tenant] = keys
        return keys

    def state_key(self, pool: str) -> str:
        """The key of a pool's state slot."""
        return f"{self.prefix}{{pool:{pool}}}:state"

    def marker_key(self) -> str:
        """The key written with the first budget (``'#'`` is in no tenant name): its absence tells a store that
        has seen it that the server lost the ledger's data (see :class:`.redis_support.DataGuard`)."""
        return f"{self.prefix}{{#ledger}}:marker"

    def account_pattern(self) -> str:
        """A SCAN pattern matching every tenant's accounts hash."""
        escaped = "".join("\\" + c if c in "*?[]\\" else c for c in self.prefix)
        return escaped + "{*}:acct"

    def tenant_of_key(self, key: str) -> str:
        """The tenant of a ``P{tenant}:acct`` key."""
        return key[len(self.prefix) + 1 : -len("}:acct")]

    # ------------------------------------------------------------ arguments

    @staticmethod
    def budget_args(scope: Scope, budget: Budget | None, now: float) -> list[Any]:
        """ARGV of ``set_budget``."""
        if budget is None:
            return [repr(now), scope.name, "", "", "0", ""]
        return [repr(now), scope.name, str(budget.tokens), budget.mode, str(budget.window_seconds), budget.window or ""]

    @staticmethod
    def budget_fields(scope: Scope) -> list[str]:
        """HMGET fields of a budget."""
        return [f"{scope.name}|lim", f"{scope.name}|mode", f"{scope.name}|wtx"]

    # ------------------------------------------------------------ replies

    @staticmethod
    def budget(reply: list[Any]) -> Budget | None:
        """Decode ``budget_fields``."""
        limit, mode, window = reply
        return None if limit is None else Budget(int(limit), window or None, mode)

    @staticmethod
    def reservation(
        reply: list[Any], rid: str, scope: Scope, tokens: int, minimum: int | None, now: float, expires: float
    ) -> Reservation:
        """The :class:`Reservation` of a ``reserve`` reply (the first one's for a retry), or :class:`BudgetExceeded`."""
        if int(reply[0]) == 1:
            if len(reply) > 3:  # the reservation existed: a retried call
                tokens, now, expires = int(reply[3]), float(reply[4]), float(reply[5])
            return Reservation(rid, scope.name, int(reply[1]), tokens, now, expires, int(reply[2]) == 1)
        pairs = reply[2:]
        remaining = {str(pairs[i]): int(pairs[i + 1]) for i in range(0, len(pairs), 2)}
        raise BudgetExceeded(str(reply[1]), tokens if minimum is None else minimum, remaining)

    @staticmethod
    def settled(reply: list[Any], rid: str) -> int:
        """The returned tokens of a ``commit``/``release`` reply, or the error it names."""
        status = int(reply[0])
        if status == 1:
            return int(reply[1])
        if status == -1:
            raise UnknownReservation(rid)
        raise ReservationClosed(rid, str(reply[1]))

    @staticmethod
    def balance(scope: Scope, reply: list[Any]) -> Balance:
        """Decode a ``balance`` reply."""
        limit, mode, window, start, spent, held = reply
        state = core.AccountState(scope.name, int(limit) if limit != "" else None, mode, None, int(window))
        state.window_start, state.spent, state.held = int(start), int(spent), int(held)
        return core.make_balance(state)

    @staticmethod
    def usage(scope: Scope, reset_seq: Any, raws: Sequence[Any], since: float | None) -> UsageTotals:
        """Usage totals from a tenant's raw events and the account's reset seq."""
        rows = ((row[0], float(row[1]), *row[2:]) for row in map(json.loads, raws))  # ts is kept as text
        return core.usage_from_events(rows, scope.name, int(reset_seq or 0), since)

    @staticmethod
    def purgeable(entries: Mapping[str, str], horizon: float) -> list[str]:
        """Ids of closed reservations (from HSCAN of the reservations hash) closed before ``horizon``."""
        stale = []
        for rid, raw in entries.items():
            record = json.loads(raw)
            if record[0] != "held" and record[9] != "" and float(record[9]) < horizon:
                stale.append(rid)
        return stale

    @staticmethod
    def select_events(
        tenants: Mapping[str, Sequence[Any]], scope: Scope | None, since: float | None, limit: int | None
    ) -> list[Event]:
        """Decode, filter and order (by time, then tenant, then seq) the events of several tenants."""
        found = [
            event
            for raws in tenants.values()
            for event in (decode_event(raw) for raw in raws)
            if (scope is None or core.matches(event.account, scope.name)) and (since is None or event.ts >= since)
        ]
        found.sort(key=lambda event: (event.ts, event.tenant, event.seq))
        if limit is not None:
            found = found[len(found) - limit :] if limit else []
        return found

    @staticmethod
    def state(reply: list[Any]) -> tuple[dict[str, Any] | None, int]:
        """Decode a state slot ``[value, version]``."""
        value, version = reply
        return (None if value is None else json.loads(value)), int(version or 0)
