"""Replicas take "now" from the database (issue 14, item 3): a host whose clock is off neither
fires a deadline early nor late, and sets deadlines by the database's time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson

from orchestrator.adapters.memory import MemoryStore
from orchestrator.adapters.scheduler import SchedulerAlarm
from orchestrator.core.engine import saga_id_for
from orchestrator.core.messages import dump
from orchestrator.core.routing import Registry
from orchestrator.examples import WORKFLOWS
from orchestrator.examples.contracts import Line, OrderPlaced
from orchestrator.service.batch import Envelope, process_batch
from orchestrator.service.bus import MessageBus
from orchestrator.service.clock import DatabaseClock
from orchestrator.service.deadlines import DeadlineAlarm
from tests.outlets import NoRelay

HOUR = timedelta(hours=1)


def bus_on(registry: Registry, store: MemoryStore, clock: DatabaseClock) -> MessageBus:
    """The bus, deciding by ``clock``: the alarm's sweep fires through it."""
    return MessageBus(registry, store, outbox=NoRelay(), clock=clock.now)


def clock_ahead_by(offset: timedelta) -> DatabaseClock:
    async def read() -> datetime:
        return datetime.now(UTC) + offset

    return DatabaseClock(read)


async def test_the_offset_is_the_database_clock_less_this_hosts() -> None:
    clock = clock_ahead_by(HOUR)
    offset = await clock.sync()
    assert abs(offset - HOUR) < timedelta(seconds=1)
    assert abs(clock.now() - (datetime.now(UTC) + HOUR)) < timedelta(seconds=1)
    due = datetime.now(UTC) + 2 * HOUR
    assert abs(clock.local(due) - (due - HOUR)) < timedelta(seconds=1)  # when this host wakes up


async def test_a_host_whose_clock_is_behind_fires_a_due_deadline_on_the_databases_time() -> None:
    registry = Registry(WORKFLOWS)
    store = MemoryStore()
    database_now = datetime.now(UTC) + HOUR  # this host's clock is an hour behind the database's
    placed = OrderPlaced("o-clock", "c-1", [Line("sku-1", 1)], 100)
    started = database_now - timedelta(minutes=5)  # the reserve step's 30 s passed long ago
    envelope = Envelope(orjson.dumps(dump(placed)), placed.TYPE, "p-clock")
    await process_batch(registry, store, [envelope], started)

    local = DeadlineAlarm(registry, store, SchedulerAlarm())  # this host's clock alone
    await local.start(bus_on(registry, store, local.clock).fire_due)
    local.stop()
    saga_id = saga_id_for("order", "o-clock")
    assert (await store.get_saga(saga_id)).state == "reserve"  # type: ignore[union-attr]  # not due for it

    clock = clock_ahead_by(HOUR)
    await clock.sync()
    alarm = DeadlineAlarm(registry, store, SchedulerAlarm(), clock=clock)
    await alarm.start(bus_on(registry, store, clock).fire_due)
    alarm.stop()
    saga = await store.get_saga(saga_id)
    assert saga is not None and saga.state != "reserve"  # fired: due by the database's clock
    assert alarm.fired == 1
