"""A failed batch is about whoever's fault it is: the database's (wait), a race (retry), or one
message's (split the batch until it stands alone, dead-letter it, commit the rest).

The bus's unit of work runs here over the in-memory store, wrapped so that its save fails the way
PostgreSQL fails, by SQLSTATE; the intake on top of it says when the service is unready."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from time import monotonic
from typing import Any

import orjson
import pytest

from orchestrator.adapters.memory import InboxConflict, MemoryStore
from orchestrator.adapters.postgres.faults import classify
from orchestrator.core.engine import saga_id_for
from orchestrator.core.ingress import Envelope
from orchestrator.core.routing import Registry
from orchestrator.examples import WORKFLOWS
from orchestrator.service.batch import Verdict
from orchestrator.service.bus import MessageBus
from orchestrator.service.counts import Counts
from orchestrator.service.faults import Fault
from orchestrator.service.intake import Intake
from orchestrator.service.store import Changes
from tests.outlets import NoRelay
from tests.stepped_time import SteppedTime


class PostgresLikeError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"SQLSTATE {sqlstate}")
        self.sqlstate = sqlstate


class FailingStore(MemoryStore):
    """A memory store whose save raises ``fail(changes)`` when that returns an error."""

    def __init__(self, fail: Callable[[Changes], Exception | None]) -> None:
        super().__init__()
        self.fail = fail
        self.saves = 0

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        async with super().transaction() as tx:
            save = tx.save

            async def failing_save(changes: Changes) -> None:
                self.saves += 1
                error = self.fail(changes)
                if error is not None:
                    raise error
                await save(changes)

            tx.save = failing_save  # type: ignore[method-assign]
            yield tx


def start(order_id: str, message_id: str | None = None) -> Envelope:
    body = {
        "order_id": order_id,
        "customer_id": "c",
        "lines": [{"sku": "s", "quantity": 1}],
        "amount_cents": 1,
    }
    return Envelope(orjson.dumps(body), "orders.OrderPlaced", message_id or f"m-{order_id}")


class _Consumer:
    """Holds nothing: the intake's readiness reads only these two."""

    unsettled = 0
    busy_since = 0.0


async def _nothing_waits() -> int | None:
    return 0


async def _not_handed(delivery: Any) -> bool:
    return False


def orchestrator(
    store: MemoryStore,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    stall_seconds: float = 60.0,
    waiting: Callable[[], Awaitable[int | None]] = _nothing_waits,
    time: SteppedTime | None = None,
) -> Intake[Any]:
    registry, counts = Registry(WORKFLOWS), Counts()
    bus = MessageBus(
        registry, store, outbox=NoRelay(), counts=counts, clock=lambda: datetime.now(UTC), sleep=sleep
    )
    return Intake(
        bus,
        _Consumer(),  # type: ignore[arg-type]
        _not_handed,
        waiting,
        registry,
        counts,
        100,
        stall_seconds,
        sleep=time.sleep if time is not None else asyncio.sleep,
        monotonic=time.monotonic if time is not None else monotonic,
    )


async def commit(app: Intake[Any], envelopes: list[Envelope]) -> list[Verdict]:
    result = await app.bus.handle(envelopes, [0.0] * len(envelopes))
    return result.verdicts


@pytest.mark.parametrize(
    ("sqlstate", "fault"),
    [
        ("22021", Fault.MESSAGE),  # character not in repertoire
        ("54000", Fault.MESSAGE),  # program limit: index row too large
        ("23505", Fault.CONFLICT),
        ("40001", Fault.CONFLICT),
        ("40P01", Fault.CONFLICT),
        ("08006", Fault.UNAVAILABLE),
        ("57P01", Fault.UNAVAILABLE),  # admin shutdown
        ("53300", Fault.UNAVAILABLE),  # too many connections
        ("55P03", Fault.CONFLICT),  # lock not available
        ("57014", Fault.OTHER),  # statement_timeout: the batch's statement, not the database away
        ("25006", Fault.UNAVAILABLE),  # read-only transaction: a standby after a failover
        ("28P01", Fault.UNAVAILABLE),  # a rotated password
        ("42P01", Fault.UNAVAILABLE),  # undefined table: a migration missing, not a message's fault
        ("42601", Fault.OTHER),  # a syntax error: ours
    ],
)
def test_a_postgres_error_is_classified_by_its_sqlstate(sqlstate: str, fault: Fault) -> None:
    assert classify(PostgresLikeError(sqlstate)) is fault


def test_a_lost_connection_is_the_database_being_away() -> None:
    assert classify(ConnectionResetError()) is Fault.UNAVAILABLE
    assert classify(OSError("connection refused")) is Fault.UNAVAILABLE
    assert classify(KeyError("a bug")) is Fault.OTHER


async def test_a_message_postgres_cannot_store_is_found_and_dead_lettered_and_the_rest_commit() -> None:
    bad = "m-poison"
    store = FailingStore(lambda c: PostgresLikeError("22021") if bad in c.inbox else None)
    app = orchestrator(store)
    batch = (
        [start(f"o-{i}") for i in range(7)] + [start("o-x", bad)] + [start(f"o-{i}") for i in range(7, 12)]
    )

    verdicts = await commit(app, batch)

    assert verdicts == [Verdict.ACCEPTED] * 7 + [Verdict.DEAD] + [Verdict.ACCEPTED] * 5
    assert all(saga_id_for("order", f"o-{i}") in store.sagas for i in range(12))
    assert saga_id_for("order", "o-x") not in store.sagas
    [letter] = store.dead_letters
    assert (letter.reason, letter.message_id) == ("database_refused", bad)
    assert "22021" in letter.detail
    assert app.counts.batch_failures["message"] >= 1


async def test_a_race_is_retried_and_nothing_is_dead_lettered() -> None:
    failures = iter([PostgresLikeError("40P01"), PostgresLikeError("23505")])
    store = FailingStore(lambda c: next(failures, None))
    app = orchestrator(store)

    verdicts = await commit(app, [start("o-1"), start("o-2")])

    assert verdicts == [Verdict.ACCEPTED, Verdict.ACCEPTED]
    assert store.dead_letters == [] and store.saves == 3


class RacedStore(MemoryStore):
    """A memory store whose next ``races`` batches read their messages as new: another replica took
    them after this batch's inbox read, before its save (the race only two PostgreSQL sessions
    have); the sagas are read as they are, the lock having waited for that replica's commit."""

    def __init__(self) -> None:
        super().__init__()
        self.races = 1

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        async with super().transaction() as tx:
            read_batch = tx.read_batch

            async def racing_read(saga_ids: Any, message_ids: Any) -> Any:
                current, seen = await read_batch(saga_ids, message_ids)
                if self.races:
                    self.races -= 1
                    return current, set()
                return current, seen

            tx.read_batch = racing_read  # type: ignore[method-assign]
            yield tx


async def test_a_message_another_batch_took_meanwhile_conflicts_and_its_retry_is_a_duplicate() -> None:
    store = RacedStore()
    store.races = 0
    app = orchestrator(store)
    assert await commit(app, [start("o-1")]) == [Verdict.ACCEPTED]
    saga_id = saga_id_for("order", "o-1")
    journaled = list(store.journals[saga_id])

    store.races = 1  # the same message again, read as new: decided, and its save conflicts
    assert await commit(app, [start("o-1")]) == [Verdict.DUPLICATE]

    assert app.counts.batch_failures == {"conflict": 1}
    assert store.journals[saga_id] == journaled  # decided once: the retry saw it taken
    assert store.duplicate_counts == {"m-o-1": 1} and store.dead_letters == []


def test_the_memory_stores_inbox_conflict_is_classified_as_postgres_unique_violation_is() -> None:
    assert classify(InboxConflict("m-1")) is Fault.CONFLICT is classify(PostgresLikeError("23505"))


async def test_a_failure_of_unknown_kind_is_tried_a_few_times_then_only_its_message_is_set_aside() -> None:
    bad = "m-bug"
    store = FailingStore(lambda c: RuntimeError("a bug this message trips") if bad in c.inbox else None)
    app = orchestrator(store)

    verdicts = await commit(app, [start("o-1"), start("o-2", bad), start("o-3")])

    assert verdicts == [Verdict.ACCEPTED, Verdict.DEAD, Verdict.ACCEPTED]
    [letter] = store.dead_letters
    assert letter.reason == "failed_repeatedly" and "a bug this message trips" in letter.detail


async def test_while_the_database_is_away_the_batch_waits_and_the_service_says_it_is_not_ready() -> None:
    away = {"left": 3}

    def fail(changes: Changes) -> Exception | None:
        if away["left"]:
            away["left"] -= 1
            return ConnectionResetError("the database went away")
        return None

    store = FailingStore(fail)
    app = orchestrator(store)
    seen: list[str | None] = []

    async def watch() -> None:
        while True:
            seen.append(app.stalled())
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    verdicts = await commit(app, [start("o-1")])
    watcher.cancel()

    assert verdicts == [Verdict.ACCEPTED] and store.dead_letters == []
    assert any(s is not None and "the database went away" in s for s in seen)
    assert app.stalled() is None
    assert app.counts.batch_failures["unavailable"] == 3


async def test_when_even_a_dead_letter_cannot_be_recorded_the_batch_waits_instead_of_recursing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A database that takes no write at all (a bug, a trigger) is waited on, not split forever."""
    broken = {"left": 40}

    def fail(changes: Changes) -> Exception | None:
        if broken["left"]:
            broken["left"] -= 1
            return RuntimeError("no write gets through")
        return None

    store = FailingStore(fail)

    async def no_backoff(_: float) -> None:
        await asyncio.sleep(0)

    app = orchestrator(store, sleep=no_backoff)
    verdicts = await asyncio.wait_for(commit(app, [start("o-1")]), 30)

    assert verdicts == [Verdict.DEAD]
    [letter] = store.dead_letters
    assert letter.reason == "failed_repeatedly" and letter.message_id == "m-o-1"
    assert app.counts.batch_failures["unavailable"] > 0


async def test_messages_waiting_in_the_queue_while_none_are_taken_make_the_service_unready() -> None:
    """A consumer the broker stopped feeding holds nothing, so only the queue's depth shows it."""
    depth = {"now": 0}

    async def waiting() -> int | None:
        return depth["now"]

    time = SteppedTime()
    app = orchestrator(MemoryStore(), stall_seconds=0.5, waiting=waiting, time=time)
    watcher = asyncio.create_task(app.watch_queue(asyncio.Event()))
    try:
        await time.advance(1.2)
        assert app.stalled() is None  # nothing waits
        depth["now"] = 7
        await time.advance(1.2)
        assert app.stalled() is None  # not for longer than stall_seconds yet
        await time.advance(1.0)
        stalled = app.stalled()
        assert stalled is not None and stalled.startswith("7 messages wait in the queue")
        depth["now"] = 0
        await time.advance(1.2)
        assert app.stalled() is None
    finally:
        watcher.cancel()


async def test_a_retry_timer_for_a_state_the_workflow_no_longer_has_fails_its_saga_not_the_sweep() -> None:
    """One such timer used to raise KeyError and fail the whole sweep, every time, for every saga.
    Now its saga, which nothing loaded can decide, fails with the reason, and the timer goes."""
    from dataclasses import replace
    from datetime import UTC, datetime, timedelta

    from orchestrator.core.engine import Deadline
    from orchestrator.service.batch import fire_due_deadlines, process_batch

    store, registry, now = MemoryStore(), Registry(WORKFLOWS), datetime.now(UTC)
    await process_batch(registry, store, [start("o-gone")], now)
    saga_id = saga_id_for("order", "o-gone")
    saga = store.sagas[saga_id]
    store.sagas[saga_id] = replace(saga, state="reserve_v0")  # a state an older version had
    store.deadlines[(saga_id, "retry")] = (Deadline("reserve_v0", now, "retry"), saga.version)
    store.deadlines.pop((saga_id, "deadline"), None)

    result = await fire_due_deadlines(registry, store, now + timedelta(seconds=1))

    assert [d.outcome for d in result.decisions] == ["failed"]
    assert store.sagas[saga_id].last_error == (
        "reserve_v0 is not a state of workflow order as loaded: saga.RetryDue cannot be decided"
    )
    assert (saga_id, "retry") not in store.deadlines


async def test_a_database_away_a_moment_is_a_warning_and_one_away_long_an_error_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart or a failover the service rides out pages nobody (issue 29): a WARNING when the
    database goes and one when batches commit again, the retries between them DEBUG; an outage
    past ``DATABASE_AWAY_ERROR_SECONDS`` is said as an ERROR, once."""
    from orchestrator.service import bus as bus_module

    def away_for(times: int) -> Callable[[Changes], Exception | None]:
        left = {"n": times}

        def fail(changes: Changes) -> Exception | None:
            if left["n"]:
                left["n"] -= 1
                return ConnectionResetError("the database went away")
            return None

        return fail

    caplog.set_level(logging.DEBUG, logger="orchestrator.service.bus")
    assert await commit(orchestrator(FailingStore(away_for(4))), [start("o-1")]) == [Verdict.ACCEPTED]
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in said] == ["WARNING", "DEBUG", "DEBUG", "DEBUG", "WARNING"]
    assert said[0][1].startswith("batch of 1 cannot commit (the database went away)")
    assert said[-1][1].startswith("batches commit again, after")

    caplog.clear()
    monkeypatch.setattr(bus_module, "DATABASE_AWAY_ERROR_SECONDS", 0.0)
    assert await commit(orchestrator(FailingStore(away_for(4))), [start("o-2")]) == [Verdict.ACCEPTED]
    assert [r.levelname for r in caplog.records].count("ERROR") == 1
