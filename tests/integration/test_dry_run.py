"""``orchestrator check --journals`` against real PostgreSQL: sagas parked in several states by the
service layer over the PostgreSQL store (the journals the service writes), then the command line,
as an operator runs it before a deploy, with the definitions they were written by and with changed
ones (``tests/integration/dry_run_after.py``)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import orjson
import pytest

from orchestrator.adapters.postgres.journals import read_journals
from orchestrator.adapters.postgres.store import PostgresStore
from orchestrator.core.engine import saga_id_for
from orchestrator.core.messages import Message, dump
from orchestrator.core.routing import Registry
from orchestrator.examples.contracts import (
    EscrowOpened,
    Line,
    OrderPlaced,
    OrderShipped,
    PaymentCharged,
    PaymentDeclined,
    StockReserved,
)
from orchestrator.service.batch import Envelope, Verdict, process_batch
from tests.integration.conftest import ROOT, migrated_database
from tests.integration.dry_run_before import WORKFLOWS, GiftOrdered
from tests.replies import answer

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def envelope(message: Message, correlation_id: str | None = None) -> Envelope:
    key = next(iter(dump(message).values()))
    return Envelope(orjson.dumps(dump(message)), message.TYPE, f"{message.TYPE}-{key}", correlation_id)


async def write_journals(url: str) -> None:
    """Orders waiting in ``reserve``, ``charge``, ``ship`` and ``compensating_reserve``, one
    completed, an escrow and a gift waiting, all decided by ``dry_run_before``'s definitions and
    written by the PostgreSQL store, message by message as the consumer takes them."""
    registry = Registry(WORKFLOWS)
    store = PostgresStore.from_url(url, pool_size=1)

    def order(key: str) -> str:
        return saga_id_for("order", key)

    starts = [
        envelope(OrderPlaced(k, "c-1", [Line("sku-1", 2)], 1500))
        for k in ("o-reserve", "o-charge", "o-ship", "o-declined", "o-done")
    ] + [envelope(EscrowOpened("e-1", "b-1", "s-1", 5000)), envelope(GiftOrdered("g-1"))]
    # each reply with the section 6 id of the command its saga waits on, as a participant sends it
    replies: list[list[tuple[Message, str]]] = [
        [(StockReserved(k, f"r-{k}"), order(k)) for k in ("o-charge", "o-ship", "o-declined", "o-done")],
        [(PaymentCharged(k, f"ch-{k}"), order(k)) for k in ("o-ship", "o-done")]
        + [(PaymentDeclined("o-declined", "no funds"), order("o-declined"))],
        [(OrderShipped("o-done", "t-1"), order("o-done"))],
    ]
    try:
        result = await process_batch(registry, store, starts, NOW)
        assert set(result.verdicts) == {Verdict.ACCEPTED}, result.reasons
        for step in replies:
            batch = [await answer(store, message, saga_id) for message, saga_id in step]
            result = await process_batch(registry, store, batch, NOW)
            assert set(result.verdicts) == {Verdict.ACCEPTED}, result.reasons
    finally:
        await store.close()


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A database of this module's own: the session's holds other tests' sagas."""
    with migrated_database("orchestrator_dry_run") as url:
        asyncio.run(write_journals(url))
        yield url


def check(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "check", *args],
        env={**os.environ, "ORCHESTRATOR_DATABASE_URL": url},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def saga_lines(out: str) -> dict[str, str]:
    """The report's saga lines by saga key (``... saga <key> (id ...``)."""
    return {
        line.split(": saga ", 1)[1].split(" ", 1)[0]: line
        for line in out.splitlines()
        if line.startswith(("error: ", "warning: ")) and ": saga " in line
    }


def test_the_definitions_the_journals_were_written_by_change_nothing(database: str) -> None:
    done = check(
        database, "--workflows", "tests.integration.dry_run_before", "--journals", "--finished-sample", "5"
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert saga_lines(done.stdout) == {}
    assert done.stdout.splitlines()[-7:] == [
        "replayed 7 journals (6 in flight, 1 finished): 0 in flight would break,"
        " 0 finished would go otherwise, 7 unchanged",
        "  no_definition      0 in flight, 0 finished",
        "  refused            0 in flight, 0 finished",
        "  gone_state         0 in flight, 0 finished",
        "  different_command  0 in flight, 0 finished",
        "  different_outcome  0 in flight, 0 finished",
        "  unchanged          6 in flight, 1 finished",
    ]


def test_changed_definitions_report_each_saga_in_flight_that_would_break_and_exit_1(database: str) -> None:
    done = check(database, "--workflows", "tests.integration.dry_run_after", "--journals")

    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr == ""
    lines = saga_lines(done.stdout)
    assert sorted(lines) == ["e-1", "g-1", "o-charge", "o-declined", "o-ship"]  # not o-reserve, not o-done
    assert all(line.startswith("error: ") for line in lines.values())
    assert lines["e-1"] == (
        f"error: escrow release 1: saga e-1 (id {saga_id_for('escrow', 'e-1')}, awaiting_buyer, running):"
        " the new module has no definition of workflow escrow release 1 [no_definition]"
    )
    assert lines["g-1"].endswith(
        ", wrapping, running): the new definition raises while deciding it: KeyError: 'shop_id' [refused]"
    )
    assert lines["o-charge"] == (
        f"error: order release 1: saga o-charge (id {saga_id_for('order', 'o-charge')}, charge, running):"
        " its state charge is not a state of the new definition [gone_state]; journal #2"
        " (inventory.StockReserved): recorded moved to charge (running), the new definition gives"
        " moved to payment (running) [different_outcome]"
    )
    ship = lines["o-ship"]
    assert (
        ", ship, running): its journal passes through state charge, not a state of the new definition" in ship
    )
    assert "journal #3 (payment.PaymentCharged): command " in ship
    assert (
        "recorded shipping.ShipOrder {'lines': [{'sku': 'sku-1', 'quantity': 2}], 'order_id': 'o-ship'}"
        " but the workflow now sends {'order_id': 'o-ship', 'lines': []} [different_command]"
    ) in ship  # jsonb keeps its keys in its own order
    assert ship.endswith("the new definition gives moved to payment (running) [different_outcome]")
    assert (
        ", compensating_reserve, compensating): its journal passes through state charge"
        in lines["o-declined"]
    )
    assert done.stdout.splitlines()[-7:] == [
        "replayed 6 journals (6 in flight, 0 finished): 5 in flight would break,"
        " 0 finished would go otherwise, 1 unchanged",
        "  no_definition      1 in flight, 0 finished",
        "  refused            1 in flight, 0 finished",
        "  gone_state         3 in flight, 0 finished",
        "  different_command  1 in flight, 0 finished",
        "  different_outcome  3 in flight, 0 finished",
        "  unchanged          1 in flight, 0 finished",
    ]
    assert done.stdout.splitlines()[0] == "checked 2 workflows (order, gift): 0 errors, 0 warnings"


def test_a_sample_of_finished_sagas_only_warns(database: str) -> None:
    done = check(
        database, "--workflows", "tests.integration.dry_run_after", "--journals", "--finished-sample", "1"
    )

    lines = saga_lines(done.stdout)
    assert done.returncode == 1  # the sagas in flight still break
    assert lines["o-done"].startswith("warning: order release 1: saga o-done ")
    assert lines["o-done"].endswith("[different_outcome]")
    assert list(lines)[-1] == "o-done"  # warnings after the errors
    assert (
        "replayed 7 journals (6 in flight, 1 finished): 5 in flight would break,"
        " 1 finished would go otherwise, 1 unchanged"
    ) in done.stdout


def test_journals_are_streamed_whole_in_saga_id_order_whatever_the_chunk(database: str) -> None:
    """Chunks of 2 rows cut through the sagas' journals: each still comes whole, in id order."""

    async def journals() -> list[tuple[str, str, int]]:
        return [
            (j.saga_id, j.key, len(j.entries))
            async for j in read_journals(database, finished_sample=10, chunk=2)
        ]

    read = asyncio.run(journals())

    assert [saga_id for saga_id, _, _ in read] == sorted(saga_id for saga_id, _, _ in read)
    assert {key: entries for _, key, entries in read} == {
        "o-reserve": 1,
        "o-charge": 2,
        "o-ship": 3,
        "o-declined": 3,
        "o-done": 4,
        "e-1": 1,
        "g-1": 1,
    }


def test_partitions_share_the_sagas_out_and_any_number_of_processes_reports_the_same(database: str) -> None:
    async def keys(partition: tuple[int, int]) -> list[str]:
        return [j.saga_id async for j in read_journals(database, partition=partition)]

    parts = [asyncio.run(keys((k, 3))) for k in range(3)]
    whole = asyncio.run(keys((0, 1)))
    one = check(database, "--workflows", "tests.integration.dry_run_after", "--journals", "--jobs", "1")
    three = check(database, "--workflows", "tests.integration.dry_run_after", "--journals", "--jobs", "3")

    assert sorted(k for part in parts for k in part) == whole and len(whole) == 6
    assert all(part == sorted(part) for part in parts) and sum(1 for part in parts if part) >= 2
    assert (one.returncode, three.returncode) == (1, 1)
    assert one.stdout == three.stdout  # the same lines in the same order: saga id order
    ids = [line.split("(id ", 1)[1].split(",", 1)[0] for line in one.stdout.splitlines() if "(id " in line]
    assert ids == sorted(ids) and len(ids) == 5
