"""Partition ownership on PostgreSQL: session-level advisory locks on a connection of its own.

PostgreSQL releases a session's advisory locks when the session ends, however it ends: a replica
killed with SIGKILL loses its partitions as soon as the server sees its socket close, with no
lease to expire and no coordinator of our own. The keys are two 32-bit integers: a class derived
from the namespace (so that namespaces sharing a database keep apart) and the partition number,
or, for the lock that says a replica lives, a random number.
"""

from __future__ import annotations

import contextlib
import secrets
import zlib

import asyncpg

from orchestrator.service.ports import Survey

__all__ = ["PostgresPartitionLocks", "lock_classes"]

#: how long a statement of the ownership connection may take before the connection is taken for
#: lost (its locks then count for nothing here, whatever the server still thinks)
STATEMENT_SECONDS = 10.0

_SURVEY = """
SELECT classid::bigint AS class, objid::bigint AS key, pid = pg_backend_pid() AS mine
FROM pg_locks
WHERE locktype = 'advisory' AND objsubid = 2 AND granted
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND classid::bigint = ANY($1::bigint[])
"""


#: A partition taken: its epoch raised, the fence every batch of the replica that held it before
#: checks (``FOR SHARE``) before it commits. This waits for those in flight to commit.
_RAISE_EPOCH = """
INSERT INTO partition_epochs (namespace, partition, epoch) VALUES ($1, $2, 1)
ON CONFLICT (namespace, partition) DO UPDATE SET epoch = partition_epochs.epoch + 1
RETURNING epoch
"""


def lock_classes(namespace: str) -> tuple[int, int]:
    """The first keys of (partition locks, replica locks) for a namespace: positive 31-bit."""
    return (
        zlib.crc32(f"partitions:{namespace}".encode()) & 0x7FFFFFFF,
        zlib.crc32(f"replicas:{namespace}".encode()) & 0x7FFFFFFF,
    )


class PostgresPartitionLocks:
    def __init__(self, dsn: str, namespace: str) -> None:
        self._dsn = dsn
        self.namespace = namespace
        self.partition_class, self.replica_class = lock_classes(namespace)
        self._connection: asyncpg.Connection | None = None

    async def open(self) -> None:
        await self.close()
        connection = await asyncpg.connect(
            self._dsn, timeout=STATEMENT_SECONDS, command_timeout=STATEMENT_SECONDS
        )
        try:
            while not await connection.fetchval(
                "SELECT pg_try_advisory_lock($1, $2)", self.replica_class, secrets.randbelow(2**31 - 1) + 1
            ):
                pass
        except BaseException:
            await connection.close(timeout=1.0)
            raise
        self._connection = connection

    def _live(self) -> asyncpg.Connection:
        if self._connection is None or self._connection.is_closed():
            raise ConnectionError("the ownership connection is closed")
        return self._connection

    async def survey(self) -> Survey:
        rows = await self._live().fetch(_SURVEY, [self.partition_class, self.replica_class])
        partitions = [r for r in rows if r["class"] == self.partition_class]
        return Survey(
            replicas=sum(1 for r in rows if r["class"] == self.replica_class),
            taken=frozenset(r["key"] for r in partitions),
            mine=frozenset(r["key"] for r in partitions if r["mine"]),
        )

    async def take(self, partition: int) -> int | None:
        connection = self._live()
        if not await connection.fetchval(
            "SELECT pg_try_advisory_lock($1, $2)", self.partition_class, partition
        ):
            return None
        try:  # waits for the batches the last owner is committing: they hold the epoch's row
            epoch: int = await connection.fetchval(_RAISE_EPOCH, self.namespace, partition)
        except BaseException:
            with contextlib.suppress(Exception):
                await connection.fetchval(
                    "SELECT pg_advisory_unlock($1, $2)", self.partition_class, partition
                )
            raise
        return epoch

    async def give_up(self, partition: int) -> None:
        await self._live().fetchval("SELECT pg_advisory_unlock($1, $2)", self.partition_class, partition)

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            with contextlib.suppress(Exception):
                await connection.close(timeout=2.0)
            if not connection.is_closed():
                connection.terminate()
