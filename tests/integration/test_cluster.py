"""A broker node goes under load, in a 3-node RabbitMQ cluster of the test's own
(tests/integration/private_cluster.py): with quorum queues (ORCHESTRATOR_QUEUE_TYPE=quorum) every
saga completes, nothing is dead-lettered, and ``orchestrator verify`` is clean.

The node stopped is the one every queue's leader lives on (``orchestrator migrate`` declared them
through it: RabbitMQ puts a quorum queue's leader on the declaring client's node), and the very
node every process is connected to: the orchestrator and the participants (the kit) are given all
three nodes, that one first (``amqp://...@node-1,node-2,node-3/``, docs/scaling.md). Each queue
must elect a new leader, and each process must move to the next node, while the sagas go on.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import asyncpg
import pytest
import pytest_asyncio

from orchestrator.adapters.amqp.nodes import NodeRing
from orchestrator.adapters.postgres.store import PostgresStore

from .conftest import ROOT, Bench, cloned_database, unique
from .private_broker import PrivateBroker
from .private_cluster import PrivateCluster

pytestmark = pytest.mark.integration

order_ids = unique("cluster")
BEFORE = 200
AFTER = 60
#: the order saga's participants (the escrow's are not needed here)
ORDER_SERVICES = ("inventory", "payment", "shipping")


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    with PrivateCluster() as cluster:
        print(f"3-node cluster started in {cluster.start_seconds:.1f}s")
        yield cluster


@pytest_asyncio.fixture
async def cluster_bench(
    template_database: str, tmp_path: Path, cluster: PrivateCluster, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Bench]:
    monkeypatch.setenv("ORCHESTRATOR_QUEUE_TYPE", "quorum")  # Bench.env passes the environment on
    leader = cluster.nodes[2]
    async with cloned_database(template_database) as database_url:
        setup = Bench(f"test-{uuid.uuid4().hex[:8]}", database_url, tmp_path, amqp_url=leader.url)
        await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "orchestrator", "migrate"],
            env=setup.env,
            check=True,
            cwd=ROOT,
            timeout=120,
            capture_output=True,
        )
        # every process: all three nodes, the one to be stopped first
        setup.amqp_url = (
            "amqp://guest:guest@"
            + ",".join(f"127.0.0.1:{node.port}" for node in (leader, *cluster.nodes[:2]))
            + "/"
        )
        # the test's publisher: a node that stays
        setup.connection = await aio_pika.connect(cluster.nodes[1].url)
        setup.channel = await setup.connection.channel(publisher_confirms=True)
        setup.store = PostgresStore.from_url(database_url, pool_size=2)
        try:
            yield setup
        finally:
            for node in cluster.nodes:
                node.ensure_running()
            await setup.cleanup()


def connection_names(node: PrivateBroker) -> Counter[str]:
    """The client-given names of the connections open on a node (``connection_name``)."""
    listing = node.ctl("list_connections", "client_properties", "--no-table-headers")
    found: Counter[str] = Counter()
    for line in listing.splitlines():
        if "connection_name" in line:
            found[line.split("connection_name", 1)[1].split('"')[2]] += 1
    return found


async def test_a_node_stopped_under_load_loses_nothing(cluster_bench: Bench, cluster: PrivateCluster) -> None:
    bench = cluster_bench
    leader = cluster.nodes[2]
    # The plugin partitioned consumers route with is on the cluster.
    assert bench.channel is not None
    hashed = await bench.channel.declare_exchange(
        f"{bench.namespace}.hash", "x-consistent-hash", auto_delete=True
    )
    await hashed.delete()

    # What the test counts on: classic queues, or queues led elsewhere, would prove nothing.
    listing = await asyncio.to_thread(
        leader.ctl, "list_queues", "name", "type", "leader", "--no-table-headers"
    )
    rows = [line.split() for line in listing.splitlines() if line.startswith(f"{bench.namespace}.")]
    assert len(rows) == 8, listing  # six participants', dead-letter, the orchestrator's
    assert {(kind, node) for _, kind, node in rows} == {("quorum", leader.node)}, listing

    orchestrator = await bench.start_orchestrator()
    await bench.start_participants(*ORDER_SERVICES)
    # Every process is connected to the node about to stop.
    names = ["orchestrator-consume", "orchestrator-publish", *(f"participant-{s}" for s in ORDER_SERVICES)]
    on_leader = await asyncio.to_thread(connection_names, leader)
    assert all(on_leader[name] for name in names), on_leader
    before = [order_ids() for _ in range(BEFORE)]
    started = time.monotonic()
    for key in before:
        await bench.place_order(key)
    # Mid-run: some sagas finished, most not.
    await bench.finished("order", before[:30], timeout=120)
    assert bench.store is not None
    counter = await asyncpg.connect(bench.database_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        done_then = await counter.fetchval("SELECT count(*) FROM sagas WHERE status = 'completed'")
    finally:
        await counter.close()
    stop_started = time.monotonic()
    await asyncio.to_thread(leader.stop_app)
    stopped_after = stop_started - started

    after = [order_ids() for _ in range(AFTER)]
    for key in after:
        await bench.place_order(key)
    sagas = await bench.finished("order", before + after, timeout=240)
    took = time.monotonic() - started
    print(
        f"{BEFORE + AFTER} sagas in {took:.1f}s; the leader's node stopped after {stopped_after:.1f}s,"
        f" when {done_then} of the first {BEFORE} had completed"
    )

    assert {s.status for s in sagas.values()} == {"completed"}
    # and each moved to another node, with no ERROR line or traceback for a fault it rode out
    elsewhere = sum(
        [await asyncio.to_thread(connection_names, node) for node in cluster.nodes[:2]], Counter[str]()
    )
    assert all(elsewhere[name] for name in names), elsewhere
    for process in bench.processes:
        output = process.output()
        assert " ERROR " not in output and "Traceback" not in output, (process.name, output[-3000:])
    assert await bench.dead_letters(0) == []
    assert orchestrator.popen.poll() is None, orchestrator.output()[-3000:]
    verify = await asyncio.to_thread(bench.verify)
    assert verify.returncode == 0, verify.stdout + verify.stderr


async def test_a_ring_connects_to_the_first_node_that_answers() -> None:
    """Two nodes that refuse (nothing listens on their ports), then the real broker."""
    ring = NodeRing("amqp://guest:guest@127.0.0.1:1,127.0.0.1:2,127.0.0.1:5672/")
    connection = await asyncio.wait_for(ring.connect_aiormq(), 10)
    try:
        assert connection.url.port == 5672
        assert ring.order()[0].endswith(":5672/")  # the next attempt starts where it is connected
    finally:
        await connection.close()
