"""Partition ownership converges: every partition held by exactly one replica, about P/N each,
as replicas come and go (orchestrator.service.partitions), against a fake of the lock table."""

from __future__ import annotations

import pytest

from orchestrator.service.partitions import PartitionOwner, Survey, share_of


class LockTable:
    """What PostgreSQL's advisory locks are to the replicas: one holder per partition, and a
    replica's locks gone when it dies."""

    def __init__(self) -> None:
        self.holders: dict[int, int] = {}
        self.replicas: set[int] = set()
        #: each partition's epoch, raised by every take (a row in PostgreSQL)
        self.epochs: dict[int, int] = {}


class FakeLocks:
    def __init__(self, table: LockTable, replica: int) -> None:
        self.table = table
        self.replica = replica

    async def open(self) -> None:
        self.table.replicas.add(self.replica)

    async def survey(self) -> Survey:
        if self.replica not in self.table.replicas:
            raise ConnectionError("the ownership connection is closed")
        holders = self.table.holders
        return Survey(
            replicas=len(self.table.replicas),
            taken=frozenset(holders),
            mine=frozenset(p for p, r in holders.items() if r == self.replica),
        )

    async def take(self, partition: int) -> int | None:
        if partition in self.table.holders:
            return None
        self.table.holders[partition] = self.replica
        self.table.epochs[partition] = self.table.epochs.get(partition, 0) + 1
        return self.table.epochs[partition]

    async def give_up(self, partition: int) -> None:
        if self.table.holders.get(partition) == self.replica:
            del self.table.holders[partition]

    async def close(self) -> None:
        self.die()

    def die(self) -> None:
        self.table.replicas.discard(self.replica)
        for partition in [p for p, r in self.table.holders.items() if r == self.replica]:
            del self.table.holders[partition]


class FakeConsumer:
    def __init__(self) -> None:
        self.share = 1
        self.queues: list[str] = []
        self.is_connected = True

    def split_prefetch(self, queues: int) -> None:
        self.share = queues

    async def add(self, queue: str) -> None:
        assert queue not in self.queues
        self.queues.append(queue)

    async def remove(self, queue: str, timeout: float) -> bool:
        self.queues.remove(queue)
        return True


P = 8


class Clock:
    def __init__(self) -> None:
        self.time = 0.0

    def __call__(self) -> float:
        return self.time


def replica(
    table: LockTable, number: int, clock: Clock | None = None
) -> tuple[PartitionOwner, FakeLocks, FakeConsumer]:
    locks, consumer = FakeLocks(table, number), FakeConsumer()
    owner = PartitionOwner(
        locks, consumer, lambda p: f"ns.orchestrator.p{p}", P, interval=0.01, now=clock or Clock()
    )
    return owner, locks, consumer


async def settle(owners: list[PartitionOwner], locks: list[FakeLocks]) -> None:
    for lock in locks:
        if lock.replica not in lock.table.replicas:
            await lock.open()
    for _ in range(4):
        for owner in owners:
            await owner.rebalance()


def assert_spread(table: LockTable, owners: list[PartitionOwner], consumers: list[FakeConsumer]) -> None:
    assert sorted(table.holders) == list(range(P)), "every partition has a holder"
    share = share_of(P, len(owners))
    for owner, consumer in zip(owners, consumers, strict=True):
        assert len(owner.owned) <= share
        assert sorted(consumer.queues) == sorted(f"ns.orchestrator.p{p}" for p in owner.owned)
    held = [p for owner in owners for p in owner.owned]
    assert sorted(held) == list(range(P)), "no partition consumed twice"


@pytest.mark.parametrize(("partitions", "replicas", "share"), [(8, 1, 8), (8, 3, 3), (8, 8, 1), (2, 3, 1)])
def test_shares_cover_every_partition(partitions: int, replicas: int, share: int) -> None:
    assert share_of(partitions, replicas) == share
    assert share * replicas >= partitions


async def test_replicas_spread_the_partitions_and_take_a_dead_ones() -> None:
    table = LockTable()
    first = replica(table, 1)
    await settle([first[0]], [first[1]])
    assert len(first[0].owned) == P  # alone, it holds everything

    second, third = replica(table, 2), replica(table, 3)
    trio = [first, second, third]
    await settle([r[0] for r in trio], [r[1] for r in trio])
    assert_spread(table, [r[0] for r in trio], [r[2] for r in trio])
    assert sorted(len(r[0].owned) for r in trio) == [2, 3, 3]

    third[1].die()  # kill -9: PostgreSQL drops its session and its locks
    pair = [first, second]
    await settle([r[0] for r in pair], [r[1] for r in pair])
    assert_spread(table, [r[0] for r in pair], [r[2] for r in pair])
    assert [len(r[0].owned) for r in pair] == [4, 4]


async def test_a_replica_that_loses_its_connection_stops_consuming_until_it_holds_again() -> None:
    table = LockTable()
    owner, locks, consumer = replica(table, 1)
    await settle([owner], [locks])
    locks.die()  # the database restarted under it: its locks are gone
    with pytest.raises(ConnectionError):
        await owner.rebalance()
    await owner._drop_all()  # what run() does on any error
    assert consumer.queues == [] and owner.owned == set()
    await settle([owner], [locks])
    assert len(owner.owned) == P and len(consumer.queues) == P


async def test_a_replica_cut_off_from_the_broker_gives_its_partitions_to_the_others() -> None:
    """It still holds its locks (the database is fine) but consumes nothing: past the grace it
    lets them go and stops counting as live, so the other's share grows to take them."""
    table, clock = LockTable(), Clock()
    (a, _, a_consumer), (b, _, b_consumer) = replica(table, 1, clock), replica(table, 2, clock)
    for _ in range(3):
        assert await a.step() and await b.step()
    assert len(a.owned) == len(b.owned) == 4

    a_consumer.is_connected = False
    assert not await a.step()  # the grace begins: a blip of the broker changes nothing
    assert len(a.owned) == 4 and await b.step() and len(b.owned) == 4
    clock.time += a.disconnected_grace
    assert not await a.step()
    assert a.owned == set() and a_consumer.queues == [] and 1 not in table.replicas
    assert await b.step() and len(b.owned) == P  # alone now: all of them
    assert_spread(table, [b], [b_consumer])

    a_consumer.is_connected = True  # back: it counts again, and the two share once more
    for _ in range(3):
        await a.step()
        await b.step()
    assert len(a.owned) == len(b.owned) == 4
    assert_spread(table, [a, b], [a_consumer, b_consumer])


async def test_a_replica_that_dies_makes_the_others_sweep_its_outbox_at_once() -> None:
    table = LockTable()
    gone: list[int] = []
    trio = [replica(table, number) for number in (1, 2, 3)]
    for owner, _, _ in trio:
        owner.replica_gone = lambda owner=owner: gone.append(id(owner))
    await settle([r[0] for r in trio], [r[1] for r in trio])
    assert gone == []  # replicas joining is no reason
    trio[2][1].die()
    await settle([r[0] for r in trio[:2]], [r[1] for r in trio[:2]])
    assert sorted(gone) == sorted(id(r[0]) for r in trio[:2])  # each survivor, once


def test_the_log_line_names_runs_of_partitions() -> None:
    from orchestrator.service.partitions import _ranges

    assert _ranges({0, 1, 2, 3, 7}) == "0-3, 7"
    assert _ranges({1, 3, 4}) == "1, 3-4"
    assert _ranges(set()) == ""


async def test_a_replica_fences_what_it_holds_at_the_epoch_it_took_and_nothing_else() -> None:
    """Issue 27: a batch commits a partition's messages only under the epoch its replica took."""
    table = LockTable()
    first, _, _ = replica(table, 1)
    await first.step()
    held = sorted(first.owned)
    fences = [first.fence(p) for p in held]
    second, _, _ = replica(table, 2)
    await second.step()
    await first.step()  # gives half up to the second, which takes them at a new epoch
    await second.step()

    assert fences == [(p, 1) for p in held]
    given = sorted(second.owned)
    assert given and all(first.fence(p) == (p, 0) for p in given)  # never current again
    assert all(second.fence(p) == (p, 2) for p in given)
