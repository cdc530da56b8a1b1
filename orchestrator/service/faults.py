"""Whose fault a failed batch is: the database's (wait for it), a race (try again), or a message's
(find it and set it aside).

PostgreSQL says which in its SQLSTATE: class 22 (data exception: a value it cannot store) and 54
(program limit exceeded: an index row too large) are about what a message carried; class 23
(integrity constraint), 40001, 40P01 and 55P03 mean another transaction got there first, and a
retry sees what it did; classes 08, 53, 57 and 58 and a broken connection mean the database is
not there to ask, and 25 (a read-only standby), 28 (a rotated password), 3D and a missing
privilege, table or column mean it cannot take any batch as deployed: waited for, like an outage,
with /readyz at 503. Anything else (a bug, in a workflow or here) is tried a few times and then
treated as the message's: nothing about one message retries forever.

The REST API asks a narrower question of a failed request, :func:`from_database`: did the database
(or the driver's session with it) fail, whatever the wrapper? SQLAlchemy wraps asyncpg's errors
(``DBAPIError.orig``, the driver's error as its ``__cause__``), and a session killed mid-request
can surface as the error of the rollback after it (asyncpg's ``InternalClientError``, "cannot
switch to state ...; another operation is in progress"), with the first failure as its context:
the whole chain is looked at.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator

__all__ = ["Fault", "classify", "from_database", "links"]


class Fault(enum.Enum):
    #: the database is unreachable or refusing service: retry, without a bound, unready meanwhile
    UNAVAILABLE = "unavailable"
    #: another transaction got there first: retry, and the retry sees the duplicate
    CONFLICT = "conflict"
    #: a value a message carried cannot be stored: split the batch until that message is found
    MESSAGE = "message"
    #: anything else: a few tries, then split and set the failing message aside
    OTHER = "other"


_UNAVAILABLE_CLASSES = {"08", "53", "57", "58", "25", "28", "3D"}
#: the database as deployed cannot take any batch (no privilege, no table: a migration missing)
_UNAVAILABLE_CODES = {"42501", "42P01", "42703", "42883"}


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of a PostgreSQL error, whether asyncpg raised it or SQLAlchemy wrapped it."""
    for candidate in (error, getattr(error, "orig", None), error.__cause__):
        code = getattr(candidate, "sqlstate", None)
        if isinstance(code, str) and len(code) == 5:
            return code
    return None


def classify(error: BaseException) -> Fault:
    code = sqlstate(error)
    if code is not None:
        if code[:2] in _UNAVAILABLE_CLASSES or code in _UNAVAILABLE_CODES:
            return Fault.UNAVAILABLE
        if code[:2] == "23" or code in {"40001", "40P01", "55P03"}:
            return Fault.CONFLICT
        if code[:2] in {"22", "54"}:
            return Fault.MESSAGE
        return Fault.OTHER
    import asyncpg  # the driver's own connection errors carry no SQLSTATE

    if isinstance(error, OSError | TimeoutError | ConnectionError | asyncpg.InterfaceError):
        return Fault.UNAVAILABLE
    return Fault.OTHER


def links(error: BaseException) -> Iterator[BaseException]:
    """The error, what it wraps (``.orig``), and what caused it or was being handled, each once."""
    seen: set[int] = set()
    pending = [error]
    while pending and len(seen) < 32:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for nested in (getattr(current, "orig", None), current.__cause__, current.__context__):
            if isinstance(nested, BaseException):
                pending.append(nested)


def from_database(error: BaseException) -> Fault | None:
    """Whether a request failed in the database, and how: ``None`` when nothing in the error's
    chain came from PostgreSQL, asyncpg or SQLAlchemy's pool or driver layer (a bug here).

    A broken session (asyncpg's ``InterfaceError`` or ``InternalClientError``, SQLSTATE class 08,
    57, XX) is ``UNAVAILABLE``; any other database error is classified by its SQLSTATE."""
    import asyncpg
    from sqlalchemy import exc

    found: Fault | None = None
    for link in links(error):
        if isinstance(link, asyncpg.InternalClientError | asyncpg.InterfaceError | exc.TimeoutError):
            return Fault.UNAVAILABLE
        if isinstance(link, exc.DisconnectionError) or getattr(link, "connection_invalidated", False):
            return Fault.UNAVAILABLE
        code = sqlstate(link)
        if code is not None and code[:2] == "XX":  # internal_error, data_corrupted: the server's own
            return Fault.UNAVAILABLE
        if isinstance(link, asyncpg.PostgresError | exc.DBAPIError) or code is not None:
            fault = classify(link)
            if fault is Fault.UNAVAILABLE:
                return fault
            found = found or fault
        elif isinstance(link, OSError | TimeoutError | ConnectionError):
            return Fault.UNAVAILABLE
    return found
