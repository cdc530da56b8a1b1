"""The store contract on :class:`MemoryStore`: the store unit tests and the test kit run on must
behave as the product's does (tests/store_contract.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from orchestrator.adapters.memory import MemoryStore
from orchestrator.service.store import Store, Tombstone
from tests.store_contract import StoreContract


class TestMemoryStore(StoreContract):
    @pytest_asyncio.fixture
    async def store(self) -> AsyncIterator[Store]:
        store = MemoryStore()
        try:
            yield store
        finally:
            await store.close()

    async def bury(self, store: Store, tombstone: Tombstone) -> None:
        assert isinstance(store, MemoryStore)
        store.tombstones[tombstone.saga_id] = tombstone
