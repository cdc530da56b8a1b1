"""The store contract on :class:`PostgresStore`, the product's adapter (tests/store_contract.py):
the reference the memory store is held to.

One freshly migrated database for the module (migrating takes seconds), its tables emptied
before each test: every test starts from an empty store, whatever the one before it left."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
import pytest_asyncio

from orchestrator.adapters.postgres.store import PostgresStore, driver_dsn
from orchestrator.service.store import Store, Tombstone
from tests.integration.conftest import migrated_database
from tests.store_contract import StoreContract

pytestmark = pytest.mark.integration

#: every table the store writes (workflow_releases and the partition tables it never touches)
TABLES = ("sagas", "journal", "outbox", "inbox", "deadlines", "dead_letters", "tombstones")


@pytest.fixture(scope="module")
def contract_database() -> Iterator[str]:
    with migrated_database("orchestrator_contract") as url:
        yield url


class TestPostgresStore(StoreContract):
    skips_locked_rows = True

    @pytest_asyncio.fixture
    async def store(self, contract_database: str) -> AsyncIterator[Store]:
        connection = await asyncpg.connect(driver_dsn(contract_database))
        try:
            await connection.execute(f"TRUNCATE {', '.join(TABLES)}")
        finally:
            await connection.close()
        store = PostgresStore.from_url(contract_database, pool_size=2)
        try:
            yield store
        finally:
            await store.close()

    async def bury(self, store: Store, tombstone: Tombstone) -> None:
        """The row ``orchestrator archive`` leaves (adapters/postgres/retention.py)."""
        assert isinstance(store, PostgresStore)
        pool = await store.pool()
        await pool.execute(
            "INSERT INTO tombstones (saga_id, workflow, key, release, state, status, version, created_at,"
            " finished_at, archived_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            tombstone.saga_id,
            tombstone.workflow,
            tombstone.key,
            tombstone.release,
            tombstone.state,
            tombstone.status,
            tombstone.version,
            tombstone.created_at,
            tombstone.finished_at,
            tombstone.archived_at,
        )
