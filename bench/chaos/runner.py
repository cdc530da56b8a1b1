"""One chaos run: a private broker, a fresh database, replicas, responders, a tap, the faults.

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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aio_pika.abc
import asyncpg
import orjson

from bench.chaos import faults
from bench.chaos.checker import Command, Entry, Evidence, SagaRow, Wire
from bench.chaos.scenario import Fault, Scenario, schedule
from bench.chaos.workflow import UNDO, WORKFLOW
from bench.config import Stack
from bench.processes import Orchestrator, Responder, has_port_flag, migrate
from bench.responder import REPLIES
from orchestrator.examples.contracts import OrderPlaced
from tests.integration.private_broker import PrivateBroker

__all__ = ["Outcome", "run"]

ROOT = Path(__file__).resolve().parents[2]
MODULE = "bench.chaos.workflow"
APPLICATION = "chaos-suite"  # our own sessions: terminate_sessions spares them
PLUGINS = ("rabbitmq_consistent_hash_exchange",)
IN_FLIGHT = 500
START_ATTEMPTS = 10


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


class Replica(Orchestrator):
    """A replica with the workflow's deadline in its environment, and its name in its log."""

    def __init__(self, stack: Stack, namespace: str, log: Path, deadline: float, index: int) -> None:
        super().__init__(stack, namespace, log, workflows=MODULE, name=f"replica-{index}")
        self.deadline = deadline

    def env(self) -> dict[str, str]:
        return {**super().env(), "CHAOS_DEADLINE_SECONDS": str(self.deadline)}


class System:
    """The processes of a run, and the faults done to them (``faults.System``)."""

    def __init__(self, scenario: Scenario, stack: Stack, broker: PrivateBroker, namespace: str) -> None:
        self.scenario = scenario
        self.stack = stack
        self.broker = broker
        self.namespace = namespace
        self.replicas = [
            Replica(stack, namespace, stack.log_dir / f"replica-{i}.log", scenario.deadline, i)
            for i in range(scenario.replicas)
        ]
        self.responders = {
            s: Responder(stack, namespace, stack.log_dir / f"responder-{s}.log", name=f"responder-{s}")
            for s in scenario.services
        }
        self.pool: asyncpg.Pool | None = None
        self.broker_up = asyncio.Event()
        self.broker_up.set()
        #: broker restarts so far, and the count each responder started under: the benchmark
        #: responder does not reconnect, so one started before the latest restart serves nothing
        self.restarts = 0
        self._started_under: dict[str, int] = {}
        #: one fault at a time per service: a broker restart starting a responder again while a
        #: participant stop of the same service ran left a responder nobody stopped
        self._locks = {s: asyncio.Lock() for s in scenario.services}
        #: every process ever started, for ``stop_all`` to leave none behind
        self._spawned: list[subprocess.Popen[bytes]] = []
        self._held: set[str] = set()
        self._stopped: set[str] = set()  # replicas and services down on purpose
        self.crashes: list[str] = []

    # -- faults.System ----------------------------------------------------------------------------

    def busy(self, target: str) -> bool:
        return target in self._held

    def hold(self, target: str, held: bool) -> None:
        (self._held.add if held else self._held.discard)(target)

    async def kill_replica(self, index: int) -> None:
        self._note_crash(f"replica-{index}", self.replicas[index])
        self._stopped.add(f"replica-{index}")
        self.replicas[index].kill()

    async def start_replica(self, index: int) -> None:
        replica = self.replicas[index]
        await self._start(replica, replica.start)
        self._stopped.discard(f"replica-{index}")

    async def stop_broker(self) -> None:
        self.broker_up.clear()
        self.restarts += 1
        await asyncio.to_thread(self.broker.stop_app)

    async def start_broker(self) -> None:
        """The bench responder does not reconnect (the orchestrator's own consumers do, and that is
        what is under test): it is started again once the broker is back."""
        await asyncio.to_thread(self.broker.start_app)
        self.broker_up.set()
        for service, responder in self.responders.items():
            async with self._locks[service]:
                if service not in self._stopped:
                    await responder.terminate(15)
                    await self._start_responder(service)

    async def terminate_sessions(self) -> int:
        assert self.pool is not None
        ended = await self.pool.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND application_name <> $1",
            APPLICATION,
        )
        return int(ended or 0)

    async def stop_service(self, service: str) -> None:
        async with self._locks[service]:
            self._note_crash(f"responder-{service}", self.responders[service])
            self._stopped.add(service)
            await self.responders[service].terminate(15)

    async def start_service(self, service: str) -> None:
        async with self._locks[service]:
            await self._start_responder(service)
            self._stopped.discard(service)

    # -- the rest ---------------------------------------------------------------------------------

    def _note_crash(self, name: str, process: Orchestrator | Responder) -> None:
        """A process found dead that no fault stopped died by itself: a finding."""
        key = name.removeprefix("responder-")
        if process.popen is not None and not process.alive() and key not in self._stopped:
            self.crashes.append(
                f"{name} exited {process.popen.returncode} by itself: {process.output()[-500:]}"
            )

    async def _start_responder(self, service: str) -> None:
        responder = self.responders[service]

        async def start() -> None:
            self._started_under[service] = self.restarts  # the broker is up: _start waited
            await responder.start((service,))

        await self._start(responder, start)

    async def _start(self, process: Orchestrator | Responder, start: Callable[[], Awaitable[object]]) -> None:
        """Start a process once the broker is up; a start that the broker's going away failed
        (it checks the broker at start and exits) is tried again, the failed one ended first."""
        for attempt in range(1, START_ATTEMPTS + 1):
            await self.broker_up.wait()
            try:
                await start()
                return
            except RuntimeError:
                await process.terminate(15)
                if attempt == START_ATTEMPTS:
                    raise
                await asyncio.sleep(1)
            finally:
                if process.popen is not None and process.popen not in self._spawned:
                    self._spawned.append(process.popen)

    async def start_all(self) -> None:
        await asyncio.gather(*(self._start(r, r.start) for r in self.replicas))
        for service in self.responders:
            await self._start_responder(service)

    async def heal(self) -> None:
        """Everything running again after the last fault: what a fault left down, and what died
        on its own (which is a finding: noted as a crash)."""
        if not self.broker.app_running():
            await self.start_broker()
        for i, replica in enumerate(self.replicas):
            if not replica.alive():
                self._note_crash(f"replica-{i}", replica)
                await self.start_replica(i)
        for service, responder in self.responders.items():
            if not responder.alive():
                self._note_crash(f"responder-{service}", responder)
                await self.start_service(service)
            elif self._started_under.get(service) != self.restarts:
                # connected to the broker before its last restart, and never started again since
                async with self._locks[service]:
                    await responder.terminate(15)
                await self.start_service(service)

    async def stop_all(self) -> None:
        for process in [*self.replicas, *self.responders.values()]:
            with contextlib.suppress(Exception):
                await process.terminate(30)
        for popen in self._spawned:  # one a race left behind: never, we hope, but never leak it
            if popen.poll() is None:
                popen.kill()
                popen.wait(10)


class Tap:
    """A queue of the suite's own on both exchanges: every command and event, as the broker saw it.

    Durable and acked after it is noted, so a broker restart loses nothing of it; a redelivery
    is noted twice, which the checks (sets of message ids) do not mind. It reconnects by its own
    loop, not aio-pika's robust connection: in one 10,000-saga run the tap on a robust
    connection stopped receiving after a broker restart (it read 4,853 of about 70,000
    messages), and the checks blamed the orchestrator for commands the tap had not read.
    ``depth`` lets the runner wait until the tap has read everything the broker holds for it."""

    def __init__(self, url: str, namespace: str) -> None:
        self.url = url
        self.namespace = namespace
        self.queue = f"{namespace}.chaos-tap"
        self.seen: list[Wire] = []
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 60)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self._serve()
            await asyncio.sleep(0.5)

    async def _serve(self) -> None:
        """One connection's life: consume until the connection or its channel is gone."""
        lost = asyncio.Event()
        connection = await aio_pika.connect(self.url, client_properties={"connection_name": "chaos-tap"})
        try:
            connection.close_callbacks.add(lambda *_: lost.set())
            channel = await connection.channel()
            channel.close_callbacks.add(lambda *_: lost.set())
            await channel.set_qos(prefetch_count=1000)
            queue = await channel.declare_queue(self.queue, durable=True)
            for exchange in ("commands", "events"):
                await queue.bind(f"{self.namespace}.{exchange}", "#")
            await queue.consume(self._on_message)
            self._ready.set()
            await lost.wait()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5)

    async def depth(self) -> int | None:
        """Messages waiting in the tap's queue; None when the broker cannot say now."""
        try:
            connection = await aio_pika.connect(self.url)
        except Exception:
            return None
        try:
            channel = await connection.channel()
            queue = await channel.declare_queue(self.queue, passive=True)
            count = queue.declaration_result.message_count
            return int(count) if count is not None else None
        except Exception:
            return None
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5)

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        exchange = (message.exchange or "").removeprefix(f"{self.namespace}.")
        key = None
        if message.type == OrderPlaced.TYPE:
            with contextlib.suppress(Exception):
                key = str(orjson.loads(message.body)["order_id"])
        self.seen.append(
            Wire(exchange, message.type or "", message.message_id or "", message.correlation_id, key)
        )
        with contextlib.suppress(Exception):  # a lost channel: the message comes back
            await message.ack()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


def start_body(key: str) -> bytes:
    return orjson.dumps(
        {
            "order_id": key,
            "customer_id": "c-1",
            "lines": [{"sku": "sku-1", "quantity": 1}],
            "amount_cents": 1000,
        }
    )


class _Starts:
    """The publishing end of the start events: a connection made again whenever a publish
    fails (not aio-pika's robust one, for the reason ``Tap`` gives)."""

    def __init__(self, url: str, namespace: str) -> None:
        self.url = url
        self.namespace = namespace
        self.connection: aio_pika.abc.AbstractConnection | None = None
        self.exchange: aio_pika.abc.AbstractExchange | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> aio_pika.abc.AbstractExchange:
        async with self._lock:
            if self.exchange is None:
                self.connection = await aio_pika.connect(
                    self.url, client_properties={"connection_name": "chaos-starts"}
                )
                channel = await self.connection.channel(publisher_confirms=True)
                self.exchange = await channel.get_exchange(f"{self.namespace}.events", ensure=False)
            return self.exchange

    async def drop(self, broken: aio_pika.abc.AbstractExchange | None) -> None:
        """Forget the connection a publish failed on (once, however many publishes saw it fail)."""
        async with self._lock:
            if broken is not None and self.exchange is not broken:
                return
            connection, self.connection, self.exchange = self.connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5)


async def publish(url: str, namespace: str, keys: list[str], rate: float, confirmed: set[str]) -> None:
    """Start events on a clock, as a business system sends them, each retried until the broker
    confirms it: a restart in the middle loses none. A retry keeps the message id (it is the
    same start), so the orchestrator takes it once."""
    starts = _Starts(url, namespace)
    window = asyncio.Semaphore(IN_FLIGHT)

    async def one(key: str) -> None:
        message = aio_pika.Message(
            start_body(key),
            type=OrderPlaced.TYPE,
            message_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"chaos:{namespace}:{key}")),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers={"x-workflow": WORKFLOW},
        )
        async with window:
            while True:
                exchange = None
                try:
                    exchange = await starts.get()
                    await exchange.publish(message, routing_key=OrderPlaced.TYPE, timeout=10)
                except Exception:
                    await starts.drop(exchange)
                    await asyncio.sleep(0.5)
                    continue
                confirmed.add(key)
                return

    try:
        tasks: list[asyncio.Task[None]] = []
        began = time.monotonic()
        for i, key in enumerate(keys):
            delay = began + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(key)))
        await asyncio.gather(*tasks)
    finally:
        await starts.drop(None)


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
        commands = tuple(Command(c["type"], c["message_id"]) for c in orjson.loads(r["commands"] or "[]"))
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
    broker = PrivateBroker("chaos", plugins=PLUGINS)
    system: System | None = None
    tap: Tap | None = None
    pool: asyncpg.Pool | None = None
    try:
        # In this thread, not a worker: the node then gets SIGTERM when this process dies, even
        # by SIGKILL (PrivateBroker's PR_SET_PDEATHSIG is only set from the main thread).
        broker.start()
        await _create_database(admin_dsn, database)
        python = sys.executable
        stack = Stack.make(
            ROOT,
            python,
            dsn.replace("postgresql://", "postgresql+asyncpg://", 1),
            broker.url,
            log_dir,
            has_port_flag(python, ROOT),
        )
        await asyncio.to_thread(migrate, stack, namespace, MODULE)
        pool = await asyncpg.create_pool(
            dsn, min_size=1, max_size=3, server_settings={"application_name": APPLICATION}
        )
        system = System(scenario, stack, broker, namespace)
        system.pool = pool
        tap = Tap(broker.url, namespace)
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
            publish(broker.url, namespace, keys, scenario.rate, confirmed),
            run_faults(system, plan, origin, done),
        )
        await system.heal()
        durations["chaos_s"] = time.monotonic() - origin

        began_settle = time.monotonic()
        settled = await settle(pool, tap, len(keys), scenario)
        durations["settle_s"] = time.monotonic() - began_settle
        print(f"  settled in {durations['settle_s']:.0f}s" if settled else "  did not settle", flush=True)
        tables = await collect(pool)
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
            replies={command: (reply,) for command, (reply, _) in REPLIES.items()},
            undo=UNDO,
            expected=scenario.expected,
            outbox_left=tables.outbox,
            verify_exit=checked.returncode,
            verify_output=checked.stdout + checked.stderr,
            crashes=list(system.crashes),
            dead_letters=tables.dead_letters,
        )
        stats = {
            "by_status": dict(Counter(saga.status for saga in tables.sagas)),
            "journal_by_outcome": dict(Counter(entry.outcome for entry in tables.journal)),
            "journal_by_kind": dict(Counter(entry.kind for entry in tables.journal)),
            "duplicates_absorbed": tables.duplicates,
            "settled": settled,
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
        await asyncio.to_thread(broker.stop)
        if not keep_database:
            with contextlib.suppress(Exception):
                await _drop_database(admin_dsn, database)
