"""The database fails over under load, and the service follows the new primary.

A pg_auto_failover cluster of the test's own (tests/integration/private_failover.py): a primary, a
synchronous standby and a monitor. Two orchestrator replicas on four partitions and the example
participants (the participant kit, their inboxes in the same cluster) all take the same
multi-host URL with ``target_session_attrs=read-write``. Mid-run, the primary's keeper, server and
every backend are killed with SIGKILL: the monitor promotes the standby, every process reconnects
to it, the partitions are taken again under new epochs, and every saga completes, each decided
once and each charged once; ``orchestrator verify`` is clean.

The read-only case is the other half: a session opened on a primary that is later made read-only
(as a demoted primary that was not restarted would be) answers 25006; that session and its pool
are dropped, and the next transaction reaches the host that takes writes.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from sqlalchemy import text

from orchestrator.adapters.postgres.store import PostgresStore, driver_dsn
from orchestrator.core.ids import saga_id_for
from orchestrator.service.faults import Fault
from orchestrator.settings import database_url

from .conftest import Bench, delete_namespace, unique
from .private_failover import FailoverPostgres
from .private_postgres import PrivatePostgres
from .test_partitions import holders
from .test_postgres_restart import accepted_by

pytestmark = pytest.mark.integration

order_ids = unique("failover")
BEFORE = 150
AFTER = 50
PARTITIONS = 4
#: the order saga's participants: the escrow's are not needed here
ORDER_SERVICES = ("inventory", "payment", "shipping")


@pytest.fixture(scope="module")
def ha() -> Iterator[FailoverPostgres]:
    with FailoverPostgres() as cluster:
        print(f"pg_auto_failover: monitor, primary and synchronous standby in {cluster.start_seconds:.1f}s")
        yield cluster


@pytest_asyncio.fixture
async def ha_bench(ha: FailoverPostgres, tmp_path: Path) -> AsyncIterator[Bench]:
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    setup = Bench(namespace, ha.url(f"orchestrator_{uuid.uuid4().hex[:8]}"), tmp_path)
    await setup.migrate({"ORCHESTRATOR_PARTITIONS": str(PARTITIONS)})
    await setup.connect()
    setup.store = PostgresStore.from_url(database_url(setup.database_url), pool_size=2)
    try:
        yield setup
    finally:
        await setup.cleanup()
        await delete_namespace(namespace)


async def wait_for_holders(bench: Bench, shares: list[int], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if sorted((await holders(bench)).values()) == shares:
                return
        except (OSError, asyncpg.PostgresError):
            pass  # the cluster between primaries
        assert time.monotonic() < deadline, f"partitions held {await holders(bench)}, not {shares}"
        await asyncio.sleep(0.2)


async def test_the_service_follows_a_promoted_standby_and_decides_nothing_twice(
    ha_bench: Bench, ha: FailoverPostgres
) -> None:
    bench = ha_bench
    env = {"ORCHESTRATOR_PARTITIONS": str(PARTITIONS), "ORCHESTRATOR_REBALANCE_SECONDS": "0.5"}
    replicas = []
    for _ in range(2):
        process = await bench.start_orchestrator(env=env)
        assert bench.api_url is not None
        replicas.append((process, bench.api_url))
    await wait_for_holders(bench, [2, 2])
    await bench.start_participants(*ORDER_SERVICES)

    before = [order_ids() for _ in range(BEFORE)]
    started = time.monotonic()
    for key in before:
        await bench.place_order(key)
    await bench.finished("order", before[:20], timeout=120)  # mid-run: some done, most not
    counts = [await accepted_by(url) for _, url in replicas]
    old = ha.primary()
    assert old is not None
    killed_at = time.time()
    kill_started = time.monotonic()
    await asyncio.to_thread(ha.kill, old)
    after = [order_ids() for _ in range(AFTER)]
    for key in after:  # published while the database is away: the broker keeps them
        await bench.place_order(key)
    promoted = await asyncio.to_thread(ha.wait_promoted, old)
    promotion_took = time.monotonic() - kill_started

    assert bench.store is not None
    await bench.store.close()  # the test's own pool lost its primary too
    bench.store = PostgresStore.from_url(database_url(bench.database_url), pool_size=2)
    sagas = await bench.finished("order", before + after, timeout=240)
    took = time.monotonic() - started

    connection = await asyncpg.connect(driver_dsn(bench.database_url))
    try:
        assert await connection.fetchval("SELECT inet_server_port()") == promoted
        first_decision = await connection.fetchval(
            "SELECT min(recorded_at) FROM journal WHERE recorded_at > to_timestamp($1)", killed_at
        )
        charges = Counter(
            r["order_id"]
            for r in await connection.fetch("SELECT order_id FROM payment.ledger WHERE kind = 'charge'")
        )
    finally:
        await connection.close()
    decided_after = first_decision.timestamp() - killed_at if first_decision is not None else float("nan")
    print(
        f"{BEFORE + AFTER} sagas in {took:.1f}s; primary {old} killed, {promoted} promoted after"
        f" {promotion_took:.1f}s; first decision committed on it {decided_after:.1f}s after the kill"
    )

    assert {s.status for s in sagas.values()} <= {"completed", "compensated"}
    assert sum(1 for s in sagas.values() if s.status == "completed") >= BEFORE  # the examples decline a few
    for key in before + after:  # nothing decided twice, whichever replica and primary decided it
        journal = await bench.store.journal(saga_id_for("order", key))
        taken = Counter(entry.message.message_id for entry in journal)
        assert max(taken.values()) == 1, (key, taken)
    # no effect doubled: the payment participant's kit inbox answered any repeat from its record
    assert charges and max(charges.values()) == 1, charges.most_common(3)
    await wait_for_holders(bench, [2, 2])  # the partitions taken again on the new primary
    for (process, url), count in zip(replicas, counts, strict=True):
        assert process.popen.poll() is None, process.output()[-3000:]
        assert await accepted_by(url) > count, f"{url} took nothing after the failover"
        output = process.output()
        assert "Traceback" not in output, output[-3000:]
    for process in bench.processes:  # the participants rode it out too
        assert "Traceback" not in process.output(), (process.name, process.output()[-3000:])
    assert await bench.dead_letters(0) == []
    verify = await asyncio.to_thread(bench.verify)
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.fixture
def second_server() -> Iterator[PrivatePostgres]:
    with PrivatePostgres() as cluster:
        yield cluster


async def test_a_session_that_answers_read_only_is_replaced_by_one_on_the_writable_host(
    second_server: PrivatePostgres,
) -> None:
    """Two servers in one URL: the private one first, the shared one second. Once the first is
    made read-only (without a restart: its sessions live on), a write fails once with 25006, and
    the next one, on both the asyncpg pool and SQLAlchemy's, reaches the second."""
    name = f"readonly_{uuid.uuid4().hex[:8]}"
    shared = "postgresql://postgres@127.0.0.1:5432/postgres"
    for dsn in (second_server.admin_dsn, shared):
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        probe = await asyncpg.connect(dsn.rsplit("/", 1)[0] + f"/{name}")
        try:
            await probe.execute("CREATE TABLE probe (port int)")
        finally:
            await probe.close()
    url = (
        f"postgresql+asyncpg://postgres@127.0.0.1:{second_server.port},127.0.0.1:5432/{name}"
        "?target_session_attrs=read-write"
    )
    store = PostgresStore.from_url(database_url(url), pool_size=2)
    write = "INSERT INTO probe SELECT inet_server_port()"
    try:
        async with store.transaction() as transaction:
            await transaction.connection.execute(write)
            assert await transaction.connection.fetchval("SELECT inet_server_port()") == second_server.port
        async with store.engine.begin() as connection:
            await connection.execute(text(write))

        admin = await asyncpg.connect(second_server.admin_dsn)
        try:
            await admin.execute("ALTER SYSTEM SET default_transaction_read_only = on")
            await admin.execute("SELECT pg_reload_conf()")
        finally:
            await admin.close()
        await asyncio.sleep(0.5)  # each backend reads the new default at its next command

        with pytest.raises(asyncpg.ReadOnlySQLTransactionError) as refused:
            async with store.transaction() as transaction:
                await transaction.connection.execute(write)
        assert store.classify(refused.value) is Fault.UNAVAILABLE
        async with store.transaction() as transaction:
            await transaction.connection.execute(write)
            assert await transaction.connection.fetchval("SELECT inet_server_port()") == 5432

        with pytest.raises(Exception) as refused_too:
            async with store.engine.begin() as connection:
                await connection.execute(text(write))
        assert store.classify(refused_too.value) is Fault.UNAVAILABLE
        async with store.engine.begin() as connection:
            await connection.execute(text(write))
            assert (await connection.execute(text("SELECT inet_server_port()"))).scalar() == 5432
    finally:
        await store.close()
        admin = await asyncpg.connect(shared)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
