"""One chaos run: a private broker, a fresh database, replicas, participants, a tap, the faults.

The runner talks to the orchestrator only as an operator would: ``orchestrator migrate``, ``run``
and ``verify`` on the command line, ``ORCHESTRATOR_*`` variables (the caller's are passed on, so a
setting such as a partition count reaches the replicas untouched), the ``{ns}.commands`` and
``{ns}.events`` exchanges, and the database's tables. It never names the orchestrator's queues,
so it does not care how the replicas split their consumption.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from bench.chaos import faults
from bench.chaos.checker import Command, Effects, Entry, Evidence, LedgerRow, Move, SagaRow
from bench.chaos.scenario import Fault, Scenario, schedule
from bench.chaos.system import APPLICATION, MODULE, System
from bench.chaos.wire import Tap, order, publish
from bench.chaos.workflow import CHILD, UNDO, WORKFLOW, ShipmentRequested
from bench.config import Stack
from bench.processes import has_port_flag, migrate
from bench.responder import REPLIES
from orchestrator.core.children import ChildCompensated, ChildCompleted, ChildFailed
from orchestrator.core.engine import saga_id_for
from orchestrator.examples.contracts import (
    ChargePayment,
    OrderShipped,
    OutOfStock,
    PaymentCharged,
    PaymentDeclined,
    PaymentRefunded,
    RefundPayment,
    ReleaseStock,
    ReserveStock,
    ShipmentFailed,
    ShipOrder,
    StockReleased,
    StockReserved,
)
from participants.inventory import INITIAL_STOCK
from tests.integration.private_broker import PrivateBroker
from tests.integration.private_cluster import PrivateCluster
from tests.integration.private_failover import FailoverPostgres

__all__ = ["Outcome", "run"]

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ("rabbitmq_consistent_hash_exchange",)

#: command type -> the replies the kit's example services may give it (``--fail-rate`` makes the
#: steps fail; compensations never do); the responders give only the first
KIT_REPLIES: dict[str, tuple[str, ...]] = {
    ReserveStock.TYPE: (StockReserved.TYPE, OutOfStock.TYPE),
    ReleaseStock.TYPE: (StockReleased.TYPE,),
    ChargePayment.TYPE: (PaymentCharged.TYPE, PaymentDeclined.TYPE),
    RefundPayment.TYPE: (PaymentRefunded.TYPE,),
    ShipOrder.TYPE: (OrderShipped.TYPE, ShipmentFailed.TYPE),
    # the child saga's start, answered by the child's outcome
    ShipmentRequested.TYPE: (ChildCompleted.TYPE, ChildCompensated.TYPE, ChildFailed.TYPE),
}


@dataclass
class Outcome:
    """What the run left for the checker and the report."""

    evidence: Evidence
    faults: list[faults.Done]
    durations: dict[str, float]
    database: str
    namespace: str
    logs: Path
    #: counts that show the faults bit: statuses, journal outcomes (deadlines fired, late
    #: successes undone), redeliveries absorbed
    stats: dict[str, Any] = field(default_factory=dict)


async def run_faults(system: System, plan: list[Fault], origin: float, done: list[faults.Done]) -> None:
    """Each fault at its moment; its ``down`` runs in the background, so faults overlap as they
    would in production (a participant away while a replica is killed)."""
    running: list[asyncio.Task[faults.Done]] = []
    for fault in plan:
        delay = origin + fault.at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        print(f"  {fault.at:7.1f}s {fault.label()}", flush=True)
        running.append(asyncio.create_task(faults.apply(system, fault, origin)))
    done.extend(await asyncio.gather(*running))


async def settle(pool: asyncpg.Pool, tap: Tap, expected: int, scenario: Scenario) -> bool:
    """Wait until every saga is final, the outbox is empty, nothing has moved for ``quiet``
    seconds (no journal entry, no message on the wire) and the tap has read all it was sent;
    False when ``settle_timeout`` ran out."""
    deadline = time.monotonic() + scenario.settle_timeout
    last: tuple[int, int] | None = None
    still_since = time.monotonic()
    while time.monotonic() < deadline:
        row = await pool.fetchrow(
            "SELECT (SELECT count(*) FROM sagas) AS sagas,"
            " (SELECT count(*) FROM sagas WHERE status NOT IN ('completed', 'compensated', 'failed'))"
            " AS open, (SELECT count(*) FROM outbox) AS outbox, (SELECT count(*) FROM journal) AS journal"
        )
        assert row is not None
        now = (int(row["journal"]), len(tap.seen))
        if now != last:
            last, still_since = now, time.monotonic()
        done = row["sagas"] >= expected and row["open"] == 0 and row["outbox"] == 0
        if done and time.monotonic() - still_since >= scenario.quiet and await tap.depth() == 0:
            return True
        await asyncio.sleep(1)
    return False


@dataclass
class Tables:
    sagas: list[SagaRow]
    journal: list[Entry]
    outbox: int
    dead_letters: list[str]
    #: redeliveries the inbox absorbed (acked, decided nothing): the faults' echo
    duplicates: int


async def collect(pool: asyncpg.Pool) -> Tables:
    sagas = [
        SagaRow(r["id"], r["key"], r["status"], r["state"])
        for r in await pool.fetch("SELECT id, key, status, state FROM sagas")
    ]
    entries = []
    for r in await pool.fetch(
        "SELECT saga_id, seq, kind, message_type, message_id, decision->>'outcome' AS outcome,"
        " decision->'commands' AS commands FROM journal ORDER BY saga_id, seq"
    ):
        commands = tuple(
            Command(c["type"], c["message_id"], c.get("route")) for c in orjson.loads(r["commands"] or "[]")
        )
        entries.append(
            Entry(
                r["saga_id"], r["seq"], r["kind"], r["message_type"], r["message_id"], r["outcome"], commands
            )
        )
    outbox = int(await pool.fetchval("SELECT count(*) FROM outbox") or 0)
    dead = [
        f"{r['source']} {r['reason']}: {r['message_type']} {r['message_id']} saga {r['correlation_id']}"
        f" ({r['detail']})"
        for r in await pool.fetch(
            "SELECT source, reason, message_type, message_id, correlation_id, detail"
            " FROM dead_letters ORDER BY id"
        )
    ]
    duplicates = int(await pool.fetchval("SELECT coalesce(sum(duplicates), 0) FROM inbox") or 0)
    return Tables(sagas, entries, outbox, dead, duplicates)


async def collect_effects(pool: asyncpg.Pool, keys: list[str]) -> Effects:
    """The kit's example services' business tables, as they are once everything settled; the
    orders are what the run published, each as ``wire.order`` makes it from its key."""
    ledger = [
        LedgerRow(r["order_id"], r["kind"], int(r["amount_cents"]))
        for r in await pool.fetch("SELECT order_id, kind, amount_cents FROM payment.ledger")
    ]
    moves = [
        Move(r["order_id"], r["sku"], int(r["delta"]), r["kind"])
        for r in await pool.fetch("SELECT order_id, sku, delta, kind FROM inventory.stock_moves")
    ]
    shipments = [r["order_id"] for r in await pool.fetch("SELECT order_id FROM shipping.shipments")]
    stock = {
        r["sku"]: int(r["on_hand"]) for r in await pool.fetch("SELECT sku, on_hand FROM inventory.stock")
    }
    orders = {key: order(key) for key in keys}
    lines: dict[str, dict[str, int]] = {}
    for key, asked in orders.items():
        units: Counter[str] = Counter()
        for line in asked["lines"]:
            units[line["sku"]] += line["quantity"]
        lines[key] = dict(units)
    return Effects(
        ledger=ledger,
        moves=moves,
        shipments=shipments,
        stock=stock,
        initial_stock=INITIAL_STOCK,
        lines=lines,
        amounts={key: int(asked["amount_cents"]) for key, asked in orders.items()},
    )


def verify(stack: Stack, namespace: str, deadline: float) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ORCHESTRATOR_DATABASE_URL": stack.database_url,
        "ORCHESTRATOR_AMQP_URL": stack.amqp_url,
        "ORCHESTRATOR_NAMESPACE": namespace,
        "CHAOS_DEADLINE_SECONDS": str(deadline),
    }
    return subprocess.run(
        [stack.python, "-m", "orchestrator", "verify", "--workflows", MODULE],
        cwd=stack.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )


def _logged_errors(logs: Path) -> list[str]:
    """The replicas' and participants' ERROR lines and tracebacks, each with its file."""
    found = []
    for path in sorted([*logs.glob("replica-*.log"), *logs.glob("participant-*.log")]):
        for line in path.read_text(errors="replace").splitlines():
            if " ERROR " in line or line.startswith("Traceback"):
                found.append(f"{path.name}: {line[:300]}")
    return found


def _repeats(logs: Path) -> int:
    """Commands a participant got again after carrying them out and answered from its inbox (the
    kit logs those with "(recorded reply)"): the redeliveries the effect checks are about."""
    return sum(
        path.read_text(errors="replace").count("(recorded reply)") for path in logs.glob("participant-*.log")
    )


async def _handled(pool: asyncpg.Pool) -> int:
    """Commands the kit carried out (one inbox row each, repeats answered from it)."""
    return int(
        await pool.fetchval(
            "SELECT (SELECT count(*) FROM inventory.participant_inbox)"
            " + (SELECT count(*) FROM payment.participant_inbox)"
            " + (SELECT count(*) FROM shipping.participant_inbox)"
        )
        or 0
    )


async def _create_database(admin_dsn: str, name: str) -> None:
    connection = await asyncpg.connect(admin_dsn)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


async def _drop_database(admin_dsn: str, name: str) -> None:
    connection = await asyncpg.connect(admin_dsn)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def run(scenario: Scenario, admin_dsn: str, log_dir: Path, keep_database: bool = False) -> Outcome:
    """The whole run, setup to teardown; whatever happens, the processes, the broker node and
    (unless kept) the database are gone when it returns or raises."""
    began = time.monotonic()
    durations: dict[str, float] = {}
    token = uuid.uuid4().hex[:8]
    namespace, database = f"chaos-{token}", f"chaos_{token}"
    dsn = f"{admin_dsn.rsplit('/', 1)[0]}/{database}"
    log_dir.mkdir(parents=True, exist_ok=True)
    cluster = PrivateCluster(plugins=PLUGINS) if scenario.ha else None
    ha = FailoverPostgres() if scenario.ha else None
    broker = cluster.nodes[0] if cluster is not None else PrivateBroker("chaos", plugins=PLUGINS)
    system: System | None = None
    tap: Tap | None = None
    pool: asyncpg.Pool | None = None
    try:
        # In this thread, not a worker: the node then gets SIGTERM when this process dies, even
        # by SIGKILL (PrivateBroker's PR_SET_PDEATHSIG is only set from the main thread).
        database_url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
        if cluster is not None and ha is not None:
            cluster.start()
            await asyncio.to_thread(ha.start)
            admin_dsn, dsn, database_url = ha.dsn(), ha.dsn(database), ha.url(database)
            amqp_url = cluster.url
            os.environ["ORCHESTRATOR_QUEUE_TYPE"] = "quorum"  # every process is given the caller's
            print(f"chaos: a 3-node broker cluster and pg_auto_failover (primary {ha.primary()})")
        else:
            broker.start()
            amqp_url = broker.url  # its port is chosen as it starts
        await _create_database(admin_dsn, database)
        python = sys.executable
        stack = Stack.make(ROOT, python, database_url, amqp_url, log_dir, has_port_flag(python, ROOT))
        await asyncio.to_thread(migrate, stack, namespace, MODULE)
        pool = await asyncpg.create_pool(
            dsn, min_size=1, max_size=3, server_settings={"application_name": APPLICATION}
        )
        system = System(scenario, stack, broker, namespace, cluster, ha)
        system.pool = pool
        tap = Tap(amqp_url, namespace, quorum=scenario.ha)
        await tap.start()
        await system.start_all()
        durations["setup_s"] = time.monotonic() - began

        plan = schedule(scenario)
        keys = [f"{token}-{i}" for i in range(scenario.sagas)]
        confirmed: set[str] = set()
        done: list[faults.Done] = []
        origin = time.monotonic()
        print(f"chaos: {scenario.sagas} sagas at {scenario.rate}/s, {len(plan)} faults; logs in {log_dir}")
        await asyncio.gather(
            publish(amqp_url, namespace, keys, scenario.rate, confirmed),
            run_faults(system, plan, origin, done),
        )
        await system.heal()
        durations["chaos_s"] = time.monotonic() - origin

        began_settle = time.monotonic()
        settled = await settle(pool, tap, len(keys), scenario)
        durations["settle_s"] = time.monotonic() - began_settle
        print(f"  settled in {durations['settle_s']:.0f}s" if settled else "  did not settle", flush=True)
        tables = await collect(pool)
        effects = await collect_effects(pool, keys) if system.kit else None
        await system.stop_all()  # verify reads a journal nothing writes any more
        began_verify = time.monotonic()
        checked = await asyncio.to_thread(verify, stack, namespace, scenario.deadline)
        durations["verify_s"] = time.monotonic() - began_verify

        evidence = Evidence(
            workflow=WORKFLOW,
            published=confirmed,
            sagas=tables.sagas,
            journal=tables.journal,
            wire=list(tap.seen),
            replies=KIT_REPLIES
            if system.kit
            else {command: (reply,) for command, (reply, _) in REPLIES.items()}
            | {ShipmentRequested.TYPE: KIT_REPLIES[ShipmentRequested.TYPE]},
            undo=UNDO,
            expected=scenario.expected,
            outbox_left=tables.outbox,
            verify_exit=checked.returncode,
            verify_output=checked.stdout + checked.stderr,
            crashes=list(system.crashes),
            dead_letters=tables.dead_letters,
            effects=effects,
            log_errors=_logged_errors(stack.log_dir) if scenario.ha else None,
        )
        stats = {
            # the orders; their shipping sagas (children) apart
            "by_status": dict(
                Counter(s.status for s in tables.sagas if s.id == saga_id_for(WORKFLOW, s.key))
            ),
            "children_by_status": dict(
                Counter(s.status for s in tables.sagas if s.id == saga_id_for(CHILD, s.key))
            ),
            "journal_by_outcome": dict(Counter(entry.outcome for entry in tables.journal)),
            "journal_by_kind": dict(Counter(entry.kind for entry in tables.journal)),
            "duplicates_absorbed": tables.duplicates,
            "settled": settled,
        }
        if scenario.ha:
            await system.watched()
            stats["failover"] = {
                "database_s": system.database_failovers,
                "broker_node_s": system.node_failovers,
            }
        if effects is not None:
            stats["effects"] = {
                "charges": sum(row.kind == "charge" for row in effects.ledger),
                "refunds": sum(row.kind == "refund" for row in effects.ledger),
                "stock_moves": len(effects.moves),
                "shipments": len(effects.shipments),
                "participant_commands": await _handled(pool),
                "answered_from_inbox": _repeats(stack.log_dir),
            }
        durations["total_s"] = time.monotonic() - began
        return Outcome(evidence, done, durations, database, namespace, log_dir, stats)
    finally:
        if tap is not None:
            await tap.close()
        if system is not None:
            await system.stop_all()
        if pool is not None:
            await pool.close()
        if cluster is not None:
            await asyncio.to_thread(cluster.stop)
        else:
            await asyncio.to_thread(broker.stop)
        if ha is not None:
            await asyncio.to_thread(ha.stop)
        elif not keep_database:
            with contextlib.suppress(Exception):
                await _drop_database(admin_dsn, database)
