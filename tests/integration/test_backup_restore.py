"""The backup and restore drill of docs/operations.md, "Backup and restore", on a cluster of the
test's own with WAL archiving: a base backup taken under load with ``pg_basebackup``, the service
running on, a restore point, more sagas started after it, then the database restored to that point
and the orchestrator started on it.

The participants (the example services, on the participant kit) keep their own database elsewhere
(the shared server), as real services do: the restore takes the orchestrator back, not them. What
must hold afterwards:

- ``orchestrator reconcile`` lists exactly the sagas the restored database does not know and the
  participants acted for (those started after the restore point), and asks again every command an
  in-flight saga waits on, with its own id;
- every saga the restored database knows finishes as it had before, every command it decides again
  keeps its id, and the participants answer each from their inboxes: their ledgers are unchanged,
  no charge is doubled;
- ``orchestrator verify`` is clean.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from orchestrator.adapters.postgres.store import PostgresStore
from orchestrator.core.ids import saga_id_for
from orchestrator.settings import database_url

from .conftest import ROOT, Bench, delete_namespace, unique
from .private_postgres import PrivatePostgres

pytestmark = pytest.mark.integration

order_ids = unique("restore")
FIRST, SECOND, AFTER = 120, 80, 40


@pytest.fixture(scope="module")
def archive() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="wal-archive-"))
    subprocess.run(["chown", "postgres:postgres", str(directory)], check=True)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def archived_postgres(archive: Path) -> Iterator[PrivatePostgres]:
    settings = {
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": f"test ! -f {archive}/%f && cp %p {archive}/%f",
    }
    with PrivatePostgres(settings=settings) as cluster:
        yield cluster


class ElsewhereBench(Bench):
    """A bench whose participants keep their tables in a database of their own."""

    participants_url: str = ""

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, "PARTICIPANT_DATABASE_URL": self.participants_url}


@pytest_asyncio.fixture
async def drill(archived_postgres: PrivatePostgres, tmp_path: Path) -> AsyncIterator[ElsewhereBench]:
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    setup = ElsewhereBench(namespace, archived_postgres.url(f"orchestrator_{uuid.uuid4().hex[:8]}"), tmp_path)
    participants = f"participants_{uuid.uuid4().hex[:8]}"
    setup.participants_url = f"postgresql://postgres@127.0.0.1:5432/{participants}"
    await setup.migrate()
    await setup.connect()
    setup.store = PostgresStore.from_url(database_url(setup.database_url), pool_size=2)
    try:
        yield setup
    finally:
        await setup.cleanup()
        await delete_namespace(namespace)
        admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{participants}" WITH (FORCE)')
        finally:
            await admin.close()


def restore(cluster: PrivatePostgres, backup: Path, archive: Path, target: str) -> None:
    """The runbook's restore: the server stopped, its data directory replaced by the base backup,
    the archived WAL replayed up to the named restore point, then promoted."""
    cluster.stop_server()
    data = cluster.data_directory
    shutil.rmtree(data)
    shutil.copytree(backup, data)
    (data / "recovery.signal").touch()
    (cluster.conf_d / "recovery.conf").write_text(
        f"restore_command = 'cp {archive}/%f %p'\n"
        f"recovery_target_name = '{target}'\n"
        "recovery_target_action = 'promote'\n"
    )
    subprocess.run(["chown", "-R", "postgres:postgres", str(data)], check=True)
    data.chmod(0o700)
    cluster.start_server()


async def until_promoted(dsn: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            connection = await asyncpg.connect(dsn)
            try:
                if not await connection.fetchval("SELECT pg_is_in_recovery()"):
                    return
            finally:
                await connection.close()
        except (OSError, asyncpg.PostgresError):
            pass
        assert time.monotonic() < deadline, "the restored server did not come out of recovery"
        await asyncio.sleep(0.2)


async def ledger(url: str) -> list[tuple[str, str, str]]:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch("SELECT order_id, kind, message_id FROM payment.ledger ORDER BY id")
    finally:
        await connection.close()
    return [(r["order_id"], r["kind"], r["message_id"]) for r in rows]


async def waiting_to_ship(bench: Bench, keys: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        sagas = [await bench.saga("order", key) for key in keys]
        if all(s is not None and s.state == "ship" for s in sagas):
            return
        assert time.monotonic() < deadline, [s and (s.state, s.status.value) for s in sagas]
        await asyncio.sleep(0.2)


async def statuses(bench: Bench, keys: list[str]) -> dict[str, str | None]:
    found = {}
    for key in keys:
        saga = await bench.saga("order", key)
        found[key] = saga.status.value if saga is not None else None
    return found


async def test_a_restore_to_a_point_in_time_loses_no_effect_and_lists_what_it_cannot_know(
    drill: ElsewhereBench, archived_postgres: PrivatePostgres, archive: Path, tmp_path: Path
) -> None:
    bench = drill
    cluster = archived_postgres
    database = bench.database_url.rsplit("/", 1)[1]
    dsn = f"postgresql://postgres@127.0.0.1:{cluster.port}/{database}"
    orchestrator = await bench.start_orchestrator()
    participants = await bench.start_participants("inventory", "payment", "shipping")  # the order saga's

    first = [order_ids() for _ in range(FIRST)]
    for key in first:
        await bench.place_order(key)
    await bench.finished("order", first[:20], timeout=120)
    backup = tmp_path / "base"
    backed_up = await asyncio.to_thread(
        subprocess.run,
        ["pg_basebackup", "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", "-D", str(backup),
         "-X", "stream", "-c", "fast"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert backed_up.returncode == 0, backed_up.stderr
    await bench.finished("order", first, timeout=120)

    # Shipping away while the second lot is placed: each of its sagas reserved and charged, and
    # waiting to ship at the restore point, whatever the machine's pace (a timed point found every
    # saga done on a fast run).
    await asyncio.to_thread(participants["shipping"].stop)
    second = [order_ids() for _ in range(SECOND)]
    for key in second:
        await bench.place_order(key)
    await waiting_to_ship(bench, second)
    connection = await asyncpg.connect(dsn)
    try:  # mid-run: the whole second lot in flight
        await connection.execute("SELECT pg_create_restore_point('drill')")
    finally:
        await connection.close()
    await bench.start_participants("shipping")
    after = [order_ids() for _ in range(AFTER)]
    for key in after:
        await bench.place_order(key)
    await bench.finished("order", second + after, timeout=180)
    before_restore = await statuses(bench, first + second)
    charged = await ledger(bench.participants_url)
    connection = await asyncpg.connect(dsn)
    try:  # the segment holding the restore point, archived
        segment = await connection.fetchval("SELECT pg_walfile_name(pg_current_wal_lsn())")
        await connection.execute("SELECT pg_switch_wal()")
    finally:
        await connection.close()
    deadline = time.monotonic() + 30
    while not (archive / segment).exists():
        assert time.monotonic() < deadline, f"{segment} was not archived"
        await asyncio.sleep(0.2)

    orchestrator.kill()
    assert bench.store is not None
    await bench.store.close()
    await asyncio.to_thread(restore, cluster, backup, archive, "drill")
    await until_promoted(dsn)
    bench.store = PostgresStore.from_url(database_url(bench.database_url), pool_size=2)
    restored = await statuses(bench, first + second + after)
    unknown = {saga_id_for("order", k) for k, status in restored.items() if status is None}
    assert {saga_id_for("order", k) for k in after} <= unknown  # started after the restore point
    in_flight = [k for k in second if restored[k] in ("running", "compensating")]
    assert in_flight, restored  # the point was mid-run: the drill would prove little otherwise

    reconciled = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "orchestrator", "reconcile", "--participant-database", bench.participants_url],
        env=bench.env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert reconciled.returncode == 1, reconciled.stdout + reconciled.stderr
    listed = {
        line.split(" saga ")[1].split()[0]
        for line in reconciled.stdout.splitlines()
        if line.startswith("lost ")
    }
    assert listed == unknown, reconciled.stdout
    assert "asked again: " in reconciled.stdout

    await bench.start_orchestrator()
    known = [k for k in first + second if restored[k] is not None]
    finished = await bench.finished("order", known, timeout=180)
    assert {k: s.status.value for k, s in finished.items()} == {k: before_restore[k] for k in known}
    assert await ledger(bench.participants_url) == charged  # every command answered from an inbox
    verify = await asyncio.to_thread(bench.verify)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    print(
        f"restored to the point with {len(in_flight)} of {SECOND} sagas in flight;"
        f" {len(unknown)} sagas listed as unknown; {reconciled.stdout.splitlines()[0]}"
    )
