"""The dead-letter drain records through the bus, by its fault policy: a batch the database
refuses is recorded one by one, one it still refuses is recorded bare (and tried until it is), and
each is acked only once recorded; while the database is away nothing is acked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from orchestrator.adapters.memory import MemoryStore
from orchestrator.core.ingress import Envelope
from orchestrator.core.routing import Registry
from orchestrator.examples import WORKFLOWS
from orchestrator.service.bus import MessageBus
from orchestrator.service.counts import Counts
from orchestrator.service.dead_letters import DeadLetterDrain
from orchestrator.service.store import Changes
from tests.outlets import NoRelay


class SqlError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"SQLSTATE {sqlstate}")
        self.sqlstate = sqlstate


class RefusingStore(MemoryStore):
    """Refuses a save while ``refuse(changes)`` gives an error for it."""

    def __init__(self, refuse: Any) -> None:
        super().__init__()
        self.refuse = refuse
        self.tries = 0

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        async with super().transaction() as tx:
            save = tx.save

            async def refusing(changes: Changes) -> None:
                self.tries += 1
                error = self.refuse(changes)
                if error is not None:
                    raise error
                await save(changes)

            tx.save = refusing  # type: ignore[method-assign]
            yield tx


@dataclass
class Taken:
    envelope: Envelope
    arrived: float = 0.0


@dataclass
class Queue:
    """The dead-letter queue's consumer: what it acked, and with ``multiple`` or not."""

    acked: list[tuple[list[str], bool]] = field(default_factory=list)

    def start(self, spawn: Any) -> None:
        return None

    async def batch(self, limit: int, stopping: asyncio.Event) -> Sequence[Taken]:
        return []

    async def ack(self, deliveries: Sequence[Taken], multiple_ok: bool = True) -> None:
        self.acked.append(([d.envelope.message_id for d in deliveries], multiple_ok))

    async def stop(self, timeout: float = 5.0) -> None:
        return None

    async def close(self, timeout: float = 5.0) -> None:
        return None


async def _no_wait(seconds: float) -> None:
    await asyncio.sleep(0)


def dead(message_id: str, body: bytes = b"{}") -> Taken:
    return Taken(Envelope(body, "inventory.ReserveStock", message_id, properties={"headers": {}}))


def drain_on(store: MemoryStore, queue: Queue) -> DeadLetterDrain[Taken]:
    bus = MessageBus(
        Registry(WORKFLOWS), store, outbox=NoRelay(), clock=lambda: datetime.now(UTC), sleep=_no_wait
    )
    return DeadLetterDrain(queue, bus.record_dead_letters, Counts())


async def test_a_batch_is_recorded_in_one_transaction_then_acked_at_once() -> None:
    store, queue = RefusingStore(lambda changes: None), Queue()

    await drain_on(store, queue).record([dead("d-1"), dead("d-2")])

    assert [d.message_id for d in store.dead_letters] == ["d-1", "d-2"]
    assert queue.acked == [(["d-1", "d-2"], True)] and store.tries == 1


async def test_a_letter_the_database_refuses_is_recorded_bare_and_the_others_whole() -> None:
    def refuse(changes: Changes) -> Exception | None:
        whole = [d for d in changes.dead_letters if d.message_id == "d-bad" and d.body]
        return SqlError("22021") if whole else None  # a value it cannot store

    store, queue = RefusingStore(refuse), Queue()

    await drain_on(store, queue).record([dead("d-1"), dead("d-bad", b'{"x": 1}'), dead("d-3")])

    by_id = {d.message_id: d for d in store.dead_letters}
    assert sorted(by_id) == ["d-1", "d-3", "d-bad"]
    assert by_id["d-bad"].body == b"" and "could not be stored" in by_id["d-bad"].detail
    assert by_id["d-1"].body == b"{}"
    assert queue.acked == [(["d-1"], False), (["d-bad"], False), (["d-3"], False)]


async def test_a_bare_letter_is_tried_until_the_database_takes_it() -> None:
    left = {"refusals": 7}

    def refuse(changes: Changes) -> Exception | None:
        """The whole letter: a value it cannot store; the bare one: 7 failures of any kind."""
        letter = changes.dead_letters[0] if changes.dead_letters else None
        if letter is None or letter.message_id != "d-bad":
            return None
        if letter.body:
            return SqlError("22021")
        if left["refusals"]:
            left["refusals"] -= 1
            return SqlError("XX000")
        return None

    store, queue = RefusingStore(refuse), Queue()

    await asyncio.wait_for(drain_on(store, queue).record([dead("d-bad", b'{"x": 1}')]), 10)

    assert [d.message_id for d in store.dead_letters] == ["d-bad"] and left["refusals"] == 0
    assert queue.acked == [(["d-bad"], False)]


async def test_while_the_database_is_away_nothing_is_acked_and_nothing_is_dropped() -> None:
    away = {"left": 5}

    def refuse(changes: Changes) -> Exception | None:
        if away["left"]:
            away["left"] -= 1
            return ConnectionResetError("the database went away")
        return None

    store, queue = RefusingStore(refuse), Queue()

    await asyncio.wait_for(drain_on(store, queue).record([dead("d-1"), dead("d-2")]), 10)

    assert store.tries == 6 and [d.message_id for d in store.dead_letters] == ["d-1", "d-2"]
    assert queue.acked == [(["d-1", "d-2"], True)]
    assert orjson.loads(store.dead_letters[0].body) == {}
