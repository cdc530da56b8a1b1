"""The persistence port's contract (:mod:`orchestrator.service.store`), one suite for every adapter.

The service layer is tested on :class:`~orchestrator.adapters.memory.MemoryStore` and runs on
:class:`~orchestrator.adapters.postgres.store.PostgresStore`: a unit test is only worth what the
memory store's likeness to PostgreSQL is worth. So both run the same tests, written once here
against the port alone, and where they disagree PostgreSQL (the product) is the reference.

An adapter's test module subclasses :class:`StoreContract` as ``Test...`` and gives it a fresh,
empty store (the ``store`` fixture) and a way to leave a tombstone (which only ``orchestrator
archive`` writes, outside the port). The base class is not collected: its name has no ``Test``.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio

from orchestrator.core.definitions import Status
from orchestrator.core.engine import Deadline, Incoming, OutgoingCommand, SagaSnapshot
from orchestrator.service.faults import Fault
from orchestrator.service.store import Changes, DueDeadline, JournalEntry, Store, Tombstone

__all__ = ["StoreContract"]

#: the time the batches below happen at (whole microseconds: what timestamptz keeps)
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 vendor=1"


def a_saga(
    saga_id: str,
    *,
    workflow: str = "order",
    release: str = "1",
    state: str = "reserve",
    status: Status = Status.RUNNING,
    version: int = 1,
    created_at: datetime = T0,
    **fields: Any,
) -> SagaSnapshot:
    """A saga row with every column set to something a read can get wrong; its key is its id, so
    that no two sagas of a test share (workflow, key), which PostgreSQL keeps unique."""
    return SagaSnapshot(
        id=saga_id,
        workflow=workflow,
        key=f"key-{saga_id}",
        state=state,
        status=status,
        version=version,
        data={"order_id": saga_id, "lines": [{"sku": "s-1", "quantity": 2}], "amount": 1.5},
        created_at=created_at,
        updated_at=created_at + timedelta(seconds=version),
        release=release,
        **fields,
    )


def an_entry(
    saga: SagaSnapshot, at: datetime, seq: int | None = None, trace: str | None = None
) -> JournalEntry:
    seq = saga.version if seq is None else seq
    message = Incoming(
        "orders.OrderPlaced", f"m-{saga.id}-{seq}", {"order_id": saga.id}, "event", None, 1, trace
    )
    return JournalEntry(saga.id, seq, message, {"to": saga.state, "outcome": "moved", "seq": seq}, at)


def a_command(saga: SagaSnapshot, name: str, trace: str | None = None) -> OutgoingCommand:
    return OutgoingCommand(
        f"c-{saga.id}-{name}",
        "inventory.ReserveStock",
        {"order_id": saga.id, "n": name},
        saga.id,
        saga.workflow,
        trace,
    )


def a_batch(
    *sagas: SagaSnapshot,
    at: datetime = T0,
    commands: Iterable[OutgoingCommand] = (),
    inbox: Mapping[str, str | None] | None = None,
    timers: Mapping[tuple[str, str], tuple[Deadline | None, int]] | None = None,
) -> Changes:
    """What a batch at ``at`` writes: each saga's row and one journal entry (its version's seq),
    as the service layer records a decision."""
    changes = Changes()
    for saga in sagas:
        changes.sagas[saga.id] = saga
        changes.journal.append(an_entry(saga, at))
    changes.commands.extend(commands)
    changes.inbox.update(inbox or {})
    changes.deadlines.update(timers or {})
    return changes


async def commit(store: Store, changes: Changes) -> None:
    async with store.transaction() as tx:
        await tx.save(changes)


def ids(commands: Iterable[OutgoingCommand]) -> list[str]:
    return [c.message_id for c in commands]


class _Abort(Exception):
    """Raised inside a transaction after its save, to see that nothing of it stays."""


class StoreContract(abc.ABC):
    """What the service layer relies on of a store (batch.py, operations.py, deadlines.py, relay.py,
    migrations.py), each test on a fresh, empty store of the adapter under test."""

    #: a batch's read skips a saga row another transaction holds, and says so (``busy``), where
    #: a store that runs one transaction at a time makes the next one wait
    skips_locked_rows = False

    @pytest_asyncio.fixture
    async def store(self) -> AsyncIterator[Store]:
        """A fresh, empty store, closed afterwards: every adapter's class overrides this."""
        raise NotImplementedError("an adapter's contract test gives its own store fixture")
        yield  # pragma: no cover

    @abc.abstractmethod
    async def bury(self, store: Store, tombstone: Tombstone) -> None:
        """Leave ``tombstone`` as ``orchestrator archive`` does: the port itself never writes one."""

    # sagas ----------------------------------------------------------------------------------------
    async def test_a_fresh_store_holds_nothing(self, store: Store) -> None:
        assert await store.get_saga("s-1") is None
        assert await store.journal("s-1") == []
        assert await store.snapshot("s-1") == (None, [])
        records = await store.records("s-1")
        assert (records.saga, records.journal, records.timers, records.outbox) == (None, [], [], [])
        assert await store.saga_ids() == []
        assert await store.movable("order", "1") == []
        assert await store.next_deadline() is None
        assert await store.unsent(100) == []
        async with store.transaction() as tx:
            assert await tx.lock_sagas(["s-1"]) == {}
            assert await tx.read_batch(["s-1"], ["m-1"]) == ({}, set())
            assert await tx.read_batch([], []) == ({}, set())
            assert await tx.tombstones(["s-1"]) == {}
            assert await tx.claim_due(T0 + timedelta(days=1), 10) == ({}, [])

    async def test_a_saved_saga_reads_back_whole_through_every_read(self, store: Store) -> None:
        saga = a_saga(
            "s-1",
            state="charge",
            status=Status.COMPENSATING,
            version=3,
            release="2",
            parked=({"type": "orders.OrderShipped", "payload": {"order_id": "s-1"}},),
            last_error="payment declined",
            awaiting=({"type": "payment.ChargePayment", "message_id": "c-1"},),
            attempt=2,
            timed_out=("reserve",),
            branches=(
                {
                    "name": "undo:ship",
                    "step": "ship",
                    "awaiting": [{"type": "shipping.Recall", "message_id": "c-2", "payload": {}}],
                    "attempt": 1,
                    "given_up": False,
                    "reopened": True,
                },
            ),
        )
        await commit(store, a_batch(saga))

        assert await store.get_saga("s-1") == saga
        assert (await store.snapshot("s-1"))[0] == saga
        assert (await store.records("s-1")).saga == saga
        async with store.transaction() as tx:
            assert await tx.lock_sagas(["s-1"]) == {"s-1": saga}
            assert (await tx.read_batch(["s-1"], []))[0] == {"s-1": saga}

    async def test_saving_a_saga_again_replaces_its_row_but_not_its_identity(self, store: Store) -> None:
        """A decision moves a saga on; what names it (workflow, key) and when it started stay as
        the first save wrote them, whatever a later snapshot says."""
        first = a_saga("s-1")
        await commit(store, a_batch(first))
        moved = a_saga(
            "s-1",
            workflow="escrow",
            state="ship",
            status=Status.COMPLETED,
            version=2,
            release="3",
            created_at=T0 + timedelta(hours=1),
            last_error="late",
            attempt=1,
        )
        moved = SagaSnapshot(**{**vars(moved), "key": "another-key", "data": {"shipped": True}})
        await commit(store, a_batch(moved, at=T0 + timedelta(seconds=5)))

        saved = await store.get_saga("s-1")
        assert saved is not None
        assert (saved.workflow, saved.key, saved.created_at) == (first.workflow, first.key, first.created_at)
        assert (saved.state, saved.status, saved.version, saved.release) == ("ship", Status.COMPLETED, 2, "3")
        assert (saved.data, saved.last_error, saved.attempt) == ({"shipped": True}, "late", 1)
        assert saved.updated_at == moved.updated_at
        assert await store.saga_ids() == ["s-1"]

    async def test_lock_sagas_returns_only_the_sagas_that_exist(self, store: Store) -> None:
        one, two = a_saga("s-1"), a_saga("s-2")
        await commit(store, a_batch(one, two))
        async with store.transaction() as tx:
            assert await tx.lock_sagas(["s-2", "s-9", "s-2"]) == {"s-2": two}
            assert await tx.lock_sagas([]) == {}
            assert await tx.lock_sagas(iter(["s-1", "s-2"])) == {"s-1": one, "s-2": two}

    async def test_saga_ids_come_in_order_of_creation_and_filter_by_workflow(self, store: Store) -> None:
        await commit(store, a_batch(a_saga("s-b", created_at=T0 + timedelta(seconds=2))))
        await commit(store, a_batch(a_saga("s-c", workflow="escrow", created_at=T0 + timedelta(seconds=1))))
        await commit(store, a_batch(a_saga("s-a", created_at=T0 + timedelta(seconds=2))))  # tie: by id
        await commit(store, a_batch(a_saga("s-d", created_at=T0)))
        await commit(store, a_batch(a_saga("s-d", state="charge", version=2, created_at=T0)))  # moved on

        assert await store.saga_ids() == ["s-d", "s-c", "s-a", "s-b"]
        assert await store.saga_ids("order") == ["s-d", "s-a", "s-b"]
        assert await store.saga_ids("escrow") == ["s-c"]
        assert await store.saga_ids("nothing") == []

    async def test_movable_sagas_are_the_releases_running_compensating_or_failed(self, store: Store) -> None:
        await commit(
            store,
            a_batch(
                a_saga("s-5", status=Status.FAILED),
                a_saga("s-1", status=Status.RUNNING),
                a_saga("s-3", status=Status.COMPENSATING),
                a_saga("s-2", status=Status.COMPLETED),
                a_saga("s-4", status=Status.COMPENSATED),
                a_saga("s-6", status=Status.RUNNING, release="2"),
                a_saga("s-7", status=Status.RUNNING, workflow="escrow"),
            ),
        )
        assert await store.movable("order", "1") == ["s-1", "s-3", "s-5"]
        assert await store.movable("order", "2") == ["s-6"]
        assert await store.movable("escrow", "1") == ["s-7"]
        assert await store.movable("escrow", "2") == []

    # journal --------------------------------------------------------------------------------------
    async def test_the_journal_reads_back_in_seq_order_per_saga(self, store: Store) -> None:
        one, two = a_saga("s-1"), a_saga("s-2")
        await commit(store, a_batch(one, two))
        later = T0 + timedelta(seconds=3)
        moved = a_saga("s-1", state="charge", version=2)
        operator = JournalEntry(
            "s-1",
            3,
            Incoming("operator.retry", "op-1", {"reason": "why"}, "operator", "alice", 2),
            {"outcome": "retried"},
            later,
        )
        changes = a_batch(moved, at=later)
        changes.journal.append(operator)
        await commit(store, changes)

        entries = await store.journal("s-1")
        assert entries == [an_entry(one, T0), an_entry(moved, later), operator]
        assert (entries[2].message.kind, entries[2].message.actor, entries[2].message.schema) == (
            "operator",
            "alice",
            2,
        )
        assert await store.journal("s-2") == [an_entry(two, T0)]
        assert (await store.snapshot("s-1")) == (moved, entries)
        assert (await store.records("s-1")).journal == entries

    async def test_a_journal_entry_keeps_its_message_but_never_its_trace(self, store: Store) -> None:
        """A trace context is carried on by what a message causes, never journaled: a replay of
        the journal reads the same entries whether a message came traced or not."""
        saga = a_saga("s-1")
        changes = Changes(sagas={"s-1": saga}, journal=[an_entry(saga, T0, trace=TRACE)])
        await commit(store, changes)

        [entry] = await store.journal("s-1")
        assert entry == an_entry(saga, T0)
        assert entry.message.trace is None
        assert (await store.snapshot("s-1"))[1][0].message.trace is None

    async def test_one_save_stamps_its_rows_with_one_time_its_last_entrys(self, store: Store) -> None:
        """A batch is one transaction at one "now": its journal entries and its outbox rows carry
        the time of its last entry (the service records every decision of a batch at the same
        time; a save does not keep different ones apart)."""
        await store.hold()  # as a replica does before anything commits (the older_than test says why)
        one, two = a_saga("s-1"), a_saga("s-2")
        changes = a_batch(one, two, commands=[a_command(one, "a")])
        changes.journal[0] = an_entry(one, T0 - timedelta(hours=1))
        changes.journal[1] = an_entry(two, T0)
        await commit(store, changes)

        assert [e.recorded_at for e in await store.journal("s-1")] == [T0]
        assert ids(await store.unsent(10, older_than=T0 - timedelta(minutes=1))) == []
        assert ids(await store.unsent(10, older_than=T0)) == ["c-s-1-a"]

    async def test_a_journal_seq_taken_already_conflicts_and_the_save_writes_nothing(
        self, store: Store
    ) -> None:
        """Two batches that decided one saga from the same row: the second's entry has a seq the
        first wrote. Its save must fail as a conflict (the batch is tried again and decides from
        the new row), and write nothing of that batch, not even other sagas' rows."""
        one = a_saga("s-1")
        await commit(store, a_batch(one))
        other = a_saga("s-2")
        late = a_batch(other, a_saga("s-1", state="charge"), commands=[a_command(other, "a")])
        late.inbox["m-late"] = "s-2"
        late.deadlines[("s-2", "deadline")] = (Deadline("reserve", T0), 1)

        with pytest.raises(Exception) as raised:
            await commit(store, late)

        assert store.classify(raised.value) is Fault.CONFLICT, raised.value
        assert await store.get_saga("s-1") == one
        assert await store.journal("s-1") == [an_entry(one, T0)]
        assert await store.get_saga("s-2") is None
        assert await store.journal("s-2") == []
        assert await store.unsent(10) == []
        assert await store.next_deadline() is None
        async with store.transaction() as tx:
            assert (await tx.read_batch([], ["m-late"]))[1] == set()

    async def test_a_seq_repeated_within_one_save_conflicts(self, store: Store) -> None:
        saga = a_saga("s-1")
        changes = a_batch(saga)
        changes.journal.append(an_entry(saga, T0))
        with pytest.raises(Exception) as raised:
            await commit(store, changes)
        assert store.classify(raised.value) is Fault.CONFLICT, raised.value
        assert await store.journal("s-1") == []

    # inbox ----------------------------------------------------------------------------------------
    async def test_read_batch_tells_the_message_ids_taken_and_returns_the_sagas(self, store: Store) -> None:
        one = a_saga("s-1")
        await commit(store, a_batch(one, inbox={"m-1": "s-1", "m-orphan": None}))

        async with store.transaction() as tx:
            current, seen = await tx.read_batch(["s-1", "s-9"], ["m-1", "m-orphan", "m-new", "m-1"])
        assert current == {"s-1": one}
        assert seen == {"m-1", "m-orphan"}  # a message taken without a saga (refused later) too
        async with store.transaction() as tx:
            assert await tx.read_batch([], ["m-new"]) == ({}, set())
            assert await tx.read_batch(["s-1"], []) == ({"s-1": one}, set())

    async def test_duplicates_counted_leave_the_message_taken(self, store: Store) -> None:
        """A batch of duplicates only (nothing decided) still saves, and changes nothing else;
        a duplicate of a message taken in the same save counts too."""
        saga = a_saga("s-1")
        await commit(store, a_batch(saga, inbox={"m-1": "s-1"}))
        await commit(store, Changes(duplicates=["m-1", "m-1"]))
        fresh = a_saga("s-2")
        taken_twice = a_batch(fresh, inbox={"m-2": "s-2"})
        taken_twice.duplicates.append("m-2")
        await commit(store, taken_twice)

        async with store.transaction() as tx:
            assert (await tx.read_batch([], ["m-1", "m-2", "m-3"]))[1] == {"m-1", "m-2"}
        assert await store.get_saga("s-1") == saga
        assert await store.journal("s-1") == [an_entry(saga, T0)]

    async def test_a_message_the_inbox_holds_taken_again_conflicts_and_the_save_writes_nothing(
        self, store: Store
    ) -> None:
        """Two batches that both read a message as new (the other's commit came after their read):
        the second save must fail as a conflict, so that its retry sees a duplicate, and must not
        have written any of its other rows."""
        await commit(store, a_batch(a_saga("s-1"), inbox={"m-1": "s-1"}))
        other = a_saga("s-2")
        late = a_batch(other, commands=[a_command(other, "a")], inbox={"m-fresh": None, "m-1": "s-2"})
        late.deadlines[("s-2", "deadline")] = (Deadline("reserve", T0), 1)

        with pytest.raises(Exception) as raised:
            await commit(store, late)

        assert store.classify(raised.value) is Fault.CONFLICT, raised.value
        async with store.transaction() as tx:
            assert (await tx.read_batch([], ["m-1", "m-fresh"]))[1] == {"m-1"}
        assert await store.get_saga("s-2") is None
        assert await store.journal("s-2") == []
        assert await store.unsent(10) == []
        assert await store.next_deadline() is None

    # transactions ---------------------------------------------------------------------------------
    async def test_a_transaction_that_fails_after_its_save_writes_nothing(self, store: Store) -> None:
        """A batch is one transaction: whatever goes wrong before it commits, none of its rows stay."""
        kept = a_saga("s-0")
        await commit(
            store, a_batch(kept, inbox={"m-0": "s-0"}, timers={("s-0", "deadline"): (Deadline("a", T0), 1)})
        )
        saga = a_saga("s-1")
        moved = a_saga("s-0", state="charge", version=2)
        changes = a_batch(saga, moved, commands=[a_command(saga, "a")], inbox={"m-1": "s-1"})
        changes.deadlines[("s-1", "retry")] = (Deadline("reserve", T0, "retry"), 1)
        changes.deadlines[("s-0", "deadline")] = (None, 2)
        changes.duplicates.append("m-0")

        with pytest.raises(_Abort):
            async with store.transaction() as tx:
                await tx.save(changes)
                raise _Abort

        assert await store.get_saga("s-1") is None
        assert await store.get_saga("s-0") == kept
        assert await store.journal("s-0") == [an_entry(kept, T0)]
        assert await store.journal("s-1") == []
        assert await store.saga_ids() == ["s-0"]
        assert await store.unsent(10) == []
        assert (await store.records("s-0")).timers == [DueDeadline("s-0", "a", 1, T0)]
        assert (await store.records("s-1")).timers == []
        async with store.transaction() as tx:
            assert (await tx.read_batch([], ["m-0", "m-1"]))[1] == {"m-0"}
        await commit(store, changes)  # nothing of it stayed to conflict with
        assert await store.get_saga("s-1") == saga

    async def test_a_saga_locked_by_one_transaction_is_never_decided_from_its_old_row(
        self, store: Store
    ) -> None:
        """Two batches for one saga: the second never decides from the row before the first's
        commit (no lost update). PostgreSQL's read skips the row and says it is busy (its message
        waits, the rest of the batch goes on); a store that runs one transaction at a time makes
        the second wait, and it reads the row the first wrote."""
        await commit(
            store, a_batch(a_saga("s-1"), timers={("s-1", "deadline"): (Deadline("reserve", T0), 1)})
        )
        moved = a_saga("s-1", state="charge", version=2)

        async def read_next() -> tuple[SagaSnapshot | None, set[str], list[DueDeadline]]:
            async with store.transaction() as tx:
                current, _ = await tx.read_batch(["s-1"], [])
                _, due = await tx.claim_due(T0 + timedelta(minutes=1), 10)
                return current.get("s-1"), set(tx.busy), due

        async with store.transaction() as tx:
            assert (await tx.lock_sagas(["s-1"]))["s-1"].version == 1
            waiting = asyncio.create_task(read_next())
            try:
                await asyncio.sleep(0.3)
                if self.skips_locked_rows:
                    assert waiting.done(), "the second transaction waited for a row another holds"
                    assert await waiting == (None, {"s-1"}, [])  # busy; its timer not taken either
                else:
                    assert not waiting.done(), "the second transaction read a saga the first holds"
                await tx.save(
                    a_batch(moved, at=T0 + timedelta(seconds=1), timers={("s-1", "deadline"): (None, 1)})
                )
            except BaseException:
                waiting.cancel()
                raise
        if not self.skips_locked_rows:
            assert await asyncio.wait_for(waiting, 10) == (moved, set(), [])
        async with store.transaction() as tx:
            assert (await tx.read_batch(["s-1"], []))[0] == {"s-1": moved} and tx.busy == set()

    # outbox ---------------------------------------------------------------------------------------
    async def test_unsent_commands_come_oldest_first_with_all_it_takes_to_publish_them(
        self, store: Store
    ) -> None:
        one, two = a_saga("s-1"), a_saga("s-2")
        late = [a_command(one, "late", TRACE)]
        await commit(store, a_batch(one, at=T0 + timedelta(seconds=2), commands=late))
        early = [a_command(two, "early-1"), a_command(two, "early-2")]
        await commit(store, a_batch(two, at=T0, commands=early))

        unsent = await store.unsent(10)
        assert unsent == [*early, *late] or unsent == [early[1], early[0], *late]  # ties: any order
        assert {c.message_id: c.trace for c in unsent} == {
            "c-s-2-early-1": None,
            "c-s-2-early-2": None,
            "c-s-1-late": TRACE,
        }
        assert set(ids(await store.unsent(2))) == set(ids(early))
        assert ids(await store.unsent(0)) == []

    async def test_unsent_older_than_leaves_the_younger_rows_to_this_replicas_relay(
        self, store: Store
    ) -> None:
        """The periodic sweep asks for rows at least so old: younger ones were just handed to the
        relay by the batch that committed them. Asked of a store that holds its rows (:meth:`hold`,
        which a replica calls before anything commits): PostgreSQL takes the rows of a store that
        never did as a dead replica's, of any age, while no replica at all holds any."""
        await store.hold()
        one, two = a_saga("s-1"), a_saga("s-2")
        await commit(store, a_batch(one, at=T0, commands=[a_command(one, "old")]))
        await commit(store, a_batch(two, at=T0 + timedelta(seconds=10), commands=[a_command(two, "young")]))

        assert ids(await store.unsent(10, older_than=T0 + timedelta(seconds=5))) == ["c-s-1-old"]
        assert ids(await store.unsent(10, older_than=T0)) == ["c-s-1-old"]  # as old as that: taken
        assert ids(await store.unsent(10, older_than=T0 - timedelta(seconds=1))) == []
        assert ids(await store.unsent(10)) == ["c-s-1-old", "c-s-2-young"]

    async def test_a_command_saved_again_keeps_its_first_row(self, store: Store) -> None:
        """An operator's retry sends the same message ids again: one row each, and an unsent one
        keeps its age (the sweep that finds it old still finds it)."""
        await store.hold()
        one, two = a_saga("s-1"), a_saga("s-2")
        first = a_command(one, "a")
        await commit(store, a_batch(one, at=T0, commands=[first]))
        await commit(store, a_batch(two, at=T0 + timedelta(seconds=1), commands=[a_command(two, "b")]))
        again = OutgoingCommand(first.message_id, first.type, {"resent": True}, one.id, one.workflow)
        moved = a_saga("s-1", state="charge", version=2)
        await commit(store, a_batch(moved, at=T0 + timedelta(seconds=2), commands=[again]))

        unsent = await store.unsent(10)
        assert ids(unsent) == ["c-s-1-a", "c-s-2-b"]
        assert unsent[0].payload == first.payload
        assert ids(await store.unsent(10, older_than=T0)) == ["c-s-1-a"]

    async def test_mark_sent_removes_exactly_those_commands(self, store: Store) -> None:
        saga = a_saga("s-1")
        commands = [a_command(saga, "a"), a_command(saga, "b"), a_command(saga, "c")]
        await commit(store, a_batch(saga, commands=commands))

        await store.mark_sent(["c-s-1-a", "c-s-1-c", "never-queued"])
        await store.mark_sent([])
        await store.mark_sent(["c-s-1-a"])  # confirmed twice: the second is nothing

        assert ids(await store.unsent(10)) == ["c-s-1-b"]
        assert ids((await store.records("s-1")).outbox) == ["c-s-1-b"]

    async def test_hold_names_the_same_claim_while_the_store_lives(self, store: Store) -> None:
        key = await store.hold()
        assert isinstance(key, int) and key > 0
        assert await store.hold() == key
        saga = a_saga("s-1")
        await commit(store, a_batch(saga, commands=[a_command(saga, "a")]))
        assert ids(await store.unsent(10)) == ["c-s-1-a"]  # its own rows: its own sweep sends them

    # records --------------------------------------------------------------------------------------
    async def test_records_hold_the_row_journal_timers_and_outbox_of_one_saga(self, store: Store) -> None:
        saga, other = a_saga("s-1"), a_saga("s-2")
        await commit(
            store,
            a_batch(
                saga,
                other,
                commands=[a_command(saga, "b"), a_command(saga, "a"), a_command(other, "x")],
                timers={
                    ("s-1", "retry"): (Deadline("reserve", T0 + timedelta(seconds=9), "retry", TRACE), 1),
                    ("s-1", "deadline"): (Deadline("reserve", T0 + timedelta(seconds=30)), 1),
                    ("s-2", "deadline"): (Deadline("reserve", T0), 1),
                },
            ),
        )
        moved = a_saga("s-1", state="charge", version=2)
        await commit(store, a_batch(moved, at=T0 + timedelta(seconds=1), commands=[a_command(moved, "0")]))

        records = await store.records("s-1")
        assert records.saga == moved
        assert records.journal == [an_entry(saga, T0), an_entry(moved, T0 + timedelta(seconds=1))]
        assert records.timers == [
            DueDeadline("s-1", "reserve", 1, T0 + timedelta(seconds=30), "deadline"),
            DueDeadline("s-1", "reserve", 1, T0 + timedelta(seconds=9), "retry"),
        ]
        # oldest first, then by message id
        assert ids(records.outbox) == ["c-s-1-a", "c-s-1-b", "c-s-1-0"]
        assert records.outbox[0] == a_command(saga, "a")

    # deadlines ------------------------------------------------------------------------------------
    async def test_claim_due_takes_the_due_timers_earliest_first_with_their_sagas(self, store: Store) -> None:
        one, two, three = a_saga("s-1"), a_saga("s-2"), a_saga("s-3")
        await commit(
            store,
            a_batch(
                one,
                two,
                three,
                timers={
                    ("s-1", "deadline"): (Deadline("reserve", T0 + timedelta(seconds=20)), 1),
                    ("s-1", "retry"): (Deadline("reserve", T0 + timedelta(seconds=5), "retry", TRACE), 1),
                    ("s-2", "deadline"): (Deadline("reserve", T0 + timedelta(seconds=10)), 1),
                    ("s-3", "deadline"): (Deadline("reserve", T0 + timedelta(seconds=31)), 1),  # not due
                    ("s-gone", "retry"): (Deadline("charge", T0 + timedelta(seconds=15), "retry"), 4),
                },
            ),
        )

        async with store.transaction() as tx:
            sagas, due = await tx.claim_due(T0 + timedelta(seconds=30), 10)

        assert sagas == {"s-1": one, "s-2": two}  # a timer's saga that is gone: its row only
        assert due == [
            DueDeadline("s-1", "reserve", 1, T0 + timedelta(seconds=5), "retry"),
            DueDeadline("s-2", "reserve", 1, T0 + timedelta(seconds=10), "deadline"),
            DueDeadline("s-gone", "charge", 4, T0 + timedelta(seconds=15), "retry"),
            DueDeadline("s-1", "reserve", 1, T0 + timedelta(seconds=20), "deadline"),
        ]
        assert [d.trace for d in due] == [TRACE, None, None, None]  # a fired timer continues its trace
        async with store.transaction() as tx:  # due exactly now: due
            assert [d.saga_id for d in (await tx.claim_due(T0 + timedelta(seconds=10), 10))[1]] == [
                "s-1",
                "s-2",
            ]

    async def test_claim_due_limits_the_sagas_not_their_timers(self, store: Store) -> None:
        one, two, three = a_saga("s-1"), a_saga("s-2"), a_saga("s-3")
        await commit(
            store,
            a_batch(
                one,
                two,
                three,
                timers={
                    ("s-3", "deadline"): (Deadline("reserve", T0 + timedelta(seconds=1)), 1),
                    ("s-2", "deadline"): (Deadline("reserve", T0 + timedelta(seconds=2)), 1),
                    ("s-3", "retry"): (Deadline("reserve", T0 + timedelta(seconds=3), "retry"), 1),
                    ("s-1", "deadline"): (Deadline("reserve", T0 + timedelta(seconds=4)), 1),
                },
            ),
        )
        now = T0 + timedelta(minutes=1)
        async with store.transaction() as tx:
            sagas, due = await tx.claim_due(now, 1)
            assert sagas == {"s-3": three}
            assert [(d.saga_id, d.kind) for d in due] == [("s-3", "deadline"), ("s-3", "retry")]
            sagas, due = await tx.claim_due(now, 2)
            assert sagas == {"s-2": two, "s-3": three}
            assert [(d.saga_id, d.kind) for d in due] == [
                ("s-3", "deadline"),
                ("s-2", "deadline"),
                ("s-3", "retry"),
            ]
            assert await tx.claim_due(now, 0) == ({}, [])

    async def test_claim_due_takes_only_the_workflows_given_and_the_timers_of_sagas_gone(
        self, store: Store
    ) -> None:
        """A process takes only the timers it can decide: of its workflows, at their releases; a
        timer whose saga is gone is anybody's, to be removed."""
        order, order_v2, escrow = a_saga("s-1"), a_saga("s-2", release="2"), a_saga("s-3", workflow="escrow")
        await commit(
            store,
            a_batch(
                order,
                order_v2,
                escrow,
                timers={
                    ("s-1", "deadline"): (Deadline("reserve", T0 + timedelta(seconds=1)), 1),
                    ("s-2", "deadline"): (Deadline("reserve", T0 + timedelta(seconds=2)), 1),
                    ("s-3", "deadline"): (Deadline("reserve", T0 + timedelta(seconds=3)), 1),
                    ("s-gone", "deadline"): (Deadline("reserve", T0 + timedelta(seconds=4)), 1),
                },
            ),
        )
        now = T0 + timedelta(minutes=1)

        async def claimed(workflows: list[tuple[str, str]] | None) -> tuple[list[str], list[str]]:
            async with store.transaction() as tx:
                sagas, due = await tx.claim_due(now, 10, workflows)
            return sorted(sagas), [d.saga_id for d in due]

        assert await claimed([("order", "1")]) == (["s-1"], ["s-1", "s-gone"])
        assert await claimed([("order", "2"), ("escrow", "1")]) == (["s-2", "s-3"], ["s-2", "s-3", "s-gone"])
        assert await claimed([("escrow", "2")]) == ([], ["s-gone"])
        assert await claimed([]) == ([], ["s-gone"])
        assert await claimed(None) == (["s-1", "s-2", "s-3"], ["s-1", "s-2", "s-3", "s-gone"])

    async def test_a_timer_set_again_replaces_its_row(self, store: Store) -> None:
        """One row per saga and kind: the latest decision's."""
        saga = a_saga("s-1")
        await commit(store, a_batch(saga, timers={("s-1", "deadline"): (Deadline("reserve", T0), 1)}))
        moved = a_saga("s-1", state="charge", version=2)
        later = T0 + timedelta(seconds=50)
        await commit(
            store, a_batch(moved, timers={("s-1", "deadline"): (Deadline("charge", later, trace=TRACE), 2)})
        )

        assert (await store.records("s-1")).timers == [DueDeadline("s-1", "charge", 2, later)]
        assert await store.next_deadline() == later
        async with store.transaction() as tx:
            assert (await tx.claim_due(later - timedelta(seconds=1), 10))[1] == []
            [due] = (await tx.claim_due(later, 10))[1]
        assert (due, due.trace) == (DueDeadline("s-1", "charge", 2, later), TRACE)

    async def test_a_timer_removal_takes_only_its_own_version_or_older(self, store: Store) -> None:
        """A sweep removes the stale row it read at some version; a batch may have set the timer
        anew since: that newer row stays."""
        retry = Deadline("charge", T0, "retry")
        await commit(store, Changes(deadlines={("s-1", "retry"): (retry, 3), ("s-2", "retry"): (retry, 3)}))
        await commit(store, Changes(deadlines={("s-1", "retry"): (None, 2)}))
        assert (await store.records("s-1")).timers == [DueDeadline("s-1", "charge", 3, T0, "retry")]

        await commit(store, Changes(deadlines={("s-1", "retry"): (None, 3), ("s-2", "retry"): (None, 4)}))
        assert (await store.records("s-1")).timers == []
        assert (await store.records("s-2")).timers == []
        await commit(store, Changes(deadlines={("s-1", "deadline"): (None, 9)}))  # none: nothing to do
        assert await store.next_deadline() is None

    async def test_next_deadline_is_the_earliest_pending_of_the_workflows_given(self, store: Store) -> None:
        order, escrow = a_saga("s-1"), a_saga("s-2", workflow="escrow", release="2")
        await commit(
            store,
            a_batch(
                order,
                escrow,
                timers={
                    ("s-1", "deadline"): (Deadline("reserve", T0 + timedelta(hours=2)), 1),
                    ("s-1", "retry"): (Deadline("reserve", T0 + timedelta(hours=1), "retry"), 1),
                    ("s-2", "deadline"): (Deadline("reserve", T0 + timedelta(minutes=5)), 1),
                },
            ),
        )
        assert await store.next_deadline() == T0 + timedelta(minutes=5)
        assert await store.next_deadline([("order", "1")]) == T0 + timedelta(hours=1)
        assert await store.next_deadline([("escrow", "2"), ("order", "1")]) == T0 + timedelta(minutes=5)
        assert await store.next_deadline([("escrow", "1")]) is None
        assert await store.next_deadline([]) is None

        await commit(
            store, Changes(deadlines={("s-gone", "deadline"): (Deadline("x", T0 + timedelta(hours=3)), 1)})
        )
        assert await store.next_deadline([("escrow", "1")]) == T0 + timedelta(hours=3)  # anybody's

    # tombstones -----------------------------------------------------------------------------------
    async def test_tombstones_are_found_by_the_ids_of_archived_sagas(self, store: Store) -> None:
        gone = Tombstone(
            "s-1",
            "order",
            "key-s-1",
            "2",
            "done",
            "completed",
            7,
            T0,
            T0 + timedelta(hours=1),
            T0 + timedelta(days=30),
        )
        other = Tombstone("s-2", "escrow", "key-s-2", "1", "refunded", "compensated", 3, T0, T0, T0)
        await self.bury(store, gone)
        await self.bury(store, other)

        async with store.transaction() as tx:
            assert await tx.tombstones(["s-1", "s-9"]) == {"s-1": gone}
            assert await tx.tombstones(["s-2", "s-1", "s-2"]) == {"s-1": gone, "s-2": other}
            assert await tx.tombstones([]) == {}
        assert await store.get_saga("s-1") is None  # archived: no row left

    # the rest -------------------------------------------------------------------------------------
    async def test_database_now_is_an_aware_clock_that_moves_on(self, store: Store) -> None:
        before = datetime.now(UTC)
        first = await store.database_now()
        second = await store.database_now()
        assert first.tzinfo is not None and first.utcoffset() is not None
        assert abs(first - before) < timedelta(seconds=5)  # the same host's clock, give or take
        assert second >= first

    async def test_close_may_be_called_again(self, store: Store) -> None:
        """Shutdown paths close in ``finally`` blocks and may meet a store closed already: that
        must not fail, after a claim (:meth:`hold`) too. The fixture closes it a third time."""
        await store.hold()
        await store.close()
        await store.close()
