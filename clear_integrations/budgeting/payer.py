"""Who pays for a call: one :class:`Payer` type and one resolution order, for every adapter.

A wrapper is built once with a default ``tenant`` (and maybe ``session``) and shared by many users' requests, so
each call resolves its payer when it is made, from the most to the least specific:

1. the call's own names: LangChain ``config["metadata"]`` or ``config["configurable"]`` keys ``clear_tenant`` /
   ``clear_session``; LlamaIndex ``instrument_tags({"clear_tenant": ..., "clear_session": ...})``;
2. :func:`clear_scope` around the call (a ``ContextVar``: it follows asyncio tasks and workflow steps);
3. the wrapper's ``tenant`` and ``session``; a framework convention fills what is still unset: the run's
   ``thread_id`` is the session (LangChain, LangGraph), and, when the wrapper is given a ``tenant_key`` such as
   ``"user_id"``, that value of the run is the tenant.

A layer that names a tenant brings its own session (a session named by a lower layer belonged to another tenant);
one that names only a session keeps the tenant. Ids named on purpose (1, 2, 3) must be valid account ids, or the
call fails with :class:`~clear_integrations.errors.InvalidAccount`; ids taken from a convention (thread and user
ids) are made valid with :func:`account_id`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..errors import InvalidAccount
from ..ledger.accounts import parse_scope

__all__ = ["Names", "Payer", "account_id", "clear_scope", "resolve_payer", "scope_names", "scope_restored"]

_INVALID = re.compile(r"[^A-Za-z0-9._:@-]+")
_MAX = 128


class Names(NamedTuple):
    """A tenant and a session named by one layer (either may be None: not named there)."""

    tenant: str | None = None
    session: str | None = None


@dataclass(frozen=True, slots=True)
class Payer:
    """A tenant and optionally a session; :attr:`scope` is the ledger scope (``tenant`` or ``tenant/session``)."""

    tenant: str
    session: str | None = None

    @property
    def scope(self) -> str:
        return self.tenant if self.session is None else f"{self.tenant}/{self.session}"

    def checked(self, field: str = "tenant") -> Payer:
        """This payer, after checking that its ids are valid account ids, one segment each (:class:`InvalidAccount`
        names ``field``, or ``session``): ``tenant="acme/evil"`` is refused, not read as acme's session."""
        for name, value in ((field, self.tenant), ("session", self.session)):
            if value is None and name == "session":
                continue
            if not isinstance(value, str) or "/" in value:
                raise InvalidAccount(name, value, "must be one account id such as 'acme' (a string without '/')")
            parse_scope(value, name)
        return self


_override: ContextVar[Names | None] = ContextVar("clear_scope", default=None)


@contextmanager
def clear_scope(tenant: str | None = None, session: str | None = None) -> Iterator[Payer | None]:
    """Charge the budgeted calls made in this block (and in tasks started from it) to ``tenant`` / ``session``
    (see the module docstring for the order). Yields the names as a :class:`Payer` when a tenant is named."""
    if tenant is None and session is None:
        raise InvalidAccount("clear_scope", None, "name a tenant, a session or both")
    names = Names(tenant, session)
    if tenant is not None:
        parse_scope(tenant if session is None else f"{tenant}/{session}", "clear_scope")
    elif session is not None:
        parse_scope(f"tenant/{session}", "clear_scope")
    token = _override.set(names)
    try:
        yield None if tenant is None else Payer(tenant, session)
    finally:
        _override.reset(token)


def scope_names() -> Names | None:
    """The names :func:`clear_scope` set for the current context, if any."""
    return _override.get()


@contextmanager
def scope_restored(names: Names | None) -> Iterator[None]:
    """Run a block with :func:`clear_scope`'s names as they were when ``names`` was read (:func:`scope_names`): a
    lazy stream read after its request's block has exited still charges that request's payer."""
    token = _override.set(names)
    try:
        yield
    finally:
        _override.reset(token)


def account_id(value: Any) -> str | None:
    """``value`` as an account id segment: unchanged when valid; otherwise its characters outside
    ``[A-Za-z0-9._:@-]`` become ``_`` and a short hash of the original keeps distinct ids apart (``user/42`` ->
    ``user_42.h`` + 8 hex digits). None and empty values give None."""
    if value is None:
        return None
    text = str(value)
    if not text:
        return None
    if _INVALID.search(text) is None and len(text) <= _MAX:
        return text
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    return f"{_INVALID.sub('_', text)[: _MAX - 10]}.h{digest}"


def resolve_payer(default: Payer, call: Names | None = None, convention: Names | None = None) -> Payer:
    """The payer of a call made now (the order is in the module docstring). ``call``: the names the call itself
    carries; ``convention``: the framework's thread (session) and, if asked for, user (tenant) ids."""
    tenant, session = default.tenant, default.session
    conventional = convention or Names()
    if conventional.tenant is not None:
        tenant, session = conventional.tenant, None
    if session is None:
        session = conventional.session
    for names in (_override.get(), call):
        if names is None:
            continue
        if names.tenant is not None:
            tenant = names.tenant
            session = names.session if names.session is not None else conventional.session
        elif names.session is not None:
            session = names.session
    return Payer(tenant, session)
