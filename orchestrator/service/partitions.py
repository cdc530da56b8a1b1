"""Which replica consumes which partition queue (docs/scaling.md).

Correlated messages are spread over P partition queues by saga. Each partition is consumed by
one live replica at a time, and the replicas hold about P/N each: every replica holds a lock per
partition it owns in the database they all use already (PostgreSQL advisory locks on a
connection of its own, released by PostgreSQL when the replica dies), and every ``interval`` it
counts the live replicas, gives up what it holds beyond its share and takes free partitions up
to it. A share is P/N rounded up, so the shares always cover every partition.

Taking a partition raises its epoch (a row, which survives a database failover where the
advisory locks do not), and every batch checks, under a share lock, that the epochs of its
messages' partitions are still the ones this replica took: the taker waits for the batches in
flight, and a batch taken before a hand-over never commits after it; its messages go back to the
queue, for the new owner, in order. Row locks and the inbox make each message decided once
whoever decides it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Protocol

from orchestrator.service.ports import PartitionLocks, Survey

__all__ = ["PartitionLocks", "PartitionOwner", "Survey", "share_of"]

log = logging.getLogger("orchestrator.partitions")


class PartitionConsumer(Protocol):
    """What the owner drives: the consumer of this replica's queues."""

    def split_prefetch(self, queues: int) -> None:
        """Share the prefetch among this many queues."""

    @property
    def is_connected(self) -> bool: ...

    async def add(self, queue: str) -> None: ...

    async def remove(self, queue: str, timeout: float) -> bool: ...


def share_of(partitions: int, replicas: int) -> int:
    """The most partitions one replica holds: P/N rounded up, so that N shares cover P."""
    return -(-partitions // max(1, replicas))


class PartitionOwner:
    """Keeps this replica's share of the partitions, as a supervised task (:meth:`run`)."""

    def __init__(
        self,
        locks: PartitionLocks,
        consumer: PartitionConsumer,
        queue_of: Callable[[int], str],
        partitions: int,
        interval: float,
        handover_seconds: float = 10.0,
        now: Callable[[], float] = time.monotonic,
        replica_gone: Callable[[], None] = lambda: None,
    ) -> None:
        self.locks = locks
        self.consumer = consumer
        self.queue_of = queue_of
        self.partitions = partitions
        self.interval = interval
        #: how long giving a partition up waits for its messages in hand to be settled
        self.handover_seconds = handover_seconds
        #: a replica without a broker connection this long gives its partitions up to the others
        self.disconnected_grace = max(5.0, 3 * interval)
        self.now = now
        #: called when fewer replicas live than at the last round: one died (its outbox is the
        #: others' now; the relay sweeps at once rather than at its next interval)
        self.replica_gone = replica_gone
        self.owned: set[int] = set()
        #: the epoch this replica took each partition it owns at: its batches' fence
        self.epochs: dict[int, int] = {}
        self.replicas = 0
        self._open = False
        self._disconnected_since: float | None = None

    async def run(self) -> None:
        """Rebalance every ``interval`` until cancelled. When the database is away the locks
        are gone with the connection: the partitions are given up at once (another replica may
        hold them by now) and taken again once it answers."""
        delay = self.interval
        while True:
            try:
                if await self.step():
                    delay = self.interval
            except Exception as error:
                log.warning(
                    "partition ownership lost (%s: %s); giving up %d partitions, trying again in %.1fs",
                    type(error).__name__,
                    error,
                    len(self.owned),
                    delay,
                )
                await self._drop_all()
                delay = min(delay * 2, 5.0)
            await asyncio.sleep(delay)

    async def step(self) -> bool:
        """One round of :meth:`run`: whether it held its share. A replica whose broker connection
        is down holds partitions nobody consumes: past a grace it gives them up, and stops
        counting as a live replica, so that the others' shares grow to take them."""
        if not self.consumer.is_connected:
            if self._disconnected_since is None:
                self._disconnected_since = self.now()
            since = self._disconnected_since
            if self._open and self.now() - since >= self.disconnected_grace:
                log.warning(
                    "no broker connection for %.0fs: giving up %d partitions to the other replicas",
                    self.now() - since,
                    len(self.owned),
                )
                await self._drop_all()
            return False
        self._disconnected_since = None
        if not self._open:
            await self.locks.open()
            self._open = True
        await self.rebalance()
        return True

    async def rebalance(self) -> None:
        """One round: give up what is beyond this replica's share, take free ones up to it."""
        survey = await self.locks.survey()
        for partition in sorted(self.owned - survey.mine):  # not ours any more, somehow
            await self._stop_consuming(partition)
        if 0 < survey.replicas < self.replicas:
            self.replica_gone()
        share = share_of(self.partitions, survey.replicas)
        self.consumer.split_prefetch(share + 1)  # the partitions and the queue of start events
        before, self.replicas = set(self.owned), survey.replicas
        if len(self.owned) > share:
            for partition in random.sample(sorted(self.owned), len(self.owned) - share):
                await self._stop_consuming(partition)
                await self.locks.give_up(partition)
        elif len(self.owned) < share:
            free = [p for p in range(self.partitions) if p not in survey.taken]
            random.shuffle(free)
            for partition in free:
                if len(self.owned) >= share:
                    break
                epoch = await self.locks.take(partition)
                if epoch is not None:
                    self.owned.add(partition)
                    self.epochs[partition] = epoch
                    await self.consumer.add(self.queue_of(partition))
        if self.owned != before:
            log.info(
                "partitions: this replica holds %s (%d replicas, %d partitions)",
                _ranges(self.owned) or "none",
                survey.replicas,
                self.partitions,
            )

    def fence(self, partition: int) -> tuple[int, int]:
        """The fence a batch commits a message of ``partition`` under: the epoch it was taken at,
        0 (never current) once it is given up."""
        return partition, self.epochs.get(partition, 0)

    async def _stop_consuming(self, partition: int, wait: bool = True) -> None:
        self.owned.discard(partition)
        self.epochs.pop(partition, None)
        timeout = self.handover_seconds if wait else 0.0
        if not await self.consumer.remove(self.queue_of(partition), timeout) and wait:
            log.warning(
                "partition %d given up with messages still in hand: they are settled after their"
                " commit, or return to the queue",
                partition,
            )

    async def _drop_all(self) -> None:
        for partition in sorted(self.owned):  # no wait: what is in hand cannot commit now anyway
            await self._stop_consuming(partition, wait=False)
        self._open = False
        await self.locks.close()

    async def close(self) -> None:
        """At the stop, after the consumer stopped: the locks go with the connection."""
        self.owned.clear()
        self.epochs.clear()
        self._open = False
        await self.locks.close()


def _ranges(partitions: set[int]) -> str:
    """``0-3, 7`` for {0, 1, 2, 3, 7}: a log line that stays short with many partitions."""
    runs: list[list[int]] = []
    for partition in sorted(partitions):
        if runs and partition == runs[-1][-1] + 1:
            runs[-1].append(partition)
        else:
            runs.append([partition])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)
