"""Database errors by SQLSTATE, as the service's fault kinds (:mod:`orchestrator.service.faults`),
without a driver: the in-memory store raises what PostgreSQL would (an inbox conflict as 23505)
and classifies as it does; :mod:`orchestrator.adapters.postgres.faults` adds the driver's own."""

from __future__ import annotations

from orchestrator.service.faults import Fault

__all__ = ["by_sqlstate", "sqlstate"]


#: statement_timeout (or an operator's pg_cancel_backend): the statement took too long, which is
#: the batch's fault (tried a few times, then split), not the database's away
QUERY_CANCELED = "57014"
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


def by_sqlstate(error: BaseException) -> Fault:
    """The fault kind of a database error by its SQLSTATE (an SQL standard code: no driver needed
    to read it), or of a lost connection; anything else is OTHER."""
    code = sqlstate(error)
    if code is not None:
        if code == QUERY_CANCELED:  # statement_timeout: this batch's statement, not the database
            return Fault.OTHER
        if code[:2] in _UNAVAILABLE_CLASSES or code in _UNAVAILABLE_CODES:
            return Fault.UNAVAILABLE
        if code[:2] == "23" or code in {"40001", "40P01", "55P03"}:
            return Fault.CONFLICT
        if code[:2] in {"22", "54"}:
            return Fault.MESSAGE
        return Fault.OTHER
    if isinstance(error, OSError | TimeoutError | ConnectionError):
        return Fault.UNAVAILABLE
    return Fault.OTHER
