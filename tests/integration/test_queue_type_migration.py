"""ORCHESTRATOR_QUEUE_TYPE=quorum on an install whose participant queues and ``{ns}.dead-letter``
are classic (docs/protocol.md, section 2, "Changing the queue type"): ``orchestrator migrate``
rebuilds them as quorum queues under their own names, losing no command and no dead letter, and a
participant started with the new setting takes every command; one still on the old setting
cannot start, rather than take copies of commands from a queue of its own."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator

import aio_pika
import aio_pika.abc
import orjson
import pytest
import pytest_asyncio

from orchestrator.adapters.amqp.topology import (
    Topology,
    TopologyError,
    declare,
    migrate_topology,
    pending_migrations,
    queue_state,
)

from .conftest import AMQP_URL, QUEUES, ROOT

pytestmark = pytest.mark.integration

SERVICES = ("inventory", "payment")
COMMANDS = 300
DEAD_LETTERS = 20


@pytest_asyncio.fixture
async def ns() -> AsyncIterator[str]:
    from .conftest import delete_namespace

    namespace = f"test-qtype-{uuid.uuid4().hex[:8]}"
    try:
        yield namespace
    finally:
        holding = tuple(f"{q}.migrating" for q in QUEUES)
        await delete_namespace(namespace, (*QUEUES, *holding, "tap"))


@pytest_asyncio.fixture
async def connection() -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    connection = await aio_pika.connect(AMQP_URL)  # not robust: passive declares must ask the broker
    try:
        yield connection
    finally:
        await connection.close()


async def messages(connection: aio_pika.abc.AbstractConnection, queue: str) -> int | None:
    state = await queue_state(connection, queue)
    return None if state is None else state.messages


async def wait_for(connection: aio_pika.abc.AbstractConnection, queue: str, expected: int) -> None:
    deadline = time.monotonic() + 60
    while (found := await messages(connection, queue)) != expected:
        assert time.monotonic() < deadline, f"{queue} holds {found} messages, not {expected}"
        await asyncio.sleep(0.05)


async def classic_install_with_work(connection: aio_pika.abc.AbstractConnection, ns: str) -> set[str]:
    """What an earlier version declared, with commands waiting for a participant that is down and
    dead letters waiting for an orchestrator that is down; the commands' message ids."""
    channel = await connection.channel(publisher_confirms=True)
    await declare(channel, Topology(ns), SERVICES)
    commands = await channel.get_exchange(f"{ns}.commands")
    dead = await channel.get_exchange(f"{ns}.dead")
    ids = set()
    for i in range(COMMANDS):
        message_id = f"cmd-{i}-{uuid.uuid4().hex[:6]}"
        ids.add(message_id)
        body = {"order_id": f"o-{i}", "lines": [{"sku": "sku-1", "quantity": 1}]}
        await commands.publish(
            aio_pika.Message(
                orjson.dumps(body),
                type="inventory.ReserveStock",
                message_id=message_id,
                correlation_id=f"saga-{i}",
                headers={"x-saga-id": f"saga-{i}", "x-workflow": "order"},
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key="inventory.ReserveStock",
        )
    for i in range(DEAD_LETTERS):
        await dead.publish(
            aio_pika.Message(b"{}", message_id=f"dead-{i}", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key="x",
        )
    await channel.close()
    await wait_for(connection, f"{ns}.inventory", COMMANDS)
    await wait_for(connection, f"{ns}.dead-letter", DEAD_LETTERS)
    return ids


def participant(ns: str, queue_type: str, *options: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "ORCHESTRATOR_AMQP_URL": AMQP_URL,
        "ORCHESTRATOR_NAMESPACE": ns,
        "ORCHESTRATOR_QUEUE_TYPE": queue_type,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "participants", "inventory", "--shutdown-grace", "5", *options],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


async def test_migrate_rebuilds_the_queues_as_quorum_and_a_new_participant_takes_every_command(
    ns: str, connection: aio_pika.abc.AbstractConnection
) -> None:
    ids = await classic_install_with_work(connection, ns)
    quorum = Topology(ns, queue_type="quorum")
    pending = await pending_migrations(AMQP_URL, quorum, SERVICES)
    assert len(pending) == 1 and f"{ns}.inventory is not a quorum queue" in pending[0], pending
    assert f"{ns}.dead-letter is not a quorum queue" in pending[0]

    channel = await connection.channel()
    tap = await channel.declare_queue(f"{ns}.tap", durable=True)
    await tap.bind(f"{ns}.events", "#")
    # A participant of the old setting still consumes its queue: nothing is moved from under it.
    # It holds what it took past its stop (a long delay), which puts it back in the queue.
    old = participant(ns, "classic", "--delay", "60")
    try:
        deadline = time.monotonic() + 30
        while (state := await queue_state(connection, f"{ns}.inventory")) is None or not state.consumers:
            assert time.monotonic() < deadline and old.poll() is None
            await asyncio.sleep(0.05)
        with pytest.raises(TopologyError, match=f"stop what consumes {ns}.inventory first"):
            await migrate_topology(AMQP_URL, quorum, SERVICES)
    finally:
        old.terminate()
        old.wait(20)
    assert old.returncode == 0
    await wait_for(connection, f"{ns}.inventory", COMMANDS)
    left = COMMANDS

    started = time.monotonic()
    done = await migrate_topology(AMQP_URL, quorum, SERVICES)
    took = time.monotonic() - started
    print(f"migrated {left} commands and {DEAD_LETTERS} dead letters in {took:.2f}s: {done}")
    assert any(f"moved {left} messages from {ns}.inventory to {ns}.inventory.migrating" in d for d in done)
    assert any(f"declared {ns}.dead-letter as a quorum queue and moved {DEAD_LETTERS}" in d for d in done)
    for name in (f"{ns}.inventory", f"{ns}.payment", f"{ns}.dead-letter"):
        assert await queue_state(connection, f"{name}.migrating") is None
    await wait_for(connection, f"{ns}.inventory", left)
    await wait_for(connection, f"{ns}.dead-letter", DEAD_LETTERS)
    # RabbitMQ compares x-queue-type on a redeclaration: these succeed only for quorum queues.
    check = await connection.channel()
    await check.declare_queue(f"{ns}.inventory", durable=True, arguments=quorum.queue_arguments)
    await check.declare_queue(f"{ns}.dead-letter", durable=True, arguments=quorum.dead_letter_queue_arguments)
    await check.close()
    assert await pending_migrations(AMQP_URL, quorum, SERVICES) == []
    assert await migrate_topology(AMQP_URL, quorum, SERVICES) == []  # again: nothing to do

    # The old setting cannot start on the new queues: loud, and the commands wait.
    stale = participant(ns, "classic")
    output, _ = stale.communicate(timeout=60)
    assert stale.returncode == 2, output
    assert "ORCHESTRATOR_QUEUE_TYPE" in output
    assert await messages(connection, f"{ns}.inventory") == left

    # The new setting takes every one of them, and answers each.
    new = participant(ns, "quorum")
    try:
        await wait_for(connection, f"{ns}.inventory", 0)
        await wait_for(connection, f"{ns}.tap", COMMANDS)
    finally:
        new.terminate()
        output, _ = new.communicate(timeout=20)
    assert new.returncode == 0, output
    answered = set()
    tap_channel = await connection.channel()
    tap = await tap_channel.get_queue(f"{ns}.tap", ensure=False)
    while (message := await tap.get(no_ack=True, fail=False)) is not None:
        assert message.type == "inventory.StockReserved"
        answered.add(message.correlation_id)
    assert answered == {f"saga-{i}" for i in range(COMMANDS)}
    assert len(ids) == COMMANDS


async def test_run_refuses_queues_of_the_other_type_and_says_to_migrate(
    ns: str, connection: aio_pika.abc.AbstractConnection, database_url: str
) -> None:
    """``orchestrator run`` would otherwise fail later, declaring, with RabbitMQ's bare 406."""
    channel = await connection.channel()
    await declare(channel, Topology(ns), ["inventory", "payment", "shipping"])
    await channel.close()
    env = {
        **os.environ,
        "ORCHESTRATOR_AMQP_URL": AMQP_URL,
        "ORCHESTRATOR_DATABASE_URL": database_url,
        "ORCHESTRATOR_NAMESPACE": ns,
        "ORCHESTRATOR_QUEUE_TYPE": "quorum",
        "ORCHESTRATOR_API_TOKEN": "queue-type-migration-token",
    }
    run = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "orchestrator", "run", "--port", "0"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert f"the topology of namespace {ns} needs migrating" in run.stderr, run.stderr
    assert f"{ns}.inventory is not a quorum queue" in run.stderr
    assert "run 'orchestrator migrate'" in run.stderr
