"""PostgreSQL restarted under load (``pg_ctlcluster restart``), on a cluster of the test's own
(tests/integration/private_postgres.py), under two orchestrator replicas: each loses every
connection, reconnects and goes on, every saga completes, ``orchestrator verify`` is clean.

The replicas reach the cluster over TLS, with libpq's ``sslmode=require`` in their URL as an
operator would write it: the settings spell it ``ssl`` for SQLAlchemy and ``sslmode`` again for
asyncpg's DSNs (docs/architecture.md, "Connections: TLS, clusters"), and the server is asked
which of their sessions are encrypted."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import pytest_asyncio

from orchestrator.adapters.amqp.topology import queue_state
from orchestrator.adapters.postgres.store import PostgresStore
from orchestrator.entrypoints.settings import database_url

from .conftest import API_TOKEN, SERVICES, Bench, Process, delete_namespace, unique
from .private_postgres import PrivatePostgres
from .test_broker_faults import accepted

pytestmark = pytest.mark.integration

order_ids = unique("pg-restart")
BEFORE = 200
AFTER = 60


@pytest.fixture(scope="module")
def postgres() -> Iterator[PrivatePostgres]:
    with PrivatePostgres() as cluster:
        yield cluster


@pytest_asyncio.fixture
async def tls_bench(postgres: PrivatePostgres, tmp_path: Path) -> AsyncIterator[Bench]:
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    url = f"{postgres.url(f'orchestrator_{uuid.uuid4().hex[:8]}')}?sslmode=require"
    setup = Bench(namespace, url, tmp_path)
    await setup.migrate()
    await setup.connect()
    setup.store = PostgresStore.from_url(database_url(url), pool_size=2)
    try:
        yield setup
    finally:
        await setup.cleanup()
        await delete_namespace(namespace)


async def accepted_by(url: str) -> float:
    async with httpx.AsyncClient(
        base_url=url, timeout=10, headers={"Authorization": f"Bearer {API_TOKEN}"}
    ) as api:
        return accepted((await api.get("/metrics")).text)


async def encrypted_sessions(postgres: PrivatePostgres, database: str) -> dict[str, bool]:
    """Each backend of the database by application name, and whether it speaks TLS."""
    connection = await asyncpg.connect(postgres.admin_dsn)
    try:
        rows = await connection.fetch(
            "SELECT a.pid, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.datname = $1",
            database,
        )
    finally:
        await connection.close()
    return {str(r["pid"]): bool(r["ssl"]) for r in rows}


async def wait_for_messages(bench: Bench, queue: str, expected: int) -> None:
    assert bench.connection is not None
    deadline = time.monotonic() + 120
    while (state := await queue_state(bench.connection, queue)) is None or state.messages < expected:
        assert time.monotonic() < deadline, f"{queue}: {state}"
        await asyncio.sleep(0.1)


async def test_every_replica_goes_on_through_a_database_restart(
    tls_bench: Bench, postgres: PrivatePostgres
) -> None:
    bench = tls_bench
    database = bench.database_url.rsplit("/", 1)[1].split("?", 1)[0]
    replicas: list[tuple[Process, str]] = []
    for _ in range(2):
        process = await bench.start_orchestrator()
        assert bench.api_url is not None
        replicas.append((process, bench.api_url))
    for service in SERVICES:
        if service != "shipping":  # held back: the sagas wait at shipping, none finished
            await bench.start_participant(service)
    sessions = await encrypted_sessions(postgres, database)
    assert sessions and all(sessions.values()), sessions

    before = [order_ids() for _ in range(BEFORE)]
    started = time.monotonic()
    for key in before:
        await bench.place_order(key)
    await wait_for_messages(bench, f"{bench.namespace}.shipping", BEFORE)
    counts = [await accepted_by(url) for _, url in replicas]
    # Mid-run: the replies to 300 shipping commands flow to the replicas while the database goes.
    counter = await asyncpg.connect(bench.database_url.replace("postgresql+asyncpg", "postgresql"))
    await bench.start_participant("shipping")
    done_then = await counter.fetchval("SELECT count(*) FROM sagas WHERE status = 'completed'")
    restart_started = time.monotonic()
    await asyncio.to_thread(postgres.restart)
    restart_took = time.monotonic() - restart_started
    counter.terminate()

    after = [order_ids() for _ in range(AFTER)]
    for key in after:
        await bench.place_order(key)
    assert bench.store is not None
    await bench.store.close()  # the test's own connections went with the restart too
    bench.store = PostgresStore.from_url(database_url(bench.database_url), pool_size=2)
    sagas = await bench.finished("order", before + after, timeout=240)

    took = time.monotonic() - started
    print(
        f"{BEFORE + AFTER} sagas in {took:.1f}s; restarted after {restart_started - started:.1f}s,"
        f" the restart took {restart_took:.1f}s; {done_then} of the first {BEFORE} had finished just before"
    )
    assert {s.status for s in sagas.values()} == {"completed"}
    for (process, url), count in zip(replicas, counts, strict=True):
        assert process.popen.poll() is None, process.output()[-3000:]
        assert await accepted_by(url) > count, (
            f"{url} took nothing after the restart:\n{process.output()[-3000:]}"
        )
    assert await bench.dead_letters(0) == []
    sessions = await encrypted_sessions(postgres, database)
    assert sessions and all(sessions.values()), sessions
    verify = await asyncio.to_thread(bench.verify)
    assert verify.returncode == 0, verify.stdout + verify.stderr
