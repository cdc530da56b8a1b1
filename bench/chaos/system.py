"""The processes of a chaos run, and what each fault does to them.

Replicas are ``orchestrator run`` processes. Participants are, with ``--participants kit``, the
example services (``python -m participants NAME``, on the participant kit, keeping their business
tables in the run's database), or with ``responder`` the benchmark responders, which keep
nothing; one process per service either way, so that a service can be stopped alone. The broker
is the run's private node.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg

from bench.chaos.scenario import Scenario
from bench.config import Stack
from bench.processes import KitService, Orchestrator, Responder
from tests.integration.private_broker import PrivateBroker
from tests.integration.private_cluster import PrivateCluster
from tests.integration.private_failover import FailoverPostgres

__all__ = ["APPLICATION", "MODULE", "Kit", "Replica", "System"]

MODULE = "bench.chaos.workflow"
APPLICATION = "chaos-suite"  # our own sessions: terminate_sessions spares them
START_ATTEMPTS = 10


class Replica(Orchestrator):
    """A replica with the workflow's deadline in its environment, and its name in its log."""

    def __init__(self, stack: Stack, namespace: str, log: Path, deadline: float, index: int) -> None:
        super().__init__(stack, namespace, log, workflows=MODULE, name=f"replica-{index}")
        self.deadline = deadline

    def env(self) -> dict[str, str]:
        return {**super().env(), "CHAOS_DEADLINE_SECONDS": str(self.deadline)}


class Kit(KitService):
    """One example service on the participant kit, in the run's own database, with the
    scenario's failure rate and delay."""

    def __init__(self, stack: Stack, namespace: str, log: Path, service: str, scenario: Scenario) -> None:
        options: tuple[str, ...] = ("--fail-rate", str(scenario.fail_rate))
        if scenario.delay:
            options += ("--delay", str(scenario.delay))
        super().__init__(stack, namespace, log, service, scenario.concurrency, stack.database_url, options)
        self.scenario = scenario

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)


Participant = Responder | Kit


class System:
    """The processes of a run, and the faults done to them (``faults.System``)."""

    def __init__(
        self,
        scenario: Scenario,
        stack: Stack,
        broker: PrivateBroker,
        namespace: str,
        cluster: PrivateCluster | None = None,
        database: FailoverPostgres | None = None,
    ) -> None:
        self.scenario = scenario
        self.stack = stack
        self.broker = broker
        self.namespace = namespace
        #: with ``ha``: the broker's three nodes and the database's pg_auto_failover cluster
        self.cluster = cluster
        self.database = database
        #: seconds from each primary killed to the first decision committed on the new one, and
        #: from each broker node stopped to the first message decided through another node
        self.database_failovers: list[float] = []
        self.node_failovers: list[float] = []
        self._watches: list[asyncio.Task[None]] = []
        self._killed_primary: int | None = None
        self._stopped_node: PrivateBroker | None = None
        self._last_stopped: PrivateBroker | None = None
        self.replicas = [
            Replica(stack, namespace, stack.log_dir / f"replica-{i}.log", scenario.deadline, i)
            for i in range(scenario.replicas)
        ]
        self.kit = scenario.participants == "kit"
        self.responders: dict[str, Participant] = {
            s: Kit(stack, namespace, stack.log_dir / f"participant-{s}.log", s, scenario)
            if self.kit
            else Responder(stack, namespace, stack.log_dir / f"responder-{s}.log", name=f"responder-{s}")
            for s in scenario.services
        }
        #: participant stops so far per service: with the kit every other one is a SIGKILL
        self._stops = dict.fromkeys(scenario.services, 0)
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
        what is under test): it is started again once the broker is back. The kit's participants
        reconnect by themselves, and must: they are left alone."""
        await asyncio.to_thread(self.broker.start_app)
        self.broker_up.set()
        if self.kit:
            return
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

    async def kill_db_primary(self) -> str:
        """SIGKILL to the primary's keeper, server and backends; back once the standby is promoted."""
        assert self.database is not None
        old = await asyncio.to_thread(self.database.primary)
        if old is None:
            raise RuntimeError("no primary to kill")
        began, at = time.monotonic(), time.time()
        await asyncio.to_thread(self.database.kill, old)
        self._watch(at, began, False, self.database_failovers)
        self._killed_primary = old
        promoted = await asyncio.to_thread(self.database.wait_promoted, old)
        return f"primary {old} killed, {promoted} promoted after {time.monotonic() - began:.1f}s"

    async def rejoin_db_node(self) -> str:
        assert self.database is not None and self._killed_primary is not None
        port, self._killed_primary = self._killed_primary, None
        await asyncio.to_thread(self.database.rejoin, port)
        return f"{port} back as a standby"

    async def stop_broker_node(self) -> str:
        """``stop_app`` on the node most of the replicas' consumers are connected to."""
        assert self.cluster is not None
        nodes = self.cluster.nodes
        try:
            counts = await asyncio.gather(*(asyncio.to_thread(_consumers_on, n) for n in nodes))
        except Exception:  # rabbitmqctl slow on a loaded machine: the replicas' first node, or the
            # one after the last stopped (where a connection that lost its node goes next)
            last = nodes.index(self._last_stopped) if self._last_stopped in nodes else -1
            counts = [int(i == (last + 1) % len(nodes)) for i in range(len(nodes))]
        node = max(zip(counts, range(len(counts)), nodes, strict=True))[2]
        self._last_stopped = node
        began, at = time.monotonic(), time.time()
        self._watch(at, began, True, self.node_failovers)
        await asyncio.to_thread(node.stop_app)
        self._stopped_node = node
        return f"{node.node} stopped, with {max(counts)} of the replicas' consumers on it"

    def _watch(self, at: float, began: float, events_only: bool, into: list[float]) -> None:
        """In the background: the seconds from ``began`` until a journal entry decided after
        ``at`` (wall clock; its ``recorded_at`` is when it was decided) can be read from whichever
        host takes writes, i.e. until its commit; read every 0.1 s, for 60 s at most."""
        assert self.pool is not None
        pool = self.pool
        kind = " AND kind = 'event'" if events_only else ""
        query = f"SELECT EXISTS (SELECT 1 FROM journal WHERE recorded_at > to_timestamp($1){kind})"

        async def watch() -> None:
            while time.monotonic() - began < 60:
                with contextlib.suppress(Exception):  # between primaries, or a pool reconnecting
                    if await pool.fetchval(query, at):
                        into.append(round(time.monotonic() - began, 2))
                        return
                await asyncio.sleep(0.1)

        self._watches.append(asyncio.create_task(watch()))

    async def start_broker_node(self) -> None:
        node, self._stopped_node = self._stopped_node, None
        if node is not None:
            await asyncio.to_thread(node.start_app)

    async def stop_service(self, service: str) -> str:
        """SIGTERM, or with the kit every other time SIGKILL: a participant killed between its
        commit and its ack gets the command again, and only its inbox stands between that and a
        second charge. The first stop of each service is a kill."""
        async with self._locks[service]:
            participant = self.responders[service]
            self._note_crash(participant.name, participant)
            self._stopped.add(service)
            self._stops[service] += 1
            if isinstance(participant, Kit) and self._stops[service] % 2 == 1:
                participant.kill()
                return "SIGKILL"
            await participant.terminate(15)
            return "SIGTERM"

    async def start_service(self, service: str) -> None:
        async with self._locks[service]:
            await self._start_responder(service)
            self._stopped.discard(service)

    # -- the rest ---------------------------------------------------------------------------------

    def _note_crash(self, name: str, process: Orchestrator | Participant) -> None:
        """A process found dead that no fault stopped died by itself: a finding."""
        key = name.removeprefix("responder-").removeprefix("participant-")
        if process.popen is not None and not process.alive() and key not in self._stopped:
            self.crashes.append(
                f"{name} exited {process.popen.returncode} by itself: {process.output()[-500:]}"
            )

    async def _start_responder(self, service: str) -> None:
        responder = self.responders[service]

        async def start() -> None:
            self._started_under[service] = self.restarts  # the broker is up: _start waited
            if isinstance(responder, Kit):
                await responder.start()
            else:
                await responder.start((service,))

        await self._start(responder, start)

    async def _start(
        self, process: Orchestrator | Participant, start: Callable[[], Awaitable[object]]
    ) -> None:
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
        if self.cluster is not None:
            for node in self.cluster.nodes:
                if not node.app_running():
                    await asyncio.to_thread(node.start_app)
        elif not self.broker.app_running():
            await self.start_broker()
        if self._killed_primary is not None:
            await self.rejoin_db_node()
        for i, replica in enumerate(self.replicas):
            if not replica.alive():
                self._note_crash(f"replica-{i}", replica)
                await self.start_replica(i)
        for service, responder in self.responders.items():
            if not responder.alive():
                self._note_crash(responder.name, responder)
                await self.start_service(service)
            elif not self.kit and self._started_under.get(service) != self.restarts:
                # connected to the broker before its last restart, and never started again since
                async with self._locks[service]:
                    await responder.terminate(15)
                await self.start_service(service)

    async def watched(self) -> None:
        """Every failover watch done (each ends within 60 s)."""
        await asyncio.gather(*self._watches, return_exceptions=True)

    async def stop_all(self) -> None:
        for process in [*self.replicas, *self.responders.values()]:
            with contextlib.suppress(Exception):
                await process.terminate(30)
        for popen in self._spawned:  # one a race left behind: never, we hope, but never leak it
            if popen.poll() is None:
                popen.kill()
                popen.wait(10)


def _consumers_on(node: PrivateBroker) -> int:
    """How many of the orchestrator's consuming connections a node holds."""
    listing = node.ctl("list_connections", "client_properties", "--no-table-headers", timeout=10)
    return listing.count("orchestrator-consume")
