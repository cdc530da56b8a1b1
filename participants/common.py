"""What every example service shares: its failure-injection options, deterministic ids, tables."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["Options", "create_tables_of", "derived_id", "injected_failure"]


@dataclass(frozen=True)
class Options:
    """The failure-injection knobs a service may consult; each service reads its own."""

    fail_rate: float = 0.0
    out_of_stock: frozenset[str] = frozenset()
    decline_over: int | None = None
    refuse_over: int | None = None
    #: flights, hotels, cars: the cities they have nothing in for a trip
    sold_out: frozenset[str] = frozenset()


def injected_failure(service: str, key: str, rate: float) -> bool:
    """Whether ``--fail-rate`` makes this saga key fail at this service.

    Hashing (rather than random draws) makes reruns and re-sent commands agree, and salting with
    the service name keeps the failing keys of two services independent of each other.
    """
    if rate <= 0.0:
        return False
    digest = hashlib.sha256(f"{service}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


def derived_id(kind: str, key: str) -> str:
    """An id derived from the saga key, so that ids in replies can be checked against the key."""
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"{kind}:{key}"))


async def create_tables_of(connection: AsyncConnection, ddl: str) -> None:
    """Run a service's ``CREATE ... IF NOT EXISTS`` statements (the kit created its schema)."""
    for statement in ddl.split(";"):
        if statement.strip():
            await connection.execute(text(statement))
