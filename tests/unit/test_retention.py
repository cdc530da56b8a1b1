"""Retention's parts that need no database: the archive file, tombstones in a batch (on the
memory store), the counter of finished sagas, and the settings (docs/retention.md)."""

from __future__ import annotations

import gzip
import os
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from orchestrator.adapters.archive import ArchivedSaga, ArchiveWriter, Unreadable, read_archive
from orchestrator.adapters.memory import MemoryStore
from orchestrator.adapters.metrics import Metrics, count_finished
from orchestrator.core.engine import saga_id_for
from orchestrator.core.messages import Message, dump
from orchestrator.core.replay import verify
from orchestrator.core.routing import Registry
from orchestrator.entrypoints.settings import Settings, SettingsError
from orchestrator.examples import WORKFLOWS
from orchestrator.examples.contracts import (
    Line,
    OrderPlaced,
    OrderShipped,
    OutOfStock,
    PaymentCharged,
    StockReserved,
)
from orchestrator.service.batch import Envelope, Verdict, process_batch
from orchestrator.service.operations import start_saga
from orchestrator.service.store import Tombstone
from tests.replies import reply_envelope

REGISTRY = Registry(WORKFLOWS)
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _event(message: Message, saga_id: str | None = None) -> Envelope:
    return Envelope(orjson.dumps(dump(message)), message.TYPE, f"m-{uuid.uuid4()}", saga_id)


def _placed(key: str) -> Envelope:
    return _event(OrderPlaced(key, "c-1", [Line("sku-1", 1)], 1000))


def _tombstone(key: str, status: str = "completed") -> Tombstone:
    return Tombstone(
        saga_id_for("order", key), "order", key, "1", status, status, 4, NOW, NOW, NOW + timedelta(days=10)
    )


async def test_a_start_of_an_archived_saga_is_a_duplicate_and_a_reply_says_archived() -> None:
    store = MemoryStore()
    store.tombstones[saga_id_for("order", "o-1")] = _tombstone("o-1")
    placed, fresh = _placed("o-1"), _placed("o-2")

    result = await process_batch(REGISTRY, store, [placed, fresh], NOW)

    assert result.verdicts == [Verdict.DUPLICATE, Verdict.ACCEPTED]
    assert saga_id_for("order", "o-1") not in store.sagas and saga_id_for("order", "o-2") in store.sagas
    reply = _event(StockReserved("o-1", "r-1"), saga_id_for("order", "o-1"))
    refused = (await process_batch(REGISTRY, store, [reply], NOW)).refusals[0]
    assert refused is not None and refused.reason == "unknown_saga"
    assert refused.detail.endswith("finished completed and was archived at 2026-03-11T12:00:00+00:00")
    unknown = _event(StockReserved("o-9", "r-1"), saga_id_for("order", "o-9"))
    refused = (await process_batch(REGISTRY, store, [unknown], NOW)).refusals[0]
    assert (
        refused is not None
        and refused.detail == f"correlation id {saga_id_for('order', 'o-9')!r} names no saga"
    )


async def test_a_rest_start_of_an_archived_saga_answers_with_its_tombstone() -> None:
    store = MemoryStore()
    store.tombstones[saga_id_for("order", "o-1")] = _tombstone("o-1", "compensated")
    data = {"customer_id": "c-1", "lines": [{"sku": "sku-1", "quantity": 1}], "amount_cents": 5}

    applied = await start_saga(REGISTRY, store, "order", "o-1", data, "alice", NOW)

    assert not applied.created and applied.commands == [] and applied.archived is not None
    assert (applied.saga.state, applied.saga.status, applied.saga.data) == ("compensated", "compensated", {})
    assert store.sagas == {} and store.journals == {}


async def test_finished_sagas_are_counted_once_when_they_finish() -> None:
    store, metrics = MemoryStore(), Metrics(process=False)

    async def take(*envelopes: Envelope) -> None:
        result = await process_batch(REGISTRY, store, list(envelopes), NOW)
        count_finished(metrics, result.decisions, REGISTRY.workflows)

    done, out = saga_id_for("order", "o-1"), saga_id_for("order", "o-2")
    await take(_placed("o-1"), _placed("o-2"))
    await take(
        reply_envelope(store, StockReserved("o-1", "r"), done),
        reply_envelope(store, OutOfStock("o-2", "sku-1"), out),
    )
    await take(reply_envelope(store, PaymentCharged("o-1", "c"), done))
    assert dict(metrics.sagas_finished) == {("order", "compensated"): 1}
    shipped = reply_envelope(store, OrderShipped("o-1", "t"), done)
    await take(shipped)
    await take(replace(shipped, body=b'{"order_id": "o-1", "tracking_id": "t2"}'))  # again: a duplicate
    assert dict(metrics.sagas_finished) == {("order", "compensated"): 1, ("order", "completed"): 1}
    assert (
        'orchestrator_sagas_finished_total{status="completed",workflow="order"} 1.0'
        in metrics.render().decode()
    )


def _archive_of(store: MemoryStore, path: Path) -> None:
    """The sagas of a memory store written as ``orchestrator archive`` writes them."""
    writer = ArchiveWriter(path, {"finished_before": NOW.isoformat()})
    for saga in store.sagas.values():
        row = {**vars(saga), "status": str(saga.status), "release": "1"}
        row["parked"], row["awaiting"], row["timed_out"] = (
            list(saga.parked),
            list(saga.awaiting),
            list(saga.timed_out),
        )
        journal = [
            {
                "seq": e.seq,
                "kind": e.message.kind,
                "message_type": e.message.type,
                "message_id": e.message.message_id,
                "message": e.message.as_json(),
                "decision": e.decision,
                "actor": e.message.actor,
                "recorded_at": e.recorded_at,
            }
            for e in store.journals[saga.id]
        ]
        timers = [
            {"kind": kind, "state": d.state, "version": version, "due_at": d.due_at}
            for (saga_id, kind), (d, version) in store.deadlines.items()
            if saga_id == saga.id
        ]
        writer.write({"saga": row, "journal": journal, "timers": timers})
        writer.commit_point()
    writer.close({"sagas": len(store.sagas)})


async def test_an_archive_file_reads_back_and_replays(tmp_path: Path) -> None:
    store = MemoryStore()
    await process_batch(REGISTRY, store, [_placed("o-1"), _placed("o-2")], NOW)
    await process_batch(
        REGISTRY, store, [_event(OutOfStock("o-2", "sku-1"), saga_id_for("order", "o-2"))], NOW
    )
    path = tmp_path / "a.jsonl.gz"
    _archive_of(store, path)

    items = list(read_archive(path))

    assert items[0]["format"] == "orchestrator-archive" and items[-1] == {"end": True, "sagas": 2}
    sagas = [i for i in items if isinstance(i, ArchivedSaga)]
    assert [s.saga for s in sagas] == list(store.sagas.values())
    assert all(verify(REGISTRY.workflows["order"], s.records) == [] for s in sagas)
    with pytest.raises(FileExistsError):  # an archive is never overwritten
        ArchiveWriter(path, {})


async def test_a_damaged_archive_is_read_up_to_the_damage(tmp_path: Path) -> None:
    store = MemoryStore()
    await process_batch(REGISTRY, store, [_placed("o-1")], NOW)
    path = tmp_path / "a.jsonl.gz"
    _archive_of(store, path)
    whole = path.read_bytes()
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole[:-7])  # the last member (the end record) cut short

    items = list(read_archive(cut))

    assert isinstance(items[1], ArchivedSaga)
    assert isinstance(items[-1], Unreadable) and "ends early" in items[-1].problem
    garbled = tmp_path / "garbled.jsonl.gz"
    garbled.write_bytes(gzip.compress(gzip.decompress(whole).replace(b'"saga":{', b'"saga":{"x', 1)))
    assert any(isinstance(i, Unreadable) and i.line == 2 for i in read_archive(garbled))


def test_retention_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (Settings().inbox_retention_days, Settings().tombstone_retention_days) == (7.0, 400.0)
    monkeypatch.setenv("ORCHESTRATOR_INBOX_RETENTION_DAYS", "1.5")
    monkeypatch.setenv("ORCHESTRATOR_PRUNE_INTERVAL_SECONDS", "0")
    settings = Settings.from_env()
    assert (settings.inbox_retention_days, settings.prune_interval_seconds) == (1.5, 0.0)
    monkeypatch.setenv("ORCHESTRATOR_DEAD_LETTER_RETENTION_DAYS", "-3")
    with pytest.raises(SettingsError, match="ORCHESTRATOR_DEAD_LETTER_RETENTION_DAYS must be a positive"):
        Settings.from_env()
    assert os.environ["ORCHESTRATOR_INBOX_RETENTION_DAYS"] == "1.5"
