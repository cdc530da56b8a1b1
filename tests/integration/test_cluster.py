"""A broker node goes under load, in a 3-node RabbitMQ cluster of the test's own
(tests/integration/private_cluster.py): with quorum queues (ORCHESTRATOR_QUEUE_TYPE=quorum) every
saga completes, nothing is dead-lettered, and ``orchestrator verify`` is clean.

The node stopped is the one every queue's leader lives on: ``orchestrator migrate`` declared them
through it (RabbitMQ puts a quorum queue's leader on the declaring client's node), so each queue
must elect a new leader while its consumers, on the other two nodes, go on. The processes connect
to those two: aio-pika and aiormq reconnect to the one host of their URL only (docs/architecture.md,
"Connections: TLS, clusters"), so a process whose node is stopped would wait for that node."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from orchestrator.adapters.postgres.store import PostgresStore

from .conftest import ROOT, Bench, cloned_database, unique
from .private_cluster import PrivateCluster

pytestmark = pytest.mark.integration

order_ids = unique("cluster")
BEFORE = 300
AFTER = 100


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
        setup.amqp_url = cluster.nodes[1].url  # the participants', and the test's publisher's
        await setup.connect()
        setup.store = PostgresStore.from_url(database_url, pool_size=2)
        try:
            yield setup
        finally:
            for node in cluster.nodes:
                node.ensure_running()
            await setup.cleanup()


async def test_a_node_stopped_under_load_loses_nothing(cluster_bench: Bench, cluster: PrivateCluster) -> None:
    bench = cluster_bench
    first, _, leader = cluster.nodes
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

    orchestrator = await bench.start_orchestrator(env={"ORCHESTRATOR_AMQP_URL": first.url})
    await bench.start_participants()
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
    assert await bench.dead_letters(0) == []
    assert orchestrator.popen.poll() is None, orchestrator.output()[-3000:]
    verify = await asyncio.to_thread(bench.verify)
    assert verify.returncode == 0, verify.stdout + verify.stderr
