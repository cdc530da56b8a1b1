"""``python -m bench.history``: the listing, the metrics and retention with a long history.

It creates a database of its own (``orchestrator_history_<hex>``, dropped at the end), migrates
it, fills it with SQL (``generate_series``, no service running) with ``--sagas`` finished sagas
of ``--entries`` journal entries each (and as many inbox rows), plus a few in flight and failed,
and measures what must not grow with the history: the ``/metrics`` saga queries, the first page
of ``GET /sagas`` (unfiltered, and by status), then ``orchestrator archive`` (sagas/s) of a
share of them and ``prune``. It prints one line per figure and, with ``--out``, writes them as
JSON. It is a benchmark: it asserts nothing (docs/benchmark.md, "History").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

ADMIN_DSN = os.environ.get("BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
ROOT = Path(__file__).resolve().parents[1]
#: the first saga's finish; saga i finishes i seconds later
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)

_FILL_SAGAS = """
INSERT INTO sagas (id, workflow, key, state, status, version, data, created_at, updated_at, release)
SELECT 'h-' || i, 'order', 'h-' || i,
       CASE WHEN i % 5 = 0 THEN 'compensated' ELSE 'completed' END,
       CASE WHEN i % 5 = 0 THEN 'compensated' ELSE 'completed' END,
       $2, jsonb_build_object('order_id', 'h-' || i, 'customer_id', 'c-1', 'amount_cents', 1000),
       $3::timestamptz + i * interval '1 second' - interval '1 minute',
       $3::timestamptz + i * interval '1 second', '1'
FROM generate_series(1, $1) AS i
"""

_FILL_JOURNAL = """
INSERT INTO journal (saga_id, seq, kind, message_type, message_id, message, decision, actor, recorded_at)
SELECT 'h-' || i, s, 'event', 'inventory.StockReserved', 'h-' || i || '-' || s,
       jsonb_build_object('type', 'inventory.StockReserved', 'message_id', 'h-' || i || '-' || s,
                          'payload', jsonb_build_object('order_id', 'h-' || i, 'reservation_id', 'r-' || s),
                          'kind', 'event', 'actor', NULL),
       jsonb_build_object('outcome', 'moved', 'from', 'reserving', 'to', 'charging', 'status', 'running',
                          'commands', jsonb_build_array(jsonb_build_object(
                              'type', 'payment.ChargePayment', 'message_id', md5(i || '-' || s),
                              'payload', jsonb_build_object('order_id', 'h-' || i, 'amount_cents', 1000)))),
       NULL, $3::timestamptz + i * interval '1 second'
FROM generate_series(1, $1) AS i, generate_series(1, $2) AS s
"""

_FILL_INBOX = """
INSERT INTO inbox (message_id, saga_id, received_at)
SELECT 'h-' || i || '-' || s, 'h-' || i, $3::timestamptz + i * interval '1 second'
FROM generate_series(1, $1) AS i, generate_series(1, $2) AS s
"""

_FILL_LIVE = """
INSERT INTO sagas (id, workflow, key, state, status, version, data, created_at, updated_at, release,
                   last_error)
SELECT 'live-' || i, 'order', 'live-' || i,
       CASE WHEN i <= $2 THEN 'charging' WHEN i % 2 = 0 THEN 'charging' ELSE 'compensating_reserve' END,
       CASE WHEN i <= $2 THEN 'failed' WHEN i % 2 = 0 THEN 'running' ELSE 'compensating' END,
       2, '{}'::jsonb, $3::timestamptz + i * interval '1 second', $3::timestamptz + i * interval '1 second',
       '1', CASE WHEN i <= $2 THEN 'charging: no reply by its deadline' END
FROM generate_series(1, $1) AS i
"""


async def fill(
    connection: asyncpg.Connection, sagas: int, entries: int, in_flight: int = 1000, failed: int = 50
) -> None:
    """``sagas`` finished sagas (one in five compensated) of ``entries`` journal entries and inbox
    rows each, finished a second apart from EPOCH on; then ``in_flight`` + ``failed`` sagas
    started after all of them (half running, half compensating). Analyzed, as autovacuum would."""
    await connection.execute(_FILL_SAGAS, sagas, entries, EPOCH)
    await connection.execute(_FILL_JOURNAL, sagas, entries, EPOCH)
    await connection.execute(_FILL_INBOX, sagas, entries, EPOCH)
    live_from = EPOCH + timedelta(seconds=sagas + 1)
    await connection.execute(_FILL_LIVE, in_flight + failed, failed, live_from)
    await connection.execute("VACUUM ANALYZE sagas")
    await connection.execute("VACUUM ANALYZE journal")
    await connection.execute("VACUUM ANALYZE inbox")


def _median_ms(samples: list[float]) -> float:
    ordered = sorted(samples)
    return round(ordered[len(ordered) // 2] * 1000, 2)


async def _timed(repeats: int, work: Any) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        await work()
        samples.append(time.perf_counter() - started)
    return _median_ms(samples)


def _cli(url: str, *args: str) -> tuple[float, str]:
    env = {**os.environ, "ORCHESTRATOR_DATABASE_URL": url}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], env=env, cwd=ROOT, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"orchestrator {' '.join(args)} failed: {done.stderr or done.stdout}")
    return time.perf_counter() - started, done.stdout.strip()


async def measure(url: str, sagas: int, entries: int, archive_share: float) -> dict[str, Any]:
    from orchestrator.adapters.postgres.queries import Queries, SagaFilter
    from orchestrator.adapters.postgres.store import PostgresStore, driver_dsn

    figures: dict[str, Any] = {"sagas": sagas, "journal_rows": sagas * entries}
    connection = await asyncpg.connect(driver_dsn(url))
    try:
        started = time.perf_counter()
        await fill(connection, sagas, entries)
        figures["fill_seconds"] = round(time.perf_counter() - started, 1)
        figures["sagas_table_mb"] = round(
            await connection.fetchval("SELECT pg_total_relation_size('sagas')") / 2**20, 1
        )
        figures["journal_table_mb"] = round(
            await connection.fetchval("SELECT pg_total_relation_size('journal')") / 2**20, 1
        )
    finally:
        await connection.close()

    stuck_since = datetime.now(UTC) - timedelta(minutes=5)
    figures.update(await _server_times(url, stuck_since))
    store = PostgresStore.from_url(url, pool_size=2)
    queries = Queries(store.engine)
    try:
        await queries.gauges(stuck_since)  # warm the connection and the plans
        figures["metrics_ms"] = await _timed(20, lambda: queries.gauges(stuck_since))
        figures["listing_ms"] = await _timed(20, lambda: queries.sagas(SagaFilter(), 50))
        for status in ("running", "failed", "completed"):
            figures[f"listing_{status}_ms"] = await _timed(
                20, lambda status=status: queries.sagas(SagaFilter(status=status), 50)
            )
        figures["workflow_state_counts_ms"] = await _timed(5, lambda: queries.state_counts(["order"]))
    finally:
        await store.close()

    # archive the oldest share, as an operator would, then prune the inbox of the rest
    cut = EPOCH + timedelta(seconds=int(sagas * archive_share) + 1)
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "history.jsonl.gz"
        seconds, said = _cli(url, "archive", "--finished-before", cut.isoformat(), "--to", str(target))
        archived = int(said.split()[1])
        figures["archived_sagas"] = archived
        figures["archive_seconds_with_process_start"] = round(seconds, 1)
        # as the command measures itself: the batches, without the interpreter's start
        figures["archive_sagas_per_s"] = int(said.rsplit("(", 1)[1].split()[0])
        figures["archive_file_mb"] = round(target.stat().st_size / 2**20, 1)
        figures["archive_said"] = said
        verify_started = time.perf_counter()
        verified = subprocess.run(
            [sys.executable, "-m", "orchestrator", "verify", "--archive", str(target)],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        figures["verify_archive_seconds"] = round(time.perf_counter() - verify_started, 1)
        figures["verify_archive_exit"] = verified.returncode  # synthetic journals: they differ
    seconds, said = _cli(url, "prune", "--inbox-days", "1")
    figures["prune_seconds_with_process_start"] = round(seconds, 1)
    figures["prune_seconds"] = float(said.rsplit(" in ", 1)[1].rstrip("s"))
    figures["prune_said"] = said
    # then the tombstones the archive left, all at once (a lifetime of a second)
    seconds, said = _cli(url, "prune", "--tombstone-days", str(1 / 86400))
    figures["prune_tombstones_seconds"] = float(said.rsplit(" in ", 1)[1].rstrip("s"))
    figures["prune_tombstones_said"] = said

    store = PostgresStore.from_url(url, pool_size=2)
    queries = Queries(store.engine)
    try:
        figures["metrics_after_ms"] = await _timed(20, lambda: queries.gauges(stuck_since))
        figures["listing_after_ms"] = await _timed(20, lambda: queries.sagas(SagaFilter(), 50))
    finally:
        await store.close()
    return figures


#: what the scrape ran before this version: every saga ever, grouped
_OLD_GAUGE = "SELECT workflow, status, count(*) FROM sagas GROUP BY workflow, status"


async def _server_times(url: str, stuck_since: datetime) -> dict[str, float]:
    """Each query's execution time in the server (EXPLAIN ANALYZE, the median of 5), without the
    client's round trip: the scrape's three saga queries, the one they replace, the first page."""
    from sqlalchemy import Select
    from sqlalchemy.dialects.postgresql.base import PGDialect

    from orchestrator.adapters.postgres.queries import SagaFilter, gauge_queries, listing_query
    from orchestrator.adapters.postgres.store import driver_dsn

    def sql(query: Select[Any]) -> str:
        dialect = PGDialect()  # type: ignore[no-untyped-call]
        return str(query.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))

    in_flight, failed, stuck = gauge_queries(stuck_since)
    statements = {
        "server_in_flight_ms": sql(in_flight),
        "server_failed_ms": sql(failed),
        "server_stuck_ms": sql(stuck),
        "server_old_group_by_ms": _OLD_GAUGE,
        "server_first_page_ms": sql(listing_query(SagaFilter(), 51)),
        "server_first_page_failed_ms": sql(listing_query(SagaFilter(status="failed"), 51)),
    }
    connection = await asyncpg.connect(driver_dsn(url))
    found: dict[str, float] = {}
    try:
        for name, statement in statements.items():
            times = []
            for _ in range(5):
                raw = await connection.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}")
                times.append(json.loads(raw)[0]["Execution Time"] / 1000)
            found[name] = _median_ms(times)
    finally:
        await connection.close()
    return found


async def _database(name: str, drop: bool) -> None:
    connection = await asyncpg.connect(ADMIN_DSN)
    try:
        if drop:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__.splitlines()[0])
    parser.add_argument("--sagas", type=int, default=100_000, help="finished sagas (100000)")
    parser.add_argument("--entries", type=int, default=10, help="journal entries per saga (10)")
    parser.add_argument("--archive-share", type=float, default=0.5, help="share of them archived (0.5)")
    parser.add_argument("--out", type=Path, help="write the figures to this JSON file too")
    args = parser.parse_args(argv)
    name = f"orchestrator_history_{uuid.uuid4().hex[:8]}"
    url = f"{ADMIN_DSN.rsplit('/', 1)[0].replace('postgresql://', 'postgresql+asyncpg://')}/{name}"
    from orchestrator.entrypoints.cli import migrate

    asyncio.run(_database(name, drop=False))
    try:
        migrate(url)
        figures = asyncio.run(measure(url, args.sagas, args.entries, args.archive_share))
    finally:
        asyncio.run(_database(name, drop=True))
    for name_, value in figures.items():
        print(f"{name_:28} {value}")
    if args.out is not None:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
