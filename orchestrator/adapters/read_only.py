"""A session on a server that no longer takes writes (SQLSTATE 25006), replaced rather than retried.

At a failover the old primary may live on as a standby, or an operator may make a server
read-only; a pooled session opened before that answers every write with 25006, and a retry on the
same session would get the same answer for ever. Closing it, and the other sessions of its pool,
sends the next connection through the URL's hosts again, and ``target_session_attrs=read-write``
picks the one that takes writes now. Both the orchestrator and the participant kit use this, so it
needs nothing of the service layer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["READ_ONLY", "chain", "drop_read_only_sessions", "read_only"]

#: read_only_sql_transaction
READ_ONLY = "25006"


def chain(error: BaseException) -> Iterator[BaseException]:
    """The error and what it wraps (``.orig``), was caused by or raised while handling, each once:
    where the driver's error sits in what SQLAlchemy or asyncpg raised."""
    seen: set[int] = set()
    pending = [error]
    while pending and len(seen) < 32:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for nested in (getattr(current, "orig", None), current.__cause__, current.__context__):
            if isinstance(nested, BaseException):
                pending.append(nested)


def read_only(error: BaseException) -> bool:
    """Whether the server refused a write as read-only, anywhere in the error's :func:`chain`."""
    return any(getattr(link, "sqlstate", None) == READ_ONLY for link in chain(error))


def drop_read_only_sessions(engine: AsyncEngine) -> None:
    """Make SQLAlchemy treat a read-only answer as a lost connection: the session is discarded
    with every other one its pool holds, and the next ones are opened anew."""
    from sqlalchemy import event

    def _on_error(context: Any) -> None:
        if read_only(context.original_exception):
            context.is_disconnect = True

    event.listen(engine.sync_engine, "handle_error", _on_error)
