"""``python -m bench.dry_run [--sagas 100000] [--keep]``: how long ``orchestrator check --journals``
takes over many sagas in flight (issue 13, item 2: 100,000 in under a minute on the two-core box).

A benchmark, not a test: it prints the figures and exits 0 whatever they are. It creates a
database of its own (``orchestrator_dry_run_bench_<random>`` on the server of
``BENCH_DATABASE_URL``, else 127.0.0.1), migrates it, and fills it with order sagas in flight
whose journals are the bundled order workflow's own decisions: each saga is decided message by
message by the pure engine (``decide``, as the service does), and its rows are COPYed in. A
quarter of them wait in each of ``reserve``, ``charge``, ``ship`` and ``compensating_reserve``
(1, 2, 3 and 3 journal entries). Then it times, each on the same data:

* ``read``: reading the journals alone (``adapters.postgres.journals.read_journals``);
* ``check``: ``python -m orchestrator check --journals`` as an operator runs it, with the
  bundled definitions (every saga unchanged), process start and imports included, with one
  process (``--jobs 1``) and with the default (one per CPU, at most 4);
* ``check, changed``: the same with ``bench.dry_run_changed`` (the order saga's ``charge`` step
  renamed), where three sagas in four would break and each gets its line.

The database is dropped at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from sqlalchemy.engine import make_url

from orchestrator.adapters.postgres.journals import read_journals
from orchestrator.adapters.postgres.store import driver_dsn
from orchestrator.core.engine import Incoming, SagaSnapshot, decide
from orchestrator.core.machine import CompiledWorkflow
from orchestrator.core.messages import Message, dump
from orchestrator.entrypoints.cli import migrate
from orchestrator.entrypoints.dry_run import default_jobs
from orchestrator.examples import OrderSaga
from orchestrator.examples.contracts import Line, OrderPlaced, PaymentCharged, PaymentDeclined, StockReserved

ROOT = Path(__file__).resolve().parents[1]
SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"

SAGA_COLUMNS = (
    "id", "workflow", "key", "state", "status", "version", "data", "parked", "last_error",
    "created_at", "updated_at", "awaiting", "attempt", "timed_out", "release",
)  # fmt: skip
JOURNAL_COLUMNS = (
    "saga_id", "seq", "kind", "message_type", "message_id", "message", "decision", "actor", "recorded_at",
)  # fmt: skip


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _replies(key: str, waits_in: int) -> list[Message]:
    """What a saga took after its start, to wait in the ``waits_in``-th place (0: reserve, 1:
    charge, 2: ship, 3: compensating_reserve)."""
    replies: list[Message] = []
    if waits_in >= 1:
        replies.append(StockReserved(key, f"r-{key}"))
    if waits_in == 2:
        replies.append(PaymentCharged(key, f"ch-{key}"))
    if waits_in == 3:
        replies.append(PaymentDeclined(key, "card declined"))
    return replies


def sagas(count: int, start: datetime) -> Iterator[tuple[tuple[Any, ...], list[tuple[Any, ...]]]]:
    """Each saga's row and journal rows, as the store writes them, decided by the bundled order
    workflow one message at a time."""
    compiled = CompiledWorkflow(OrderSaga.workflow)
    for n in range(count):
        key = f"o-{n:07d}"
        at = start + timedelta(milliseconds=n)
        placed = OrderPlaced(key, f"c-{n % 997}", [Line(f"sku-{n % 13}", 1 + n % 3)], 500 + n % 10_000)
        saga: SagaSnapshot | None = None
        rows = []
        for seq, event in enumerate([placed, *_replies(key, n % 4)], start=1):
            message = Incoming(event.TYPE, f"{key}-{seq}", dump(event))
            decision = decide(compiled, saga, message, at + timedelta(seconds=seq))
            saga = decision.saga
            rows.append(
                (
                    saga.id, seq, message.kind, message.type, message.message_id,
                    _dumps(message.as_json()), _dumps(decision.summary()), None, at + timedelta(seconds=seq),
                )
            )  # fmt: skip
        assert saga is not None
        row = (
            saga.id, saga.workflow, saga.key, saga.state, str(saga.status), saga.version,
            _dumps(dict(saga.data)), _dumps(list(saga.parked)), saga.last_error, saga.created_at,
            saga.updated_at, _dumps(list(saga.awaiting)), saga.attempt, _dumps(list(saga.timed_out)), "1",
        )  # fmt: skip
        yield row, rows


async def fill(url: str, count: int) -> tuple[int, int]:
    """COPY ``count`` sagas and their journals in, in batches: how many sagas and entries."""
    connection = await asyncpg.connect(driver_dsn(url))
    entries = 0
    try:
        batch: list[tuple[Any, ...]] = []
        journal: list[tuple[Any, ...]] = []
        for row, rows in sagas(count, datetime(2026, 11, 25, 9, 0, tzinfo=UTC)):
            batch.append(row)
            journal.extend(rows)
            if len(batch) == 10_000:
                await connection.copy_records_to_table("sagas", records=batch, columns=SAGA_COLUMNS)
                await connection.copy_records_to_table("journal", records=journal, columns=JOURNAL_COLUMNS)
                entries += len(journal)
                batch, journal = [], []
        if batch:
            await connection.copy_records_to_table("sagas", records=batch, columns=SAGA_COLUMNS)
            await connection.copy_records_to_table("journal", records=journal, columns=JOURNAL_COLUMNS)
            entries += len(journal)
        await connection.execute("VACUUM ANALYZE sagas")
        await connection.execute("VACUUM ANALYZE journal")
    finally:
        await connection.close()
    return count, entries


async def read_only(url: str) -> tuple[int, int, float]:
    started = time.perf_counter()
    sagas_read = entries = 0
    gc.disable()  # as the check does (cli._dry_run)
    try:
        async for journal in read_journals(url):
            sagas_read += 1
            entries += len(journal.entries)
    finally:
        gc.enable()
    return sagas_read, entries, time.perf_counter() - started


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def check(url: str, workflows: str, jobs: int) -> tuple[int, float, float, list[str], int]:
    """``orchestrator check --journals`` as a user runs it: exit status, wall time, its CPU time
    (user and system: on a shared box, wall time says as much about the neighbours), the summary
    lines, and how many lines it printed."""
    env = {**os.environ, "ORCHESTRATOR_DATABASE_URL": url, "ORCHESTRATOR_WORKFLOWS": workflows}
    cpu = _children_cpu()
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "check", "--journals", "--jobs", str(jobs)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    cpu = _children_cpu() - cpu
    if done.returncode not in (0, 1):
        raise SystemExit(f"check exited {done.returncode}: {done.stderr.strip()}")
    lines = done.stdout.splitlines()
    return done.returncode, elapsed, cpu, lines[-7:], len(lines)


async def drop(url: str) -> None:
    target = make_url(url)
    admin = driver_dsn(target.set(database="postgres").render_as_string(hide_password=False))
    connection = await asyncpg.connect(admin)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)')
    finally:
        await connection.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dry_run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sagas", type=int, default=100_000, help="sagas in flight (default 100,000)")
    parser.add_argument("--keep", action="store_true", help="keep the database (its URL is printed)")
    parser.add_argument("--no-changed", action="store_true", help="skip the run with changed definitions")
    args = parser.parse_args(argv)
    server = os.environ.get("BENCH_DATABASE_URL", SERVER)
    url = make_url(server).set(database=f"orchestrator_dry_run_bench_{secrets.token_hex(4)}")
    database = url.render_as_string(hide_password=False)
    print(f"database {url.render_as_string(hide_password=True)}", flush=True)
    try:
        migrate(database)
        started = time.perf_counter()
        count, entries = asyncio.run(fill(database, args.sagas))
        print(
            f"filled {count} sagas in flight, {entries} journal entries"
            f" in {time.perf_counter() - started:.1f}s"
        )
        read, read_entries, seconds = asyncio.run(read_only(database))
        print(
            f"read:  {read} sagas, {read_entries} entries in {seconds:.1f}s (the journals alone, in process)"
        )
        jobs = default_jobs()
        runs = [("check", "orchestrator.examples", 1)]
        if jobs > 1:
            runs.append(("check", "orchestrator.examples", jobs))
        if not args.no_changed:
            runs.append(("check, changed", "bench.dry_run_changed", jobs))
        for name, workflows, processes in runs:
            load = os.getloadavg()[0]
            status, seconds, cpu, summary, printed = check(database, workflows, processes)
            print(
                f"{name}, --jobs {processes}: exit {status}, {seconds:.1f}s wall, {cpu:.1f}s CPU,"
                f" {printed} lines printed ({workflows}); load average {load:.1f} before"
            )
            for line in summary:
                print(f"    {line}")
    finally:
        if args.keep:
            print(f"kept {url.render_as_string(hide_password=True)}")
        else:
            asyncio.run(drop(database))


if __name__ == "__main__":
    main()
