"""``python -m bench.replicas [--replicas 1,2,3] [--partitions 6] [--only throughput,failover]``.

Several ``orchestrator run`` processes on one namespace and database, with partitioned
consumption (docs/scaling.md): how throughput moves with 1, 2 and 3 replicas next to the floor,
and how long a replica killed with SIGKILL leaves its partitions and its sagas waiting. Like
``python -m bench`` it exits non-zero only when a part could not run, or when the failover run
finds a saga lost, a message decided twice or ``orchestrator verify`` unhappy: those are
correctness failures, not figures.

docs/benchmark.md ("Replicas") says what is timed from where to where.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.__main__ import DEFAULT_DATABASE, write
from bench.config import FULL, Sizes, Stack, floor_from_env, floor_missing
from bench.infra import Broker, Database
from bench.processes import ORDER_SERVICES, WORKFLOWS, Orchestrator, has_port_flag, migrate, run_floor
from bench.report import git_commit, load_average, machine, percentiles
from bench.scenarios import COMPLETED, STEPS, Context, Scene
from bench.workflows import ORDER
from orchestrator.adapters.postgres.partitions import lock_classes
from orchestrator.adapters.postgres.store import HOLDER_LOCKS
from orchestrator.service.partitions import share_of
from orchestrator.settings import DEFAULT_AMQP_URL

__all__ = ["Replica", "main"]

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("throughput", "failover")
CPU_BOUND = (
    "this machine has {cores} core(s) shared by RabbitMQ, PostgreSQL, the replicas, the responder"
    " and the driver: it is CPU-bound, so more replicas here buy availability, not throughput"
)
IN_FLIGHT = "SELECT id FROM sagas WHERE status IN ('running', 'compensating')"
# Both key forms of pg_locks: a two-int4 advisory lock is objsubid 2 (classid, objid).
HOLDERS = """
SELECT objid::int AS partition, pid FROM pg_locks
WHERE locktype = 'advisory' AND objsubid = 2 AND granted AND classid::bigint = $1
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""

# The key of the outbox holder lock a replica's session holds (orchestrator.adapters.postgres.store).
HOLDER_KEYS = """
SELECT objid::int AS key FROM pg_locks
WHERE locktype = 'advisory' AND objsubid = 2 AND granted AND classid::bigint = $1 AND pid = ANY($2::int[])
"""


# The replicas ------------------------------------------------------------------------------------
class Replica(Orchestrator):
    """One ``orchestrator run`` of several: the same namespace and database, P partitions."""

    def __init__(self, stack: Stack, namespace: str, log: Path, partitions: int) -> None:
        super().__init__(stack, namespace, log)
        self.name = log.stem
        self.partitions = partitions

    def env(self) -> dict[str, str]:
        return {**super().env(), "ORCHESTRATOR_PARTITIONS": str(self.partitions)}

    def local_ports(self) -> set[int]:
        """The local TCP ports of its sockets, read from /proc: with them pg_stat_activity's
        client_port names its database sessions, so nothing in the orchestrator has to say which
        connection is its ownership connection."""
        inodes: set[str] = set()
        fds = Path(f"/proc/{self.pid}/fd")
        for fd in fds.iterdir() if fds.exists() else ():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        ports: set[int] = set()
        for table in ("tcp", "tcp6"):
            path = Path(f"/proc/{self.pid}/net/{table}")
            lines = path.read_text().splitlines()[1:] if path.exists() else []
            for line in lines:
                fields = line.split()
                if len(fields) > 9 and fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        return ports


class Partitions:
    """Who holds which partition, read from pg_locks as an operator would (lock_classes)."""

    def __init__(self, db: Database, namespace: str) -> None:
        self.db = db
        self.partition_class = lock_classes(namespace)[0]

    async def holders(self) -> dict[int, int]:
        """Partition -> backend pid of the session holding its lock."""
        rows = await self.db.rows(HOLDERS, self.partition_class)
        return {int(r["partition"]): int(r["pid"]) for r in rows}

    async def backends(self, replica: Replica) -> set[int]:
        ports = sorted(replica.local_ports())
        rows = await self.db.rows(
            "SELECT pid FROM pg_stat_activity WHERE client_port = ANY($1::int[])", ports
        )
        return {int(r["pid"]) for r in rows}

    async def wait_balanced(
        self, partitions: int, replicas: int, timeout: float
    ) -> tuple[float | None, dict[int, int]]:
        """Until every partition is held and no holder holds more than its share, by as many
        sessions as there are replicas: (seconds or None on timeout, the last holders seen)."""
        share = share_of(partitions, replicas)
        began = time.monotonic()
        while True:
            held = await self.holders()
            counts = [list(held.values()).count(pid) for pid in set(held.values())]
            if len(held) == partitions and len(counts) == replicas and max(counts) <= share:
                return time.monotonic() - began, held
            if time.monotonic() - began > timeout:
                return None, held
            await asyncio.sleep(0.05)


class ReplicaScene(Scene):
    """A scene (empty tables, a namespace of its own) with several replicas instead of one."""

    def __init__(self, ctx: Context, name: str, partitions: int) -> None:
        super().__init__(ctx, name)
        self.partitions = partitions
        self.replicas: list[Replica] = []
        self.locks = Partitions(ctx.db, self.namespace)

    def replica(self) -> Replica:
        log = self.ctx.stack.log_dir / f"{self.name}-replica-{len(self.replicas)}.log"
        replica = Replica(self.ctx.stack, self.namespace, log, self.partitions)
        self.replicas.append(replica)
        return replica

    async def start(self, count: int) -> None:
        """One after the other: the first declares the namespace's topology, and the rest find
        it there rather than racing to declare it."""
        for _ in range(count):
            await self.replica().start()

    def cpu_seconds(self) -> float:
        return sum(r.cpu_seconds() for r in self.replicas if r.alive())

    def problems(self) -> dict[str, Any]:
        return {r.name: r.log_problems() for r in self.replicas}

    async def __aenter__(self) -> ReplicaScene:
        await super().__aenter__()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        for replica in self.replicas:
            await replica.terminate()
        await super().__aexit__(kind, error, trace)
        await self.ctx.broker.cleanup(self.namespace, self.partitions)


def _s(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


# 1. throughput ------------------------------------------------------------------------------------
async def _throughput_with(ctx: Context, replicas: int, partitions: int, index: int) -> dict[str, Any]:
    """bench's throughput burst with ``replicas`` processes consuming. The clock starts when the
    first start event is published and stops at the last saga's completion (its updated_at), as
    in bench; the replicas are running and hold their shares before it starts."""
    count = ctx.sizes.throughput_sagas
    async with ReplicaScene(ctx, f"replicas-{replicas}-{index}", partitions) as scene:
        await scene.start(replicas)
        balanced_s, held = await scene.locks.wait_balanced(partitions, replicas, 30)
        responder = await scene.responder(ORDER_SERVICES)
        keys = ctx.keys(f"r{replicas}x{index}", count)
        cpu_before = scene.cpu_seconds()
        responder_before = responder.cpu_seconds()
        began_wall = time.time()
        publishing = asyncio.create_task(ctx.broker.burst(scene.namespace, ORDER, keys))
        waited, completed = await ctx.db.wait_count(COMPLETED, count, ctx.sizes.wait_seconds)
        await publishing
        last = await ctx.db.value(
            "SELECT extract(epoch FROM max(updated_at)) FROM sagas WHERE status = 'completed'"
        )
        cpu = scene.cpu_seconds() - cpu_before
        responder_cpu = responder.cpu_seconds() - responder_before
        seconds = float(last) - began_wall if last is not None else None
        steps = completed * STEPS
        return {
            "replicas": replicas,
            "sagas": count,
            "completed": completed,
            "finished": waited is not None,
            "balanced_before_s": _s(balanced_s),
            "holders_before": len(set(held.values())),
            "seconds": _s(seconds),
            "sagas_per_s": round(completed / seconds, 1) if seconds else None,
            "steps_per_s": round(steps / seconds, 1) if seconds else None,
            "replicas_cpu_s": round(cpu, 2),
            "replicas_cpu_ms_per_step": round(cpu * 1000 / steps, 3) if steps else None,
            "responder_cpu_s": round(responder_cpu, 2),
            "log": scene.problems(),
        }


async def throughput(ctx: Context, options: Options) -> dict[str, Any]:
    """Per repeat: the floor at the same N, then each replica count, so that every count sees
    about the same machine (the floor is what tells how busy it was)."""
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in options.replicas}
    floors: list[dict[str, Any]] = []
    notes: list[str] = []
    for index in range(max(1, ctx.sizes.throughput_repeats)):
        floor, note = await run_floor(ctx.stack, ctx.sizes.throughput_sagas, STEPS)
        if floor is None:
            notes.append(note)
        else:
            floors.append(floor)
        for replicas in options.replicas:
            print(f"  {replicas} replica(s), run {index + 1} ...", flush=True)
            runs[replicas].append(await _throughput_with(ctx, replicas, options.partitions, index))
    floor_steps = statistics.median(f["steps_per_s"] for f in floors) if floors else None
    by_count: dict[str, Any] = {}
    for replicas, done in runs.items():
        measured = [r for r in done if r["steps_per_s"]]

        def median(key: str, measured: list[dict[str, Any]] = measured) -> float | None:
            return statistics.median(r[key] for r in measured) if measured else None

        steps = median("steps_per_s")
        by_count[str(replicas)] = {
            "sagas_per_s": median("sagas_per_s"),
            "steps_per_s": steps,
            "cpu_ms_per_step": median("replicas_cpu_ms_per_step"),
            "ratio_to_floor": round(steps / floor_steps, 3) if steps and floor_steps else None,
            "all_finished": all(r["finished"] for r in done),
            "runs": done,
        }
    # Failover's default load is half of what the replicas it runs sustained here: on a CPU-bound
    # machine 3 replicas sustain less than 1, and at half the 1-replica figure the survivors of a
    # kill would run saturated, their backlog counted as failover time.
    for count in (options.failover_replicas, 1):
        sustained = by_count.get(str(count), {}).get("sagas_per_s")
        if sustained:
            ctx.max_sagas_per_s = sustained
            break
    return {
        "sagas": ctx.sizes.throughput_sagas,
        "steps_per_saga": STEPS,
        "partitions": options.partitions,
        "replicas": by_count,
        "floor": {
            "steps_per_s": floor_steps,
            "sagas_per_s": statistics.median(f["sagas_per_s"] for f in floors) if floors else None,
            "runs": floors,
        }
        if floors
        else None,
        "floor_note": "; ".join(dict.fromkeys(notes)) or None,
        "cpu_bound": CPU_BOUND.format(cores=os.cpu_count()),
    }


# 2. failover --------------------------------------------------------------------------------------
@dataclass
class Kill:
    """One SIGKILL and what it left behind: t0 is the database's clock just before the kill,
    so that it compares with the journal's recorded_at."""

    replica: str
    at_s: float  # since the load began
    t0: float
    held: list[int]
    in_flight: list[str]
    unsent: set[str]  # sagas with a command left in the victim's outbox: they wait for a sweep
    lock_gap_ms: float = 0.0  # from t0 to the signal: the in-flight snapshot is taken between
    released_s: float | None = None
    takeover_s: float | None = None
    taken_by: dict[int, int] = field(default_factory=dict)
    restart_running_s: float | None = None
    rebalanced_s: float | None = None


async def _kill(
    scene: ReplicaScene, victim: Replica, restart_after: float, timeout: float, began: float
) -> Kill:
    """Snapshot, kill, watch pg_locks until the victim's partitions are held by others, restart
    the victim ``restart_after`` seconds after the kill, wait until the shares are even again.

    The victim's partitions are those its own sessions hold (found by client port) just before
    the kill; takeover is complete when every one of them is held by a session that is not the
    victim's. Polled every 10 ms, so the figure is good to about that."""
    db, locks = scene.ctx.db, scene.locks
    mine = await locks.backends(victim)
    held = sorted(p for p, pid in (await locks.holders()).items() if pid in mine)
    snapshot = time.monotonic()
    t0 = float(await db.value("SELECT extract(epoch FROM clock_timestamp())"))
    rows = await db.rows(IN_FLIGHT)
    holder = [int(r["key"]) for r in await db.rows(HOLDER_KEYS, HOLDER_LOCKS, sorted(mine))]
    killed = time.monotonic()
    victim.kill()
    # Read after the kill, when the victim's rows can only be what it left unsent: a batch that
    # began before t0 may commit between the snapshot and the signal. No sweep takes them for
    # seconds yet (rows older than 5 s, and a restart comes later still).
    unsent = {
        str(r["saga_id"])
        for r in await db.rows("SELECT DISTINCT saga_id FROM outbox WHERE holder = ANY($1::int[])", holder)
    }
    kill = Kill(victim.name, round(killed - began, 2), t0, held, [str(r["id"]) for r in rows], unsent)
    kill.lock_gap_ms = round((killed - snapshot) * 1000, 2)
    while time.monotonic() - killed < timeout:
        now = await locks.holders()
        if kill.released_s is None and not any(pid in mine for pid in now.values()):
            kill.released_s = time.monotonic() - killed
        if all(p in now and now[p] not in mine for p in held):
            kill.takeover_s = time.monotonic() - killed
            kill.released_s = kill.released_s or kill.takeover_s
            kill.taken_by = {p: now[p] for p in held}
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(max(0.0, restart_after - (time.monotonic() - killed)))
    kill.restart_running_s = await victim.start()
    kill.rebalanced_s, _ = await locks.wait_balanced(scene.partitions, len(scene.replicas), timeout)
    return kill


async def _load(ctx: Context, namespace: str, rate: float, stop: asyncio.Event) -> int:
    """Open loop until told to stop, so that every kill lands under load however long the
    restarts take: bench's at_rate, one second's worth of start events at a time."""
    sent = 0
    size = max(1, round(rate))
    while not stop.is_set():
        await ctx.broker.at_rate(namespace, ORDER, ctx.keys("f", size, sent), rate)
        sent += size
    return sent


async def _progressed(db: Database, kill: Kill) -> dict[str, Any]:
    """Per saga in flight at t0: its first journal entry recorded after t0, minus t0.

    recorded_at is taken when a batch begins, so a saga whose last step was in a batch that began
    before t0 and committed after it has no entry after t0 and is done: it is counted apart
    (``finished_across_t0``), not as waiting."""
    rows = await db.rows(
        "SELECT s.id AS id, extract(epoch FROM min(j.recorded_at)) AS at, s.status"
        " FROM sagas s LEFT JOIN journal j ON j.saga_id = s.id AND j.recorded_at > to_timestamp($2)"
        " WHERE s.id = ANY($1::text[]) GROUP BY s.id, s.status",
        kill.in_flight,
        kill.t0,
    )
    waits = [float(r["at"]) - kill.t0 for r in rows if r["at"] is not None]
    swept = [float(r["at"]) - kill.t0 for r in rows if r["at"] is not None and r["id"] in kill.unsent]
    rest = [float(r["at"]) - kill.t0 for r in rows if r["at"] is not None and r["id"] not in kill.unsent]
    across = sum(1 for r in rows if r["at"] is None and r["status"] not in ("running", "compensating"))
    stuck = sum(1 for r in rows if r["at"] is None and r["status"] in ("running", "compensating"))
    return {
        "in_flight": len(kill.in_flight),
        "all_progressed_s": _s(max(waits)) if waits and not stuck else None,
        "progress_s": percentiles(waits),
        # the split that explains the tail: a command the victim committed but had not sent waits
        # for a survivor's outbox sweep (every 5 s, rows older than 5 s); the rest wait only
        # for the takeover and the redelivery
        "progress_s_command_left_unsent": percentiles(swept),
        "progress_s_others": percentiles(rest),
        "finished_across_t0": across,
        "never_progressed": stuck,
    }


async def _audit(ctx: Context, scene: ReplicaScene, started: int) -> dict[str, Any]:
    """After the load: every saga completed, no message decided twice, and the audit clean."""
    db = ctx.db
    statuses = {
        str(r["status"]): int(r["n"])
        for r in await db.rows("SELECT status, count(*) AS n FROM sagas GROUP BY status")
    }
    twice = await db.rows(
        "SELECT saga_id, message_id, count(*) AS n FROM journal"
        " GROUP BY saga_id, message_id HAVING count(*) > 1 LIMIT 10"
    )
    missing = await db.count(
        "SELECT count(*) FROM journal j WHERE j.kind = 'event'"
        " AND NOT EXISTS (SELECT 1 FROM inbox i WHERE i.message_id = j.message_id)"
    )
    env = scene.replicas[0].env()
    verify = await asyncio.to_thread(
        subprocess.run,
        [ctx.stack.python, "-m", "orchestrator", "verify", "--workflows", WORKFLOWS],
        cwd=ctx.stack.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = (verify.stdout + verify.stderr).strip().splitlines()
    return {
        "started": started,
        "statuses": statuses,
        "all_completed": statuses.get("completed", 0) == started and sum(statuses.values()) == started,
        "decided_twice": [dict(r) for r in twice],
        "journal_events_missing_from_inbox": missing,
        "duplicates_absorbed": await db.count("SELECT coalesce(sum(duplicates), 0) FROM inbox"),
        "outbox_left": await db.count("SELECT count(*) FROM outbox"),
        "verify_exit": verify.returncode,
        "verify_tail": lines[-5:],
    }


async def failover(ctx: Context, options: Options) -> dict[str, Any]:
    """3 replicas under an open-loop load; every K seconds one killed at random, restarted a few
    seconds later; the takeover and the in-flight sagas' progress timed per kill."""
    rate = options.rate or ctx.half_load()
    replicas = options.failover_replicas
    chooser = random.Random(options.seed)
    kills: list[Kill] = []
    async with ReplicaScene(ctx, "failover", options.partitions) as scene:
        await scene.start(replicas)
        balanced_s, _ = await scene.locks.wait_balanced(options.partitions, replicas, 30)
        await scene.responder(ORDER_SERVICES)
        stop = asyncio.Event()
        began = time.monotonic()
        load = asyncio.create_task(_load(ctx, scene.namespace, rate, stop))
        for number in range(options.kills):
            # on time, or at once when the previous restart took longer than the interval
            due = began + options.warmup + number * options.kill_every
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            victim = chooser.choice([r for r in scene.replicas if r.alive()])
            kill = await _kill(scene, victim, options.restart_after, options.timeout, began)
            kills.append(kill)
            print(
                f"  kill {number + 1}/{options.kills} at {kill.at_s:g} s: {victim.name}"
                f" held {kill.held}, taken over in {_fmt(_s(kill.takeover_s))} s,"
                f" back in {_fmt(_s(kill.restart_running_s))} s",
                flush=True,
            )
        await asyncio.sleep(options.warmup)  # the last restarted replica under load too
        stop.set()
        count = await load
        offered = count / (time.monotonic() - began)
        waited, completed = await ctx.db.wait_count(COMPLETED, count, ctx.sizes.wait_seconds, every=0.2)
        per_kill = []
        for kill in kills:
            progress = await _progressed(ctx.db, kill)
            per_kill.append(
                {
                    "replica": kill.replica,
                    "at_s": kill.at_s,
                    "t0_utc": datetime.fromtimestamp(kill.t0, UTC).isoformat(timespec="milliseconds"),
                    "partitions_held": kill.held,
                    "snapshot_to_kill_ms": kill.lock_gap_ms,
                    "locks_released_s": _s(kill.released_s),
                    "takeover_s": _s(kill.takeover_s),
                    "restart_to_running_s": _s(kill.restart_running_s),
                    "restart_to_rebalanced_s": _s(kill.rebalanced_s),
                    **progress,
                }
            )
        audit = await _audit(ctx, scene, count)
        problems = scene.problems()
    takeovers = [k["takeover_s"] for k in per_kill if k["takeover_s"] is not None]
    progressed = [k["all_progressed_s"] for k in per_kill if k["all_progressed_s"] is not None]

    def worst(key: str) -> list[float]:
        return [k[key]["max"] for k in per_kill if k[key]["max"] is not None]

    return {
        "replicas": replicas,
        "partitions": options.partitions,
        "rate": rate,
        "offered_rate": round(offered, 1),
        "sagas": count,
        "completed": completed,
        "finished": waited is not None,
        "kills": options.kills,
        "kill_every_s": options.kill_every,
        "restart_after_s": options.restart_after,
        "balanced_at_start_s": _s(balanced_s),
        "takeover_s": percentiles(takeovers),
        "takeover_missing": len(per_kill) - len(takeovers),
        "in_flight_progressed_s": percentiles(progressed),
        "in_flight_progressed_s_command_left_unsent": percentiles(worst("progress_s_command_left_unsent")),
        "in_flight_progressed_s_others": percentiles(worst("progress_s_others")),
        "in_flight_never_progressed": sum(k["never_progressed"] for k in per_kill),
        "restart_to_running_s": percentiles([k["restart_to_running_s"] for k in per_kill]),
        # a replica back but never given its share would show here, not as a takeover
        "restart_to_rebalanced_s": percentiles(
            [k["restart_to_rebalanced_s"] for k in per_kill if k["restart_to_rebalanced_s"] is not None]
        ),
        "rebalance_missing": sum(1 for k in per_kill if k["restart_to_rebalanced_s"] is None),
        "per_kill": per_kill,
        "audit": audit,
        "log": problems,
    }


# The run ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Options:
    replicas: tuple[int, ...]
    partitions: int
    failover_replicas: int
    rate: float | None
    kills: int
    kill_every: float
    restart_after: float
    warmup: float
    timeout: float
    seed: int | None


def _levels(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def parse(argv: list[str] | None) -> argparse.Namespace:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(prog="python -m bench.replicas", description=doc.split("\n\n")[1])
    parser.add_argument("--only", help=f"comma-separated parts out of {','.join(PARTS)}")
    parser.add_argument("--replicas", type=_levels, default=(1, 2, 3), help="replica counts for throughput")
    parser.add_argument("--partitions", type=int, default=6, help="ORCHESTRATOR_PARTITIONS")
    parser.add_argument("--sagas", type=int, default=FULL.throughput_sagas, help="sagas in the burst")
    parser.add_argument("--repeats", type=int, default=1, help="throughput runs per replica count")
    parser.add_argument("--failover-replicas", type=int, default=3, help="replicas in the failover run")
    parser.add_argument(
        "--rate",
        type=float,
        help="sagas/s during failover (default: half the throughput measured with that many replicas)",
    )
    parser.add_argument("--kills", type=int, default=8, help="SIGKILLs in the failover run")
    parser.add_argument("--kill-every", type=float, default=8.0, help="seconds between kills")
    parser.add_argument("--restart-after", type=float, default=3.0, help="seconds from a kill to its restart")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load before the first kill")
    parser.add_argument("--timeout", type=float, default=30.0, help="give up a takeover after this long")
    parser.add_argument("--seed", type=int, help="which replica each kill picks (default: random)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-replicas.json", help="the JSON file")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE),
        help="a database of its own: it is emptied between runs (BENCH_DATABASE_URL)",
    )
    parser.add_argument("--amqp-url", default=os.environ.get("ORCHESTRATOR_AMQP_URL", DEFAULT_AMQP_URL))
    parser.add_argument("--floor", type=Path, default=floor_from_env(), help="pipeline.py (BENCH_FLOOR)")
    parser.add_argument(
        "--logs", type=Path, help="directory for the processes' logs (default: a temporary one)"
    )
    return parser.parse_args(argv)


def chosen(args: argparse.Namespace) -> list[str]:
    names = [n.strip() for n in (args.only or ",".join(PARTS)).split(",") if n.strip()]
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        raise SystemExit(f"unknown part(s) {', '.join(unknown)}: choose from {', '.join(PARTS)}")
    return [n for n in PARTS if n in names]  # throughput first: failover's default rate is half of it


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:g}{unit}" if isinstance(value, float | int) else str(value)


def table(results: dict[str, Any]) -> str:
    lines: list[str] = []
    through = results.get("throughput") or {}
    if "replicas" in through:
        floor = through.get("floor") or {}
        lines.append(f"throughput, burst of {through['sagas']} sagas, P={through['partitions']}")
        lines.append(f"  {'':<12}{'sagas/s':>10}{'steps/s':>10}{'CPU ms/step':>13}{'x floor':>9}")
        for count, row in through["replicas"].items():
            lines.append(
                f"  {count + ' replica(s)':<12}{_fmt(row['sagas_per_s']):>10}{_fmt(row['steps_per_s']):>10}"
                f"{_fmt(row['cpu_ms_per_step']):>13}{_fmt(row['ratio_to_floor']):>9}"
            )
        lines.append(
            f"  {'floor':<12}{_fmt(floor.get('sagas_per_s')):>10}{_fmt(floor.get('steps_per_s')):>10}"
        )
        lines.append(f"  note: {through['cpu_bound']}")
    elif "error" in through:
        lines.append(f"throughput: {through['error']}")
    fail = results.get("failover") or {}
    if "per_kill" in fail:
        take, prog, audit = fail["takeover_s"], fail["in_flight_progressed_s"], fail["audit"]
        lines.append(
            f"failover, {fail['replicas']} replicas, P={fail['partitions']}, {fail['rate']:g} sagas/s,"
            f" {fail['kills']} SIGKILLs every {fail['kill_every_s']:g} s"
        )
        lines.append(f"  {'':<28}{'p50':>8}{'p99':>8}{'max':>8}")
        rows = (
            ("takeover (s)", take),
            ("in-flight progressed (s)", prog),
            ("  command left unsent", fail["in_flight_progressed_s_command_left_unsent"]),
            ("  the others", fail["in_flight_progressed_s_others"]),
            ("restart to running (s)", fail["restart_to_running_s"]),
            ("restart to even spread (s)", fail["restart_to_rebalanced_s"]),
        )
        for label, data in rows:
            lines.append(f"  {label:<28}{_fmt(data['p50']):>8}{_fmt(data['p99']):>8}{_fmt(data['max']):>8}")
        lines.append(
            f"  completed {fail['completed']}/{fail['sagas']}; decided twice: {len(audit['decided_twice'])};"
            f" duplicates absorbed: {audit['duplicates_absorbed']}; verify exit {audit['verify_exit']}"
        )
    elif "error" in fail:
        lines.append(f"failover: {fail['error']}")
    return "\n".join(lines)


def _failed_correctness(result: dict[str, Any]) -> list[str]:
    audit = result.get("audit") or {}
    wrong = []
    if not audit.get("all_completed"):
        wrong.append(f"not all sagas completed: {audit.get('statuses')}")
    if audit.get("decided_twice"):
        wrong.append(f"messages decided twice: {audit['decided_twice']}")
    if audit.get("verify_exit") != 0:
        wrong.append(f"orchestrator verify exit {audit.get('verify_exit')}: {audit.get('verify_tail')}")
    if result.get("takeover_missing") or result.get("in_flight_never_progressed"):
        wrong.append("a takeover or an in-flight saga never happened within the timeout")
    return wrong


async def run(args: argparse.Namespace) -> int:
    names = chosen(args)
    options = Options(
        replicas=args.replicas,
        partitions=args.partitions,
        failover_replicas=args.failover_replicas,
        rate=args.rate,
        kills=args.kills,
        kill_every=args.kill_every,
        restart_after=args.restart_after,
        warmup=args.warmup,
        timeout=args.timeout,
        seed=args.seed,
    )
    if options.restart_after >= options.kill_every:
        raise SystemExit("--restart-after must be below --kill-every: a replica is back before the next kill")
    sizes = Sizes(throughput_sagas=args.sagas, throughput_repeats=args.repeats)
    log_dir = args.logs or Path(tempfile.mkdtemp(prefix="orchestrator-bench-replicas-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    stack = Stack.make(
        ROOT, python, args.database_url, args.amqp_url, log_dir, has_port_flag(python, ROOT), args.floor
    )
    no_floor = floor_missing(stack.floor)
    began = time.monotonic()
    print(f"orchestrator bench.replicas: {', '.join(names)}; logs in {log_dir}")
    print(no_floor or f"floor: {stack.floor}")
    print(CPU_BOUND.format(cores=os.cpu_count()))
    scratch = f"bench-{secrets.token_hex(4)}"
    migrate(stack, scratch)
    db = await Database.connect(stack.dsn)
    broker = Broker(stack.amqp_url)
    await broker.connect()
    await broker.cleanup(scratch)
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(ROOT),
        "machine": machine(await db.server_version(), broker.server_version()),
        "options": {**options.__dict__, "sagas": sizes.throughput_sagas, "repeats": sizes.throughput_repeats},
        "floor": None if no_floor else str(stack.floor),
        "floor_note": no_floor,
        "logs": str(log_dir),
        "parts": names,
    }
    runners: dict[str, Callable[[Context, Options], Awaitable[dict[str, Any]]]] = {
        "throughput": throughput,
        "failover": failover,
    }
    failed = 0
    ctx = Context(stack, sizes, db, broker)
    try:
        for name in names:
            print(f"- {name} ...", flush=True)
            part_began = time.monotonic()
            load = load_average()
            try:
                results[name] = await runners[name](ctx, options)
            except Exception as error:
                failed += 1
                results[name] = {"error": f"{type(error).__name__}: {error}"}
                traceback.print_exc()
            wrong = (
                _failed_correctness(results[name]) if name == "failover" and "audit" in results[name] else []
            )
            if wrong:
                failed += 1
                results[name]["wrong"] = wrong
            results[name]["duration_s"] = round(time.monotonic() - part_began, 1)
            results[name]["load_average"] = {"before": load, "after": load_average()}
            results["duration_s"] = round(time.monotonic() - began, 1)
            write(args.out, results)
    finally:
        await db.reset()
        await db.close()
        await broker.close()
    print()
    print(table(results))
    for wrong in (results.get("failover") or {}).get("wrong", []):
        print(f"WRONG: {wrong}")
    if no_floor:
        print(f"\n{no_floor}")
    print(f"\n{args.out} written in {results['duration_s']:.0f} s")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    try:
        import uvloop
    except ImportError:
        sys.exit(asyncio.run(run(args)))
    sys.exit(uvloop.run(run(args)))


if __name__ == "__main__":
    main()
