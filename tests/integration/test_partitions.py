"""Partitioned consumption on the real broker and database (docs/scaling.md).

Routing: start events reach the queue every replica takes from; correlated messages reach one
partition per saga, the same one every time. Ownership: two ``orchestrator run`` processes split
the partitions, and when one is killed with SIGKILL the other takes its partitions and finishes
its sagas, each message decided once. Migration: 1 -> 4 -> 2 -> 1 partitions loses no message.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import aio_pika
import asyncpg
import pytest

from orchestrator.adapters.amqp.topology import (
    Topology,
    declare,
    migrate_topology,
    pending_migrations,
    queue_state,
)
from orchestrator.adapters.postgres.partitions import lock_classes
from orchestrator.adapters.postgres.store import driver_dsn
from orchestrator.core.engine import saga_id_for
from orchestrator.examples.contracts import StockReserved
from tests.integration.test_releases import reach, reply

from .conftest import AMQP_URL, Bench, delete_namespace
from .proxy import Proxy

pytestmark = pytest.mark.integration

SERVICES = ("inventory", "payment", "shipping")
START = "orders.OrderPlaced"


@pytest.fixture
async def namespace() -> AsyncIterator[str]:
    name = f"test-parts-{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        await delete_namespace(name)


async def counts(
    connection: aio_pika.abc.AbstractConnection, topology: Topology, upto: int = 6
) -> dict[str, int]:
    """Messages ready in the orchestrator's queue and in each partition queue that exists."""
    found = {}
    for name in [topology.orchestrator_queue, *map(topology.partition_queue, range(upto))]:
        state = await queue_state(connection, name)
        if state is not None:
            found[name] = state.messages
    return found


async def publish(channel: aio_pika.abc.AbstractChannel, namespace: str, count: int) -> None:
    """``count`` start events, ``count`` correlated replies and one uncorrelated event of a type
    nobody takes, every one confirmed by the broker (mandatory: routed somewhere)."""
    events = await channel.get_exchange(f"{namespace}.events")
    for i in range(count):
        await events.publish(aio_pika.Message(b"{}", type=START), routing_key=START, mandatory=True)
        reply = aio_pika.Message(b"{}", type="payment.PaymentCharged", correlation_id=f"saga-{i}")
        await events.publish(reply, routing_key="payment.PaymentCharged", mandatory=True)
    await events.publish(
        aio_pika.Message(b"{}", type="nobody.Takes"), routing_key="nobody.Takes", mandatory=True
    )


async def test_starts_go_to_the_shared_queue_and_each_saga_to_one_partition(namespace: str) -> None:
    topology = Topology(namespace, partitions=4)
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await declare(channel, topology, SERVICES, {START})
        await publish(channel, namespace, 200)
        await publish(channel, namespace, 200)  # the same sagas again: the same partitions
        found = await counts(connection, topology)
        assert found[topology.orchestrator_queue] == 400, found  # the starts, and only them
        partitions = [found[topology.partition_queue(p)] for p in range(4)]
        assert sum(partitions) == 402 and min(partitions) > 40, partitions  # spread, nothing lost
        seen: dict[str, str] = {}
        for partition in range(4):
            queue = await channel.get_queue(topology.partition_queue(partition), ensure=False)
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                if message.correlation_id:
                    assert seen.setdefault(message.correlation_id, queue.name) == queue.name
        assert len(seen) == 200
    finally:
        await connection.close()


async def test_the_partition_count_changes_through_migrate_and_loses_nothing(namespace: str) -> None:
    def topology(partitions: int) -> Topology:
        return Topology(namespace, partitions=partitions)

    await migrate_topology(AMQP_URL, topology(1), SERVICES, {START})
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await publish(channel, namespace, 50)
        assert await counts(connection, topology(1)) == {topology(1).orchestrator_queue: 101}
        # the running service would refuse to start on the old layout
        assert "ORCHESTRATOR_PARTITIONS is 4" in " ".join(await pending_migrations(AMQP_URL, topology(4)))

        await migrate_topology(AMQP_URL, topology(4), SERVICES, {START})
        assert await pending_migrations(AMQP_URL, topology(4)) == []
        await publish(channel, namespace, 50)
        found = await counts(connection, topology(4))
        assert len(found) == 5 and sum(found.values()) == 202, found
        assert found[topology(4).orchestrator_queue] == 101 + 50  # the old messages stay put

        done = await migrate_topology(AMQP_URL, topology(2), SERVICES, {START})
        assert any("deleted" in line for line in done), done
        found = await counts(connection, topology(2))
        assert len(found) == 3 and sum(found.values()) == 202, found
        await publish(channel, namespace, 50)
        found = await counts(connection, topology(2))
        assert sum(found.values()) == 303 and found[topology(2).orchestrator_queue] >= 101 + 100

        await migrate_topology(AMQP_URL, topology(1), SERVICES, {START})
        assert await counts(connection, topology(1)) == {topology(1).orchestrator_queue: 303}
        await publish(channel, namespace, 10)  # the single queue takes everything again
        assert await counts(connection, topology(1)) == {topology(1).orchestrator_queue: 324}
        assert await pending_migrations(AMQP_URL, topology(1)) == []
    finally:
        await connection.close()


async def test_migrate_refuses_while_a_replica_consumes(namespace: str) -> None:
    await migrate_topology(AMQP_URL, Topology(namespace, partitions=1), SERVICES, {START})
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(Topology(namespace).orchestrator_queue, ensure=False)

        async def hold(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            pass  # a replica that takes messages: left unacked

        await queue.consume(hold)
        with pytest.raises(Exception, match="stop the running orchestrator first"):
            await migrate_topology(AMQP_URL, Topology(namespace, partitions=4), SERVICES, {START})
    finally:
        await connection.close()


async def holders(bench: Bench) -> Counter[int]:
    """How many partitions each database session holds in the bench's namespace."""
    partition_class, _ = lock_classes(bench.namespace)
    connection = await asyncpg.connect(driver_dsn(bench.database_url))
    try:
        rows = await connection.fetch(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND classid::bigint = $1",
            partition_class,
        )
    finally:
        await connection.close()
    return Counter(r["pid"] for r in rows)


async def wait_for_holders(bench: Bench, shares: list[int], timeout: float = 30) -> None:
    until = asyncio.get_running_loop().time() + timeout
    while sorted((await holders(bench)).values()) != shares:
        if asyncio.get_running_loop().time() > until:
            raise AssertionError(f"partitions held {await holders(bench)}, not {shares}")
        await asyncio.sleep(0.2)


ORDERS = 150


async def test_two_replicas_share_the_partitions_and_survive_each_others_death(bench: Bench) -> None:
    env = {"ORCHESTRATOR_PARTITIONS": "4", "ORCHESTRATOR_REBALANCE_SECONDS": "0.5"}
    first = await bench.start_orchestrator(env=env)
    await wait_for_holders(bench, [4])
    second = await bench.start_orchestrator(env=env)
    await wait_for_holders(bench, [2, 2])  # the first gave up half to the newcomer
    await bench.work()
    keys = [f"part-{uuid.uuid4().hex[:6]}-{i}" for i in range(ORDERS)]
    for key in keys[: ORDERS // 2]:
        await bench.place_order(key)
    first.kill()  # SIGKILL, with sagas in flight
    await wait_for_holders(bench, [4])  # the survivor took the dead one's partitions
    for key in keys[ORDERS // 2 :]:
        await bench.place_order(key)
    sagas = await bench.finished("order", keys, timeout=120)
    assert {s.status for s in sagas.values()} <= {"completed", "compensated"}
    assert bench.store is not None
    for key in keys:  # nothing decided twice, whoever decided it
        journal = await bench.store.journal(saga_id_for("order", key))
        taken = Counter(entry.message.message_id for entry in journal)
        assert max(taken.values()) == 1, (key, taken)
    assert second.popen.poll() is None
    assert bench.verify().returncode == 0


async def test_run_refuses_a_layout_that_does_not_match_the_setting(bench: Bench) -> None:
    """A replica started with another partition count than the broker's layout would consume
    queues nothing routes to, or leave partitions unconsumed: it refuses, and says what to do."""
    first = await bench.start_orchestrator()  # one queue: the layout of ORCHESTRATOR_PARTITIONS=1
    first.stop()
    refused = bench.spawn(
        "orchestrator",
        "orchestrator",
        "run",
        "--port",
        "0",
        env={**bench.env, "ORCHESTRATOR_PARTITIONS": "4"},
    )
    assert refused.popen.wait(60) == 2
    assert "ORCHESTRATOR_PARTITIONS is 4 and the broker has one queue" in refused.output()
    assert "run 'orchestrator migrate'" in refused.output()


async def test_run_says_how_to_enable_the_plugin_a_broker_lacks(private_bench: Bench) -> None:
    """The private node runs without plugins, like a broker nobody prepared for partitions."""
    refused = private_bench.spawn(
        "orchestrator",
        "orchestrator",
        "run",
        "--port",
        "0",
        env={**private_bench.env, "ORCHESTRATOR_PARTITIONS": "4"},
    )
    assert refused.popen.wait(60) == 2
    assert "rabbitmq-plugins enable rabbitmq_consistent_hash_exchange" in refused.output()


async def test_a_replica_without_a_sagas_release_hands_its_messages_to_one_with_it(bench: Bench) -> None:
    """A rolling deploy on partitions: release 2's replies that hash into the old replica's
    partition are handed over to the queue every replica takes from, not given back to a queue
    only the old replica reads (whose delivery limit would dead-letter them), and the new one
    decides them."""
    new = await bench.serve("tests.releases.order_v2", partitions=2, rebalance_seconds=0.5)
    old = await bench.serve(partitions=2, rebalance_seconds=0.5)
    bench.api_url = new.api_url
    await wait_for_holders(bench, [1, 1])
    keys = [f"roll-{uuid.uuid4().hex[:6]}-{i}" for i in range(20)]
    async with bench.api() as api:
        for key in keys:
            body = {"customer_id": "c-1", "lines": [{"sku": "sku-1", "quantity": 1}], "amount_cents": 1000}
            started = await api.post("/sagas", json={"workflow": "order", "key": key, "data": body})
            assert started.status_code in (200, 201), started.text
    for key in keys:
        await reply(bench, key, StockReserved(key, f"res-{key}"))
    await reach(bench, {key: "payment" for key in keys}, timeout=60)  # release 2's state
    assert "for sagas on a release this process does not load" in old.output()
    assert await bench.dead_letters(1, timeout=2) == []
    assert new.running and old.running


async def test_a_replica_cut_off_from_the_broker_lets_the_other_take_its_partitions(bench: Bench) -> None:
    """The database still answers it, so its locks would live on while it consumes nothing: it
    gives them up after a grace, and the other replica finishes the sagas alone."""
    proxy = Proxy(target_port=5672)
    await proxy.open()
    env = {"ORCHESTRATOR_PARTITIONS": "4", "ORCHESTRATOR_REBALANCE_SECONDS": "0.5"}
    cut_off_url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
    try:
        first = await bench.start_orchestrator(env={**env, "ORCHESTRATOR_AMQP_URL": cut_off_url})
        second = await bench.start_orchestrator(env=env)
        await wait_for_holders(bench, [2, 2])
        await bench.work()
        await proxy.cut()
        await wait_for_holders(bench, [4])
        await bench.wait_for_log(first, "giving up 2 partitions to the other replicas")
        keys = [f"cut-{uuid.uuid4().hex[:6]}-{i}" for i in range(40)]
        for key in keys:
            await bench.place_order(key)
        sagas = await bench.finished("order", keys, timeout=60)
        assert {s.status for s in sagas.values()} <= {"completed", "compensated"}
        await proxy.open()  # back: the two share again
        await wait_for_holders(bench, [2, 2], timeout=60)
        assert first.popen.poll() is None and second.popen.poll() is None
    finally:
        with contextlib.suppress(Exception):
            await proxy.cut()
