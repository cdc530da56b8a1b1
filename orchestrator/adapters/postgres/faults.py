"""PostgreSQL's errors as the service's fault kinds (:class:`orchestrator.service.faults.Fault`).

PostgreSQL says which in its SQLSTATE: class 22 (data exception: a value it cannot store) and 54
(program limit exceeded: an index row too large) are about what a message carried; class 23
(integrity constraint), 40001, 40P01 and 55P03 mean another transaction got there first, and a
retry sees what it did; classes 08, 53, 57 and 58 and a broken connection mean the database is
not there to ask, and 25 (a read-only standby), 28 (a rotated password), 3D and a missing
privilege, table or column mean it cannot take any batch as deployed: waited for, like an outage,
with /readyz at 503. Anything else (a bug, in a workflow or here) is OTHER.

The REST API asks a narrower question of a failed request, :func:`from_database`: did the database
(or the driver's session with it) fail, whatever the wrapper? SQLAlchemy wraps asyncpg's errors
(``DBAPIError.orig``, the driver's error as its ``__cause__``), and a session killed mid-request
can surface as the error of the rollback after it (asyncpg's ``InternalClientError``, "cannot
switch to state ...; another operation is in progress"), with the first failure as its context:
the whole chain is looked at.
"""

from __future__ import annotations

from orchestrator.adapters.read_only import chain
from orchestrator.adapters.sqlstate import by_sqlstate, sqlstate
from orchestrator.service.faults import Fault

__all__ = ["classify", "from_database", "sqlstate"]


def classify(error: BaseException) -> Fault:
    """By SQLSTATE (:func:`~orchestrator.adapters.sqlstate.by_sqlstate`), and asyncpg's own
    connection errors, which carry none, as the database being away."""
    import asyncpg

    if any(isinstance(link, asyncpg.TargetServerAttributeNotMatched) for link in chain(error)):
        return Fault.UNAVAILABLE  # every host answered, none takes writes: between primaries
    fault = by_sqlstate(error)
    if fault is Fault.OTHER and sqlstate(error) is None:
        if isinstance(error, asyncpg.InterfaceError):
            return Fault.UNAVAILABLE
        if isinstance(error, asyncpg.InternalClientError) and any(
            isinstance(link, asyncpg.InterfaceError | OSError) or by_sqlstate(link) is Fault.UNAVAILABLE
            for link in chain(error)
            if link is not error
        ):  # the rollback after a connection died mid-transaction: about the connection, not the batch
            return Fault.UNAVAILABLE
    return fault


def from_database(error: BaseException) -> Fault | None:
    """Whether a request failed in the database, and how: ``None`` when nothing in the error's
    chain came from PostgreSQL, asyncpg or SQLAlchemy's pool or driver layer (a bug here).

    A broken session (asyncpg's ``InterfaceError`` or ``InternalClientError``, SQLSTATE class 08,
    57, XX) is ``UNAVAILABLE``; any other database error is classified by its SQLSTATE."""
    import asyncpg
    from sqlalchemy import exc

    found: Fault | None = None
    for link in chain(error):
        if isinstance(link, asyncpg.TargetServerAttributeNotMatched):
            return Fault.UNAVAILABLE
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
