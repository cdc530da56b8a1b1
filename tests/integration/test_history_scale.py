"""With a history of finished sagas, the scrape's saga queries and the first page of the listing
read no finished rows: their plans (EXPLAIN) scan no table whole. The figures at 1,000,000 journal
rows are the benchmark's (``python -m bench.history``, docs/benchmark.md), not a test's."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from sqlalchemy import Select
from sqlalchemy.dialects import postgresql

from bench.history import fill
from orchestrator.adapters.postgres.queries import Queries, SagaFilter, gauge_queries, listing_query
from orchestrator.adapters.postgres.store import PostgresStore, driver_dsn
from tests.integration.conftest import migrated_database

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def history_database() -> Iterator[str]:
    with migrated_database("orchestrator_history") as url:
        yield url


def _sql(query: Select[Any]) -> str:
    return str(query.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


async def _plan(connection: asyncpg.Connection, query: Select[Any]) -> list[dict[str, Any]]:
    raw = await connection.fetchval(f"EXPLAIN (FORMAT JSON) {_sql(query)}")
    return list(_nodes(orjson.loads(raw)[0]["Plan"]))


async def test_the_scrape_and_the_first_page_read_no_finished_rows(history_database: str) -> None:
    connection = await asyncpg.connect(driver_dsn(history_database))
    try:
        await fill(connection, sagas=20_000, entries=1, in_flight=40, failed=6)
        in_flight, failed, stuck = gauge_queries(datetime.now(UTC) - timedelta(minutes=5))
        plans = {
            "in flight": await _plan(connection, in_flight),
            "failed": await _plan(connection, failed),
            "stuck": await _plan(connection, stuck),
            "first page": await _plan(connection, listing_query(SagaFilter(), 51)),
        }
    finally:
        await connection.close()

    for name, nodes in plans.items():
        # the pending timers hold no row of a finished saga (a timer is deleted when it fires or its
        # state is left), so the planner may read that small table whole; no other
        whole = [n for n in nodes if n["Node Type"] == "Seq Scan" and n.get("Relation Name") != "deadlines"]
        assert whole == [], f"{name}: {whole}"
    assert any(n.get("Index Name") == "sagas_in_flight" for n in plans["in flight"]), plans["in flight"]
    assert any(n.get("Index Name") == "sagas_in_flight" for n in plans["stuck"]), plans["stuck"]
    assert any(n.get("Index Name") == "sagas_status_updated" for n in plans["failed"]), plans["failed"]
    assert any(n.get("Index Name") == "sagas_created" for n in plans["first page"]), plans["first page"]

    store = PostgresStore.from_url(history_database, pool_size=1)
    try:
        gauges = await Queries(store.engine).gauges(datetime.now(UTC) - timedelta(minutes=5))
    finally:
        await store.close()
    assert gauges.sagas == {("order", "running"): 20, ("order", "compensating"): 20, ("order", "failed"): 6}
    assert gauges.states == {
        ("order", "1", "charging", "running"): 20,
        ("order", "1", "compensating_reserve", "compensating"): 20,
        ("order", "1", "charging", "failed"): 6,
    }


async def test_the_scrape_s_count_per_state_reads_only_the_rows_in_flight(history_database: str) -> None:
    """Run, not only planned: every scan of ``sagas`` in the per-state count hands up no more rows
    than are in flight and filters none away, whatever plan the planner picks (a sequential scan
    would read the 20,000 finished sagas and remove them by its filter)."""
    connection = await asyncpg.connect(driver_dsn(history_database))
    try:
        if await connection.fetchval("SELECT count(*) FROM sagas") < 20_000:
            await fill(connection, sagas=20_000, entries=1, in_flight=40, failed=6)
        in_flight, _, _ = gauge_queries(datetime.now(UTC) - timedelta(minutes=5))
        raw = await connection.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {_sql(in_flight)}")
    finally:
        await connection.close()
    scans = [n for n in _nodes(orjson.loads(raw)[0]["Plan"]) if n.get("Relation Name") == "sagas"]
    assert scans, raw
    for scan in scans:
        assert scan["Node Type"] != "Seq Scan", scan
        assert scan["Actual Rows"] <= 40 and scan.get("Rows Removed by Filter", 0) == 0, scan
