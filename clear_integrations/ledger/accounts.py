"""Account identifiers: ``tenant`` or ``tenant/session``, and pool names.

Each segment is 1-128 characters of ``[A-Za-z0-9._:@-]``. A reservation on ``tenant/session`` holds its
tokens on both accounts of the path; the tenant is also the unit of atomicity (one Redis hash slot).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidAccount, UnknownReservation

__all__ = ["MAX_DEPTH", "Scope", "check_pool", "new_reservation_id", "parse_scope", "tenant_of_reservation"]

#: Most segments an account id may have (``tenant/session``).
MAX_DEPTH = 2

_SEGMENT = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
_RESERVATION_SEPARATOR = "#"


@dataclass(frozen=True, slots=True)
class Scope:
    """A parsed account id: ``name`` (``acme/s1``), its ``tenant`` (``acme``) and ``path`` (``acme``, ``acme/s1``)."""

    name: str
    tenant: str
    path: tuple[str, ...]

    @property
    def session(self) -> str | None:
        """The session segment, or None for a tenant account."""
        return self.name.partition("/")[2] or None


_CACHE: dict[str, Scope] = {}


def parse_scope(value: Any, field: str = "account") -> Scope:
    """Parse and validate an account id; raises :class:`InvalidAccount` naming ``field``."""
    if type(value) is str:
        cached = _CACHE.get(value)
        if cached is not None:
            return cached
    if not isinstance(value, str):
        raise InvalidAccount(field, value, "must be a string such as 'acme' or 'acme/session-1'")
    segments = value.split("/")
    if len(segments) > MAX_DEPTH:
        raise InvalidAccount(field, value, f"must have at most {MAX_DEPTH} segments: 'tenant' or 'tenant/session'")
    for segment in segments:
        if _SEGMENT.fullmatch(segment) is None:
            raise InvalidAccount(field, value, "each segment must be 1-128 characters of [A-Za-z0-9._:@-]")
    path = tuple("/".join(segments[: i + 1]) for i in range(len(segments)))
    scope = Scope(value, segments[0], path)
    if len(_CACHE) < 100_000:
        _CACHE[value] = scope
    return scope


def check_pool(value: Any, field: str = "pool") -> str:
    """Validate a pool name (one segment); raises :class:`InvalidAccount` naming ``field``."""
    if not isinstance(value, str) or _SEGMENT.fullmatch(value) is None:
        raise InvalidAccount(field, value, "must be 1-128 characters of [A-Za-z0-9._:@-]")
    return value


def new_reservation_id(tenant: str, unique: str) -> str:
    """A reservation id that names its tenant, so that any backend can find it from the id alone."""
    return f"{tenant}{_RESERVATION_SEPARATOR}{unique}"


def tenant_of_reservation(reservation_id: str) -> str:
    """The tenant encoded in a reservation id; :class:`UnknownReservation` when the id is not one of ours."""
    tenant, separator, unique = reservation_id.rpartition(_RESERVATION_SEPARATOR)
    if not separator or not unique or (tenant not in _CACHE and _SEGMENT.fullmatch(tenant) is None):
        raise UnknownReservation(reservation_id)
    return tenant
