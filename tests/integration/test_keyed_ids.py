"""The service keys its commands' ids with the id key ``migrate`` keeps in its database (issue 27,
case 3): on the real broker and database, the participants answer keyed commands as they always
did (they derive reply ids from the command's, docs/protocol.md section 6), nobody can compute a
command's id from the saga's id and version, ``verify`` replays the keyed journal with the key,
and ``migrate`` makes a key anew where the row is gone."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from orchestrator.core.engine import saga_id_for
from orchestrator.core.ids import KEYED, keyed_command_id, versioned_command_id
from orchestrator.entrypoints.cli import migrate

from .conftest import Bench, unique

pytestmark = pytest.mark.integration

keys = unique("keyed")


async def stored_key(bench: Bench) -> bytes | None:
    connection = await asyncpg.connect(bench.database_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        secret = await connection.fetchval("SELECT secret FROM id_keys WHERE name = 'ids'")
        return None if secret is None else bytes(secret)
    finally:
        await connection.close()


async def test_commands_are_keyed_with_the_database_s_key_and_verify_replays_them(bench: Bench) -> None:
    await bench.serve()
    await bench.work()
    order = keys()
    await bench.place_order(order)
    finished = await bench.finished("order", [order], timeout=30)
    key = await stored_key(bench)
    assert bench.store is not None
    saga_id = saga_id_for("order", order)
    entries = await bench.store.journal(saga_id)

    assert finished[order].status == "completed"
    assert key is not None and len(key) == 32
    sent = [(e, i, c) for e in entries for i, c in enumerate(e.decision["commands"])]
    assert len(sent) >= 3  # reserve, charge, ship: each answered by its participant
    for entry, index, command in sent:
        assert entry.decision["ids"] == KEYED
        assert command["message_id"] == keyed_command_id(key, saga_id, entry.message.message_id, index)
        assert command["message_id"] != versioned_command_id(saga_id, entry.seq, index)
    verified = await asyncio.to_thread(bench.verify, "--saga", saga_id)
    assert verified.returncode == 0, verified.stdout + verified.stderr


async def test_migrate_makes_a_key_where_the_row_is_gone_and_verify_says_it_is_missing(
    bench: Bench,
) -> None:
    before = await stored_key(bench)
    connection = await asyncpg.connect(bench.database_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        await connection.execute("DELETE FROM id_keys")
    finally:
        await connection.close()

    missing = await asyncio.to_thread(bench.verify)
    await asyncio.to_thread(migrate, bench.database_url)
    after = await stored_key(bench)

    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        "orchestrator: the database has no id key: run `orchestrator migrate` to generate one"
    ]
    assert before is not None and after is not None and len(after) == 32 and after != before
