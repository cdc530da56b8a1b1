"""The topology migration against the real broker: a classic orchestrator queue left by an earlier
version is moved, message for message, into the quorum queue, and the quorum queue dead-letters
at least once."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aio_pika.abc
import pytest
import pytest_asyncio

from orchestrator.adapters.amqp.decoding import UndecodableProperties
from orchestrator.adapters.amqp.topology import (
    ORCHESTRATOR_DELIVERY_LIMIT,
    Topology,
    TopologyError,
    migrate_topology,
    pending_migrations,
    queue_state,
)

from .conftest import AMQP_URL, QUEUES, ROOT, Bench, delete_namespace
from .raw_amqp import RawPublisher

pytestmark = pytest.mark.integration

LIMIT_QUEUE = "limit-test"


@pytest_asyncio.fixture
async def ns() -> AsyncIterator[str]:
    namespace = f"test-topology-{uuid.uuid4().hex[:8]}"
    try:
        yield namespace
    finally:
        await delete_namespace(namespace, (*QUEUES, LIMIT_QUEUE, "at-most-once"))


@pytest_asyncio.fixture
async def connection() -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    connection = await aio_pika.connect(AMQP_URL)  # not robust: passive declares must ask the broker
    try:
        yield connection
    finally:
        await connection.close()


async def legacy_topology(channel: aio_pika.abc.AbstractChannel, ns: str) -> aio_pika.abc.AbstractExchange:
    """What earlier versions declared (docs/protocol.md, section 2, before the quorum queue)."""
    events = await channel.declare_exchange(f"{ns}.events", aio_pika.ExchangeType.TOPIC, durable=True)
    dead = await channel.declare_exchange(f"{ns}.dead", aio_pika.ExchangeType.FANOUT, durable=True)
    dead_letters = await channel.declare_queue(f"{ns}.dead-letter", durable=True)
    await dead_letters.bind(dead)
    queue = await channel.declare_queue(
        f"{ns}.orchestrator", durable=True, arguments={"x-dead-letter-exchange": f"{ns}.dead"}
    )
    await queue.bind(events, "#")
    return events


def event(i: int) -> tuple[aio_pika.Message, str]:
    """The ``i``-th event, with every property a participant might set, and its routing key."""
    routing_key = ("inventory.StockReserved", "payment.PaymentCharged", "orders.OrderPlaced")[i % 3]
    headers: dict[str, Any] = {
        "x-saga-id": f"saga-{i}",
        "x-workflow": "order",
        "n": i,
        "flag": i % 2 == 0,
        "nested": {"a": "b", "k": i},
        "list": [1, "two"],
    }
    if i % 10 == 0:  # a publisher's own: overwritten, as the message came through {ns}.events
        headers["x-original-routing-key"] = "forged.Key"
    message = aio_pika.Message(
        f'{{"order_id": "o-{i}"}}'.encode(),
        headers=headers,
        content_type="application/json",
        content_encoding="utf-8",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=i % 5,
        correlation_id=f"saga-{i}",
        reply_to="nowhere",
        message_id=f"m-{i:04d}-{uuid.uuid4().hex[:6]}",
        timestamp=datetime(2024, 1, 1, tzinfo=UTC).timestamp() + i,
        type=routing_key,
        app_id="test-app",
    )
    return message, routing_key


async def count(connection: aio_pika.abc.AbstractConnection, queue: str) -> int | None:
    state = await queue_state(connection, queue)
    return None if state is None else state.messages


async def wait_for_count(connection: aio_pika.abc.AbstractConnection, queue: str, expected: int) -> None:
    deadline = time.monotonic() + 30
    while (found := await count(connection, queue)) != expected:
        assert time.monotonic() < deadline, f"{queue} holds {found} messages, not {expected}"
        await asyncio.sleep(0.05)


async def test_migration_moves_1000_messages_into_the_quorum_queue_once_each(
    ns: str, connection: aio_pika.abc.AbstractConnection
) -> None:
    topology = Topology(ns)
    channel = await connection.channel(publisher_confirms=True)
    events = await legacy_topology(channel, ns)
    sent: list[tuple[aio_pika.Message, str]] = [event(i) for i in range(1000)]
    await asyncio.gather(*(events.publish(m, routing_key=key) for m, key in sent))
    await wait_for_count(connection, topology.legacy_orchestrator_queue, 1000)
    assert await pending_migrations(AMQP_URL, topology) == [
        f"classic orchestrator queue -> quorum queue: {ns}.orchestrator still exists (1000 messages)"
    ]

    done = await migrate_topology(AMQP_URL, topology, ["inventory"])

    assert any(f"moved 1000 messages from {ns}.orchestrator to {ns}.orchestrator.events" in d for d in done)
    assert await queue_state(connection, topology.legacy_orchestrator_queue) is None
    await wait_for_count(connection, topology.orchestrator_queue, 1000)
    # RabbitMQ compares x-queue-type on a redeclaration: this succeeds only for a quorum queue.
    await channel.declare_queue(
        topology.orchestrator_queue, durable=True, arguments=topology.orchestrator_queue_arguments
    )
    assert await pending_migrations(AMQP_URL, topology) == []

    assert await migrate_topology(AMQP_URL, topology, ["inventory"]) == []  # again: nothing to do
    await wait_for_count(connection, topology.orchestrator_queue, 1000)

    # One new event still reaches the new queue, and only it.
    extra, key = event(1000)
    await events.publish(extra, routing_key=key)
    await wait_for_count(connection, topology.orchestrator_queue, 1001)

    queue = await channel.get_queue(topology.orchestrator_queue, ensure=False)
    received: list[aio_pika.abc.AbstractIncomingMessage] = []
    while (message := await queue.get(fail=False, no_ack=True)) is not None:
        received.append(message)
    assert Counter(m.message_id for m in received) == Counter(m.message_id for m, _ in [*sent, (extra, key)])
    assert [m.message_id for m in received] == [m.message_id for m, _ in sent] + [extra.message_id]
    for (original, routing_key), moved in zip(sent, received, strict=False):
        expected_headers = {
            **(original.headers or {}),
            "x-original-exchange": f"{ns}.events",
            "x-original-routing-key": routing_key,
        }
        headers = dict(moved.headers or {})
        assert headers.pop("x-delivery-count") == 0  # the quorum queue's own, on every delivery
        assert headers == expected_headers
        assert moved.body == original.body
        for name in (
            "content_type",
            "content_encoding",
            "delivery_mode",
            "priority",
            "correlation_id",
            "reply_to",
            "message_id",
            "timestamp",
            "type",
            "app_id",
        ):
            assert getattr(moved, name) == getattr(original, name), name
        assert moved.routing_key == topology.orchestrator_queue


async def test_migration_refuses_while_the_legacy_queue_has_a_consumer(
    ns: str, connection: aio_pika.abc.AbstractConnection
) -> None:
    topology = Topology(ns)
    channel = await connection.channel(publisher_confirms=True)
    events = await legacy_topology(channel, ns)
    for i in range(10):
        await events.publish(*event(i))
    old_orchestrator = await connection.channel()
    await old_orchestrator.set_qos(prefetch_count=3)
    legacy = await old_orchestrator.get_queue(topology.legacy_orchestrator_queue, ensure=False)

    async def never_ack(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        pass

    await legacy.consume(never_ack)  # takes three and never acks them

    with pytest.raises(TopologyError) as raised:
        await migrate_topology(AMQP_URL, topology, [])
    assert str(raised.value) == f"stop the running orchestrator first: {ns}.orchestrator has 1 consumers"

    await old_orchestrator.close()  # its three unacked messages go back
    await wait_for_count(connection, topology.legacy_orchestrator_queue, 10)
    assert await queue_state(connection, topology.orchestrator_queue) is None
    await events.publish(*event(10))  # still bound: nothing changed
    await wait_for_count(connection, topology.legacy_orchestrator_queue, 11)

    await migrate_topology(AMQP_URL, topology, [])
    await wait_for_count(connection, topology.orchestrator_queue, 11)


async def test_a_message_with_bytes_that_are_not_utf8_is_moved_whole(
    ns: str, connection: aio_pika.abc.AbstractConnection
) -> None:
    """Another client may put bytes in a short string that are not UTF-8. Plain pamqp cannot
    decode such a message; with the orchestrator's tolerant decoding (orchestrator.adapters.amqp.broker) the
    migration reads it and republishes the very same bytes, so it reaches the quorum queue and is
    dead-lettered there, with its reason, like any bad message."""
    topology = Topology(ns)
    channel = await connection.channel(publisher_confirms=True)
    events = await legacy_topology(channel, ns)
    for i in range(3):
        await events.publish(*event(i))
    async with RawPublisher(AMQP_URL) as publisher:
        await publisher.publish(
            f"{ns}.events", "x.Y", b"{}", properties={"message_id": b"\xff\xfe-not-utf8", "type": "x.Y"}
        )
        # and one whose header pamqp cannot decode at all (a timestamp past the year 9999)
        await publisher.publish(
            f"{ns}.events", "x.Z", b"{}", properties={"message_id": "ts", "timestamp": 2**63 - 1}
        )
    for i in range(3, 6):
        await events.publish(*event(i))
    await wait_for_count(connection, topology.legacy_orchestrator_queue, 8)

    await asyncio.wait_for(migrate_topology(AMQP_URL, topology, []), 60)

    assert await count(connection, topology.legacy_orchestrator_queue) is None
    raw = await (await connection.channel()).get_underlay_channel()
    ids = []
    undecodable = []
    for _ in range(8):
        message = await raw.basic_get(topology.orchestrator_queue, no_ack=True)
        properties = message.header.properties
        if isinstance(properties, UndecodableProperties):
            undecodable.append(properties.raw)
        else:
            ids.append(properties.message_id.encode("utf-8", "surrogateescape"))
    assert b"\xff\xfe-not-utf8" in ids and len(set(ids)) == 7
    assert len(undecodable) == 1 and b"ts" in undecodable[0]  # moved as its bytes came


async def dead_letter_handler(queue: str) -> str | None:
    """How the broker dead-letters for this quorum queue: its state machine's configuration, read
    with ``rabbitmqctl eval`` (no listing shows the strategy in effect). None where unavailable."""
    if shutil.which("rabbitmqctl") is None or not AMQP_URL.rstrip("/").endswith(":5672"):
        return None
    expression = (
        f'{{ok, Q}} = rabbit_amqqueue:lookup(rabbit_misc:r(<<"/">>, queue, <<"{queue}">>)),'
        " {Name, _} = amqqueue:get_pid(Q),"
        " {ok, {_, S}, _} = ra:local_query({Name, node()}, fun(S) -> S end),"
        " element(2, S)."
    )
    try:
        result = subprocess.run(
            ["rabbitmqctl", "eval", expression], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


async def test_the_orchestrator_queue_dead_letters_at_least_once(
    ns: str, connection: aio_pika.abc.AbstractConnection
) -> None:
    """On 3.10 at-least-once needs reject-publish overflow, or it quietly becomes at-most-once: the
    state machine of the queue says which it got. A twin without reject-publish shows the check
    tells the two apart."""
    topology = Topology(ns)
    channel = await connection.channel()
    await channel.declare_exchange(f"{ns}.events", aio_pika.ExchangeType.TOPIC, durable=True)
    await channel.declare_queue(
        topology.orchestrator_queue, durable=True, arguments=topology.orchestrator_queue_arguments
    )
    twin = {k: v for k, v in topology.orchestrator_queue_arguments.items() if k != "x-overflow"}
    await channel.declare_queue(f"{ns}.at-most-once", durable=True, arguments=twin)

    ours = await dead_letter_handler(topology.orchestrator_queue)
    if ours is None:
        pytest.skip("rabbitmqctl eval is not available against this broker")
    assert "at_least_once" in ours and "at_most_once" not in ours
    other = await dead_letter_handler(f"{ns}.at-most-once")
    assert other is not None and "at_most_once" in other


async def test_a_message_past_the_delivery_limit_lands_in_dead_letter(
    ns: str, connection: aio_pika.abc.AbstractConnection
) -> None:
    """The orchestrator queue's arguments with a delivery limit of 1, on a queue of the test's own:
    a message returned past it arrives in ``{ns}.dead-letter`` with reason ``delivery_limit``."""
    assert ORCHESTRATOR_DELIVERY_LIMIT == 5
    topology = Topology(ns)
    channel = await connection.channel(publisher_confirms=True)
    await legacy_topology(channel, ns)
    arguments = {**topology.orchestrator_queue_arguments, "x-delivery-limit": 1}
    name = f"{ns}.{LIMIT_QUEUE}"
    queue = await channel.declare_queue(name, durable=True, arguments=arguments)
    message, _ = event(1)
    await channel.default_exchange.publish(message, routing_key=name)

    dead_letters = await channel.get_queue(topology.dead_letter_queue, ensure=False)
    returned = 0
    dead = None
    deadline = time.monotonic() + 30
    while dead is None:
        assert time.monotonic() < deadline, f"not dead-lettered after {returned} returns"
        dead = await dead_letters.get(fail=False)
        taken = await queue.get(fail=False) if dead is None else None
        if taken is not None:
            await taken.nack(requeue=True)
            returned += 1
        elif dead is None:
            await asyncio.sleep(0.05)
    assert returned == 2  # delivered twice: up to the limit, then once past it
    await dead.ack()
    assert dead.message_id == message.message_id and dead.body == message.body
    deaths = (dead.headers or {})["x-death"]
    assert isinstance(deaths, list)
    first = deaths[0]
    assert isinstance(first, dict)
    assert first["reason"] == "delivery_limit" and first["queue"] == name


def cli(bench: Bench, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        env=bench.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_orchestrator_run_refuses_a_legacy_queue_and_migrate_moves_it(bench: Bench) -> None:
    assert bench.channel is not None and bench.connection is not None
    topology = Topology(bench.namespace)
    events = await legacy_topology(bench.channel, bench.namespace)
    sent = [event(i) for i in range(20)]
    for message, key in sent:
        await events.publish(message, routing_key=key)

    refused = cli(bench, "run", "--port", "0")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert f"{bench.namespace}.orchestrator still exists (20 messages)" in refused.stderr
    assert refused.stderr.strip().endswith("run 'orchestrator migrate'")

    migrated = cli(bench, "migrate")
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert f"moved 20 messages from {bench.namespace}.orchestrator" in migrated.stdout
    await wait_for_count(bench.connection, topology.orchestrator_queue, 20)
    assert await queue_state(bench.connection, topology.legacy_orchestrator_queue) is None

    again = cli(bench, "migrate")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"topology of namespace {bench.namespace} is up to date" in again.stdout

    # The orchestrator now starts, and takes the moved events (unknown sagas: dead-lettered).
    await bench.serve()
    await wait_for_count(bench.connection, topology.orchestrator_queue, 0)
    assert len(await bench.dead_letters(20)) == 20


def test_migrate_with_an_unreachable_broker_is_one_clear_line(bench: Bench) -> None:
    env = {**bench.env, "ORCHESTRATOR_AMQP_URL": "amqp://guest:hunter2@127.0.0.1:1/"}
    run = subprocess.run(
        [sys.executable, "-m", "orchestrator", "migrate"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert run.stderr.startswith("orchestrator: cannot reach RabbitMQ") and run.stderr.count("\n") == 1
    assert "Traceback" not in run.stderr and "hunter2" not in run.stderr
