"""The five questions of the benchmark, one coroutine each; docs/benchmark.md says what each figure means.

Every scenario gets an empty database and a namespace of its own, starts the orchestrator
afresh, and deletes its queues and exchanges after, so that no scenario measures the leftovers
of another.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import statistics
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from bench.config import (
    RECORDED_CPU_MS_PER_STEP,
    TARGET_CPU_MS_PER_STEP,
    TARGET_KIT_TO_ORCHESTRATOR,
    TARGET_TO_PEER,
    Sizes,
    Stack,
)
from bench.infra import Broker, Database, Started
from bench.parking import park
from bench.processes import ORDER_SERVICES, READY, KitService, Orchestrator, Responder, run_floor, run_peer
from bench.report import histogram_percentiles, percentiles
from bench.workflows import HOLD, ORDER
from orchestrator.examples.contracts import OrderPlaced

__all__ = ["Context", "deadlines", "kit", "latency", "memory", "recovery", "throughput"]

STEPS = 3
START = OrderPlaced.TYPE
COMPLETED = "SELECT count(*) FROM sagas WHERE status = 'completed'"
FINISHED = "SELECT count(*) FROM sagas WHERE status IN ('completed', 'compensated', 'failed')"
STEP_HISTOGRAM = "orchestrator_step_latency_seconds"
FIRED = "SELECT count(*) FROM journal WHERE kind = 'deadline'"
OUTBOX_EMPTY = "SELECT (NOT EXISTS (SELECT 1 FROM outbox))::int"
# By workflow and state, which the sagas_workflow_state index answers: polling 100,000 rows by
# state alone would be a scan that competes with the orchestrator for the same cores.
PARKED = f"SELECT count(*) FROM sagas WHERE workflow = '{ORDER}' AND state = 'reserve'"

# (command that arrives, reply that led to it) for each step of the order saga; the first step's
# cause is the start event, whose time the driver keeps.
STEP_CHAIN = (
    ("reserve", "inventory.ReserveStock", None),
    ("charge", "payment.ChargePayment", "inventory.StockReserved"),
    ("ship", "shipping.ShipOrder", "payment.PaymentCharged"),
)


@dataclass
class Context:
    stack: Stack
    sizes: Sizes
    db: Database
    broker: Broker
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))
    max_sagas_per_s: float | None = None
    #: seconds between the analyses that stand in for autovacuum when the server runs without it
    #: (None: it runs with it; see ``Scene``)
    analyze_every: float | None = None

    def half_load(self) -> float:
        """Half the measured maximum: the load at which latency and deadlines are taken."""
        if self.sizes.latency_rate:
            return self.sizes.latency_rate
        if self.max_sagas_per_s:
            return round(self.max_sagas_per_s / 2, 1)
        return self.sizes.default_rate

    def keys(self, prefix: str, count: int, start: int = 0) -> list[str]:
        return [f"{prefix}-{self.run_id}-{i}" for i in range(start, start + count)]


class Scene:
    """One scenario's namespace, empty tables and processes; everything stopped and deleted after."""

    def __init__(self, ctx: Context, name: str, deadline_seconds: float = 10.0) -> None:
        self.ctx = ctx
        self.name = name
        self.namespace = f"bench-{secrets.token_hex(4)}"
        log_dir = ctx.stack.log_dir
        self.orchestrator = Orchestrator(
            ctx.stack, self.namespace, log_dir / f"{name}-orchestrator.log", deadline_seconds
        )
        self.responders: list[Responder] = []
        #: the example services on the participant kit (the kit scenario)
        self.kits: list[KitService] = []
        self._analyzing: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Scene:
        await self.ctx.db.reset()
        if self.ctx.analyze_every:
            self._analyzing = asyncio.create_task(self.ctx.db.analyze_every(self.ctx.analyze_every))
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._analyzing is not None:
            self._analyzing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._analyzing
        for child in [*self.responders, *self.kits]:
            await child.terminate()
        await self.orchestrator.terminate()
        await self.ctx.broker.cleanup(self.namespace)

    async def responder(self, services: tuple[str, ...], record: bool = False) -> Responder:
        index = len(self.responders)
        log = self.ctx.stack.log_dir / f"{self.name}-responder-{index}.log"
        responder = Responder(self.ctx.stack, self.namespace, log)
        self.responders.append(responder)
        path = self.ctx.stack.log_dir / f"{self.name}-responder-{index}.json" if record else None
        await responder.start(services, path)
        await self.ctx.broker.wait_for_consumers(self.namespace, services)
        return responder

    def problems(self) -> dict[str, Any]:
        return self.orchestrator.log_problems()


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _s(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


async def _statuses(db: Database, workflow: str) -> dict[str, int]:
    rows = await db.rows(
        "SELECT status, count(*) AS n FROM sagas WHERE workflow = $1 GROUP BY status", workflow
    )
    return {str(r["status"]): int(r["n"]) for r in rows}


# 1. throughput ----------------------------------------------------------------------------------
async def _throughput_once(ctx: Context, index: int) -> dict[str, Any]:
    sizes, db, broker = ctx.sizes, ctx.db, ctx.broker
    count = sizes.throughput_sagas
    async with Scene(ctx, f"throughput-{index}") as scene:
        orchestrator = scene.orchestrator
        await orchestrator.start()
        responder = await scene.responder(ORDER_SERVICES)
        keys = ctx.keys(f"t{index}", count)
        cpu_before = orchestrator.cpu_seconds()
        responder_before = responder.cpu_seconds()
        began_wall = time.time()
        publishing = asyncio.create_task(broker.burst(scene.namespace, ORDER, keys))
        waited, completed = await db.wait_count(COMPLETED, count, sizes.wait_seconds)
        await publishing
        last = await db.value(
            "SELECT extract(epoch FROM max(updated_at)) FROM sagas WHERE status = 'completed'"
        )
        cpu = orchestrator.cpu_seconds() - cpu_before
        responder_cpu = responder.cpu_seconds() - responder_before
        seconds = float(last) - began_wall if last is not None else None
        result: dict[str, Any] = {
            "sagas": count,
            "completed": completed,
            "finished": waited is not None,
            "seconds": _s(seconds),
            "sagas_per_s": round(completed / seconds, 1) if seconds else None,
            "steps_per_s": round(completed * STEPS / seconds, 1) if seconds else None,
            "orchestrator_cpu_s": round(cpu, 2),
            "orchestrator_cpu_ms_per_step": round(cpu * 1000 / (completed * STEPS), 3) if completed else None,
            "responder_cpu_s": round(responder_cpu, 2),
            "pipeline_cpu_ms_per_step": (
                round((cpu + responder_cpu) * 1000 / (completed * STEPS), 3) if completed else None
            ),
            "log": scene.problems(),
        }
        return result


async def throughput(ctx: Context) -> dict[str, Any]:
    """A burst of N sagas, participants answering at once; the floor with the same N, alternating."""
    runs: list[dict[str, Any]] = []
    floors: list[dict[str, Any]] = []
    notes: list[str] = []
    for index in range(max(1, ctx.sizes.throughput_repeats)):
        floor, note = await run_floor(ctx.stack, ctx.sizes.throughput_sagas, STEPS)
        if floor is None:
            notes.append(note)
        else:
            floors.append(floor)
        runs.append(await _throughput_once(ctx, index))
    measured = [r for r in runs if r["steps_per_s"]]
    orchestrator_steps = statistics.median(r["steps_per_s"] for r in measured) if measured else None
    floor_steps = statistics.median(f["steps_per_s"] for f in floors) if floors else None
    if measured:
        ctx.max_sagas_per_s = statistics.median(r["sagas_per_s"] for r in measured)
    ratio = round(orchestrator_steps / floor_steps, 3) if orchestrator_steps and floor_steps else None
    peer, peer_note = await _peer(ctx)
    peer_steps = peer["steps_per_s"] if peer else None
    to_peer = round(orchestrator_steps / peer_steps, 1) if orchestrator_steps and peer_steps else None
    return {
        "cpu_ms_per_step": _cpu_per_step(runs, floors),
        "sagas": ctx.sizes.throughput_sagas,
        "steps_per_saga": STEPS,
        "orchestrator": {
            "sagas_per_s": ctx.max_sagas_per_s,
            "steps_per_s": orchestrator_steps,
            "all_finished": all(r["finished"] for r in runs),
            "runs": runs,
        },
        "floor": {
            "steps_per_s": floor_steps,
            "sagas_per_s": statistics.median(f["sagas_per_s"] for f in floors) if floors else None,
            "runs": floors,
        }
        if floors
        else None,
        "floor_note": "; ".join(dict.fromkeys(notes)) or None,  # each repeat says the same
        "ratio": ratio,
        "target": 0.85,
        "meets_target": ratio >= 0.85 if ratio is not None else None,
        "peer": _peer_figures(peer) if peer else None,
        "peer_note": peer_note,
        "orchestrator_to_peer": to_peer,
        "orchestrator_to_peer_target": TARGET_TO_PEER,
        "meets_orchestrator_to_peer_target": to_peer >= TARGET_TO_PEER if to_peer is not None else None,
    }


async def _peer(ctx: Context) -> tuple[dict[str, Any] | None, str | None]:
    """The same saga written with DBOS, one burst of ``peer_sagas`` in a namespace of its own,
    after the orchestrator's runs so as not to share the cores with them; (its JSON, None) or
    (None, why not)."""
    if ctx.sizes.peer_sagas <= 0:
        return None, "no peer: --no-peer (or --peer-sagas 0)"
    namespace = f"bench-{secrets.token_hex(4)}"
    try:
        peer, note = await run_peer(ctx.stack, ctx.sizes.peer_sagas, namespace, ctx.sizes.wait_seconds)
    finally:
        await ctx.broker.cleanup(namespace)
    return (peer, None) if peer is not None else (None, note)


def _peer_figures(peer: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": peer.get("peer", "dbos"),
        "version": peer.get("dbos_version"),
        "sagas": peer.get("sagas"),
        "completed": peer.get("completed"),
        "steps_per_s": peer.get("steps_per_s"),
        "sagas_per_s": peer.get("sagas_per_s"),
        "cpu_ms_per_step": peer.get("cpu_ms_per_step"),
        "pipeline_cpu_ms_per_step": peer.get("pipeline_cpu_ms_per_step"),
        "runs": [peer],
    }


def _cpu_per_step(runs: list[dict[str, Any]], floors: list[dict[str, Any]]) -> dict[str, Any]:
    """The CPU of a step, medians of the runs: the orchestrator's alone (the figure docs/benchmark.md
    records and issue 30 aims at), and with its responder beside the floor's, one process that
    plays both parts."""

    def median_of(rows: list[dict[str, Any]], key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return round(statistics.median(values), 3) if values else None

    return {
        "orchestrator": median_of(runs, "orchestrator_cpu_ms_per_step"),
        "orchestrator_and_responder": median_of(runs, "pipeline_cpu_ms_per_step"),
        "floor": median_of(floors, "cpu_ms_per_step"),
        "recorded": RECORDED_CPU_MS_PER_STEP,
        "target": TARGET_CPU_MS_PER_STEP,
    }


# 1b. the participant kit ---------------------------------------------------------------------------
async def kit(ctx: Context) -> dict[str, Any]:
    """The burst again, answered by the example services on the participant kit (participants/:
    each command a transaction of their own database, its claim, business statements and recorded
    reply) instead of the responder, which answers at once: how many commands a second the kit
    carries out beside the orchestrator (issue 30: at least half the orchestrator's steps/s, for
    the kit to be ``make chaos``'s participants). Orders spread over a hundred SKUs, as a shop's
    do (order_body): one SKU for all would time the example inventory's row lock, not the kit."""
    sizes, db, broker = ctx.sizes, ctx.db, ctx.broker
    count = sizes.kit_sagas
    await db.drop_database(ctx.stack.kit_dsn)  # the services create it again, and their tables
    async with Scene(ctx, "kit") as scene:
        await scene.orchestrator.start()
        for service in ORDER_SERVICES:
            log = ctx.stack.log_dir / f"kit-{service}.log"
            kit_service = KitService(
                ctx.stack, scene.namespace, log, service, sizes.kit_concurrency, ctx.stack.kit_dsn
            )
            scene.kits.append(kit_service)
            await kit_service.start()
        await broker.wait_for_consumers(scene.namespace, ORDER_SERVICES)
        keys = ctx.keys("k", count)
        cpu_before = {k.service: k.cpu_seconds() for k in scene.kits}
        began_wall = time.time()
        publishing = asyncio.create_task(broker.burst(scene.namespace, ORDER, keys))
        waited, _ = await db.wait_count(FINISHED, count, sizes.wait_seconds)
        await publishing
        last = await db.value("SELECT extract(epoch FROM max(updated_at)) FROM sagas")
        cpu = {k.service: round(k.cpu_seconds() - cpu_before[k.service], 2) for k in scene.kits}
        statuses = await _statuses(db, ORDER)
    seconds = float(last) - began_wall if last is not None else None
    completed = statuses.get("completed", 0)
    steps_per_s = round(completed * STEPS / seconds, 1) if seconds and completed else None
    orchestrator = round(ctx.max_sagas_per_s * STEPS, 1) if ctx.max_sagas_per_s else None
    ratio = round(steps_per_s / orchestrator, 3) if steps_per_s and orchestrator else None
    return {
        "sagas": count,
        "finished": waited is not None,
        "statuses": statuses,
        "concurrency": sizes.kit_concurrency,
        "seconds": _s(seconds),
        "sagas_per_s": round(completed / seconds, 1) if seconds and completed else None,
        "steps_per_s": steps_per_s,
        "cpu_s": cpu,
        "cpu_ms_per_command": round(sum(cpu.values()) * 1000 / (count * STEPS), 3) if count else None,
        "orchestrator_steps_per_s": orchestrator,
        "ratio_to_orchestrator": ratio,
        "target": TARGET_KIT_TO_ORCHESTRATOR,
        "meets_target": ratio >= TARGET_KIT_TO_ORCHESTRATOR if ratio is not None else None,
        "log": scene.problems(),
    }


# 2. latency -------------------------------------------------------------------------------------
@dataclass
class Steps:
    """Step latencies in ms, by step; ``inbound``/``outbound`` split each step at the moment the
    orchestrator decided (the journal's ``recorded_at``, taken when its batch began)."""

    total: dict[str, list[float]] = field(default_factory=dict)
    inbound: list[float] = field(default_factory=list)
    outbound: list[float] = field(default_factory=list)

    def all(self) -> list[float]:
        return [v for values in self.total.values() for v in values]


def _step_latencies(started: Started, record: dict[str, Any], decided: dict[tuple[str, str], float]) -> Steps:
    """Per step: the next command's arrival at the participant minus the moment the event that
    caused it was handed to the broker. Only the first copy of a redelivered message counts."""
    arrived: dict[tuple[str, str], tuple[float, float]] = {}
    replied: dict[tuple[str, str], tuple[float, float]] = {}
    for key, type_, at, wall in record["commands"]:
        arrived.setdefault((key, type_), (at, wall))
    for key, type_, at, wall in record["replies"]:
        replied.setdefault((key, type_), (at, wall))
    steps = Steps({name: [] for name, _, _ in STEP_CHAIN})
    for key, placed in started.monotonic.items():
        for name, command, cause in STEP_CHAIN:
            begin = (placed, started.wall[key]) if cause is None else replied.get((key, cause))
            end = arrived.get((key, command))
            if begin is None or end is None:
                continue
            steps.total[name].append((end[0] - begin[0]) * 1000)
            at = decided.get((key, cause or START))
            if at is not None:
                steps.inbound.append((at - begin[1]) * 1000)
                steps.outbound.append((end[1] - at) * 1000)
    return steps


async def latency(ctx: Context) -> dict[str, Any]:
    """Open loop at half the measured maximum; the floor's own figures at the same rate beside."""
    rate = ctx.half_load()
    count = max(1, round(rate * ctx.sizes.latency_seconds))
    async with Scene(ctx, "latency") as scene:
        await scene.orchestrator.start()
        responder = await scene.responder(ORDER_SERVICES, record=True)
        keys = ctx.keys("l", count)
        cpu_before = scene.orchestrator.cpu_seconds()
        began = time.monotonic()
        started = await ctx.broker.at_rate(scene.namespace, ORDER, keys, rate)
        offered = count / (time.monotonic() - began)
        waited, completed = await ctx.db.wait_count(COMPLETED, count, ctx.sizes.wait_seconds)
        cpu = scene.orchestrator.cpu_seconds() - cpu_before
        exposed = await scene.orchestrator.metrics()
        record = await responder.stop() or {"commands": [], "replies": []}
        done = await ctx.db.rows(
            "SELECT key, extract(epoch FROM updated_at) AS at FROM sagas WHERE status = 'completed'"
        )
        journal = await ctx.db.rows(
            "SELECT s.key, j.message_type, extract(epoch FROM j.recorded_at) AS at"
            " FROM journal j JOIN sagas s ON s.id = j.saga_id"
        )
        problems = scene.problems()
    decided = {(r["key"], r["message_type"]): float(r["at"]) for r in journal}
    by_step = _step_latencies(started, record, decided)
    steps = by_step.all()
    sagas = [(float(r["at"]) - started.wall[r["key"]]) * 1000 for r in done if r["key"] in started.wall]
    floor, note = await run_floor(ctx.stack, count, STEPS, rate=rate)
    ours = percentiles(steps)
    # The step: event in at the orchestrator to the broker's confirm of the command it
    # caused, as the orchestrator times it itself (its histogram, read through /metrics).
    inside = histogram_percentiles(exposed, STEP_HISTOGRAM) if exposed else None
    result: dict[str, Any] = {
        "rate": rate,
        "offered_rate": round(offered, 1),
        "seconds": ctx.sizes.latency_seconds,
        "sagas": count,
        "orchestrator": {
            "completed": completed,
            "finished": waited is not None,
            "step_ms": ours,
            "step_ms_event_in_to_confirm": inside,
            "step_ms_by_step": {name: percentiles(values) for name, values in by_step.total.items()},
            "step_ms_inbound": percentiles(by_step.inbound),
            "step_ms_outbound": percentiles(by_step.outbound),
            "saga_ms": percentiles(sagas),
            # a start and three replies per saga: small batches cost more per message than full ones
            "cpu_ms_per_message": round(cpu * 1000 / (count * (STEPS + 1)), 3),
            "log": problems,
        },
        "floor": floor,
        "floor_note": None if floor else note,
    }
    floor_p99 = floor.get("step_latency_ms_p99") if floor else None
    result.update(_targets(inside or {}, floor_p99))
    # participant to participant against the floor's own span of the same name (a floor that does
    # not report it: against its hop through the participant, as before)
    floor_p2p_p99 = (floor.get("p2p_step_ms_p99") or floor_p99) if floor else None
    result["end_to_end"] = _targets(ours, floor_p2p_p99)
    return result


def _targets(step_ms: dict[str, Any], floor_p99: float | None) -> dict[str, Any]:
    p50, p99 = step_ms.get("p50"), step_ms.get("p99")
    return {
        "meets_p50_target": p50 <= 5.0 if p50 is not None else None,
        "meets_p99_target": p99 <= 2 * floor_p99 if p99 is not None and floor_p99 else None,
        "p99_ratio_to_floor": round(p99 / floor_p99, 2) if p99 is not None and floor_p99 else None,
    }


# 3. recovery ------------------------------------------------------------------------------------
async def recovery(ctx: Context) -> dict[str, Any]:
    """N sagas parked on a participant that does not answer; kill -9; restart; then the answers."""
    sizes, db, broker = ctx.sizes, ctx.db, ctx.broker
    count = sizes.recovery_sagas
    async with Scene(ctx, "recovery") as scene:
        orchestrator = scene.orchestrator
        # All but the last ``recovery_through_broker`` parked straight in the database, their
        # commands left in the outbox: the first process sends them, nobody answers yet.
        through_broker = min(count, sizes.recovery_through_broker)
        written = ctx.keys("rw", count - through_broker)
        writing_s = await park(ctx.stack, db, written, unsent=len(written)) if written else 0.0
        await orchestrator.start()
        keys = ctx.keys("r", through_broker)
        began = time.monotonic()
        await broker.burst(scene.namespace, ORDER, keys)
        parked_wait, parked = await db.wait_count(PARKED, count, sizes.wait_seconds, every=0.1)
        await db.wait_count(OUTBOX_EMPTY, 1, sizes.wait_seconds, every=0.2)  # every command sent
        parking_s = time.monotonic() - began
        orchestrator.kill()
        unsent = await db.count("SELECT count(*) FROM outbox")

        probe = f"probe-{ctx.run_id}"
        launched_wall, launched = time.time(), time.monotonic()
        offset = orchestrator.launch()
        await broker.start(scene.namespace, ORDER, probe)  # waits in the queue for the new process
        await orchestrator.wait_for(READY, offset, 120)
        running_s = time.monotonic() - launched
        taken, _ = await db.wait_count(
            "SELECT count(*) FROM sagas WHERE key = $1", 1, sizes.wait_seconds, probe, every=0.01
        )
        created = await db.value("SELECT extract(epoch FROM created_at) FROM sagas WHERE key = $1", probe)
        taking_s = float(created) - launched_wall if created is not None else None
        del taken

        await scene.responder(ORDER_SERVICES)
        answered = time.monotonic()
        advanced_s, advanced = await db.wait_count(
            "SELECT count(*) FROM sagas WHERE state <> 'reserve'", count + 1, sizes.wait_seconds, every=0.1
        )
        completed_s, _ = await db.wait_count(COMPLETED, count + 1, sizes.wait_seconds, every=0.1)
        completed_s = None if completed_s is None else time.monotonic() - answered
        completed = await db.count(
            "SELECT count(*) FROM sagas WHERE status = 'completed' AND key <> $1", probe
        )
        journal = await db.count("SELECT count(*) FROM journal")
        duplicates = await db.count("SELECT coalesce(sum(duplicates), 0) FROM inbox")
        return {
            "sagas": count,
            "written_to_the_database": len(written),
            "writing_s": _s(writing_s),
            "parked_before_kill": parked,
            "parked_in_time": parked_wait is not None,
            "parking_s": _s(parking_s),
            "outbox_unsent_at_kill": unsent,
            "restart_to_running_s": _s(running_s),
            "restart_to_taking_events_s": _s(taking_s),
            "replies_to_all_advanced_s": _s(advanced_s),
            "replies_to_all_completed_s": _s(completed_s),
            "advanced": advanced,
            "completed": completed,
            "lost": count - completed,
            "statuses": await _statuses(db, ORDER),
            "journal_rows": journal,
            "journal_rows_expected": (count + 1) * (STEPS + 1),
            "duplicates_absorbed": duplicates,
            "log": scene.problems(),
        }


# 4. deadlines -----------------------------------------------------------------------------------
LATENESS = (
    "SELECT extract(epoch FROM recorded_at - (message->'payload'->>'due_at')::timestamptz) AS late"
    " FROM journal WHERE kind = 'deadline'"
)


async def _lateness(db: Database) -> list[float]:
    return [float(r["late"]) * 1000 for r in await db.rows(LATENESS)]


async def _deadlines_under_load(ctx: Context) -> dict[str, Any]:
    sizes, db, broker = ctx.sizes, ctx.db, ctx.broker
    count, spread, after = sizes.deadline_sagas, sizes.deadline_spread_seconds, sizes.deadline_seconds
    background = ctx.half_load()
    orders = max(1, round(background * (spread + after)))
    async with Scene(ctx, "deadlines", deadline_seconds=after) as scene:
        await scene.orchestrator.start()
        await scene.responder(ORDER_SERVICES)
        holds = ctx.keys("h", count)
        await asyncio.gather(
            broker.at_rate(scene.namespace, HOLD, holds, count / spread),
            broker.at_rate(scene.namespace, ORDER, ctx.keys("o", orders), background),
        )
        fired_wait, fired = await db.wait_count(FIRED, count, sizes.wait_seconds + after, every=0.1)
        _, completed = await db.wait_count(COMPLETED, orders, sizes.wait_seconds, every=0.1)
        lateness = await _lateness(db)
        return {
            "deadlines": count,
            "spread_s": spread,
            "deadline_s": after,
            "background_rate": background,
            "background_orders": orders,
            "background_completed": completed,
            "fired": fired,
            "all_fired": fired_wait is not None,
            "lateness_ms": percentiles(lateness),
            "hold_statuses": await _statuses(db, HOLD),
            "log": scene.problems(),
        }


async def _deadlines_after_outage(ctx: Context) -> dict[str, Any]:
    sizes, db = ctx.sizes, ctx.db
    count, outage = sizes.outage_sagas, sizes.outage_seconds
    async with Scene(ctx, "outage", deadline_seconds=sizes.outage_deadline_seconds) as scene:
        orchestrator = scene.orchestrator
        await orchestrator.start()
        await ctx.broker.burst(scene.namespace, HOLD, ctx.keys("d", count))
        await db.wait_count("SELECT count(*) FROM sagas WHERE workflow = $1", count, sizes.wait_seconds, HOLD)
        await orchestrator.terminate()  # a planned outage; kill -9 is the recovery scenario's
        fired_before = await db.count(FIRED)
        await asyncio.sleep(outage)
        due = await db.count("SELECT count(*) FROM deadlines WHERE kind = 'deadline' AND due_at <= now()")
        launched = time.monotonic()
        offset = orchestrator.launch()
        await orchestrator.wait_for(READY, offset, 120)
        running_s = time.monotonic() - launched
        fired_wait, fired = await db.wait_count(FIRED, count, sizes.wait_seconds, every=0.02)
        all_fired_s = time.monotonic() - launched if fired_wait is not None else None
        lateness = await _lateness(db)
        return {
            "sagas": count,
            "outage_s": outage,
            "deadline_s": sizes.outage_deadline_seconds,
            "fired_before_outage": fired_before,
            "due_at_restart": due,
            "fired": fired,
            "restart_to_running_s": _s(running_s),
            "restart_to_all_fired_s": _s(all_fired_s),
            "lateness_ms": percentiles(lateness),
            "log": scene.problems(),
        }


async def deadlines(ctx: Context) -> dict[str, Any]:
    """Deadlines falling due over a spread under half load; then deadlines due during an outage."""
    result = await _deadlines_under_load(ctx)
    result["outage"] = await _deadlines_after_outage(ctx)
    return result


# 5. memory --------------------------------------------------------------------------------------
async def memory(ctx: Context) -> dict[str, Any]:
    """The orchestrator's resident memory over a database of parked sagas: they are written
    straight into it (a million through the broker would take hours), the orchestrator starts
    over them and takes ``memory_replies`` of them to the end. Nothing per saga may be held in
    the process, so the figure must not grow with the number parked."""
    sizes, db = ctx.sizes, ctx.db
    count, answered = sizes.memory_parked, min(sizes.memory_replies, sizes.memory_parked)
    async with Scene(ctx, "memory") as scene:
        orchestrator = scene.orchestrator
        keys = ctx.keys("m", count)
        writing_s = await park(ctx.stack, db, keys, unsent=answered)
        await orchestrator.start()
        await asyncio.sleep(1)
        idle = round(orchestrator.rss_kib() / 1024, 1)
        await scene.responder(ORDER_SERVICES)  # answers the commands of the ``answered`` sagas
        began = time.monotonic()
        finished, completed = await db.wait_count(COMPLETED, answered, sizes.wait_seconds, every=0.2)
        took = time.monotonic() - began
        await asyncio.sleep(2)  # let the last batch's garbage go before reading
        return {
            "parked": count,
            "writing_s": _s(writing_s),
            "answered": answered,
            "completed": completed,
            "completed_in_s": _s(took) if finished is not None else None,
            "rss_mib": {"idle": idle, "after_replies": round(orchestrator.rss_kib() / 1024, 1)},
            "peak_rss_mib": round(orchestrator.peak_rss_kib() / 1024, 1),
            "still_parked": await db.count(PARKED),
            "log": scene.problems(),
        }


SCENARIOS = {
    "throughput": throughput,
    "kit": kit,
    "latency": latency,
    "recovery": recovery,
    "deadlines": deadlines,
    "memory": memory,
}
