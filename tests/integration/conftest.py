"""Real PostgreSQL, real RabbitMQ, real processes.

Each test session migrates a database of its own (dropped at the end); each test gets its own
namespace of exchanges and queues (deleted after it). The orchestrator and the participants run
as subprocesses, exactly as a user starts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import httpx
import orjson
import pytest
import pytest_asyncio

from orchestrator.adapters.amqp import nodes
from orchestrator.adapters.amqp.broker import wait_for_consumers
from orchestrator.adapters.postgres.store import PostgresStore
from orchestrator.core.definitions import FINISHED
from orchestrator.core.engine import SagaSnapshot, reply_id_for, saga_id_for
from participants.cli import ensure_database
from tests.integration.in_process import Served, Worked, serve, work
from tests.integration.private_broker import PrivateBroker
from tests.replies import answered_command

ROOT = Path(__file__).resolve().parents[2]
ADMIN_DSN = os.environ.get("TEST_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("ORCHESTRATOR_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
SERVICES = ("inventory", "payment", "shipping", "buyer", "seller", "bank")
API_TOKEN = f"test-token-{uuid.uuid4().hex}"


@contextlib.contextmanager
def migrated_database(prefix: str = "orchestrator_test") -> Iterator[str]:
    """A freshly migrated database of its own, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    url = database_url_of(name)
    # migrate declares a topology too: in a namespace of its own, not in the shared broker's "saga"
    namespace = f"test-migrate-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "ORCHESTRATOR_DATABASE_URL": url,
        "ORCHESTRATOR_AMQP_URL": AMQP_URL,
        "ORCHESTRATOR_NAMESPACE": namespace,
    }
    try:
        subprocess.run(
            [sys.executable, "-m", "orchestrator", "migrate"], env=env, check=True, cwd=ROOT, timeout=120
        )
        yield url
    finally:
        asyncio.run(delete_namespace(namespace))
        drop_database(name)


#: every queue a namespace may have: the orchestrator's, its predecessor's, its partitions (as
#: many as a test uses), the participants'
QUEUES = (
    "orchestrator.events",
    "orchestrator",
    *(f"orchestrator.p{partition}" for partition in range(16)),
    "dead-letter",
    *SERVICES,
    # the services of the tests' own workflows that run on the shared broker (upcasting, releases)
    "uppay",
    "notifications",
)
EXCHANGES = ("events", "commands", "dead", "orchestrator.route", "orchestrator.by-saga")


async def delete_namespace(namespace: str, queues: tuple[str, ...] = QUEUES, url: str = AMQP_URL) -> None:
    connection = await nodes.connect(url)
    try:
        channel = await connection.channel()
        for queue in queues:
            with contextlib.suppress(Exception):
                await channel.queue_delete(f"{namespace}.{queue}")
        for exchange in EXCHANGES:
            with contextlib.suppress(Exception):
                await channel.exchange_delete(f"{namespace}.{exchange}")
    finally:
        await connection.close()


def database_url_of(name: str) -> str:
    """The orchestrator's URL for a database on the server of ADMIN_DSN."""
    return f"{ADMIN_DSN.rsplit('/', 1)[0].replace('postgresql://', 'postgresql+asyncpg://')}/{name}"


def drop_database(name: str) -> None:
    async def drop() -> None:
        connection = await asyncpg.connect(ADMIN_DSN)
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()

    asyncio.run(drop())


@pytest.fixture(scope="session", autouse=True)
def participant_database() -> Iterator[str]:
    """A database for the example participants a test starts without a bench (which gives them
    its own): set as PARTICIPANT_DATABASE_URL for the session, so that none of them writes into
    the default ``participants`` database of a developer's demo. Dropped at the end."""
    name = f"participants_test_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        connection = await asyncpg.connect(ADMIN_DSN)
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()

    asyncio.run(create())
    url = database_url_of(name)
    previous = os.environ.get("PARTICIPANT_DATABASE_URL")
    os.environ["PARTICIPANT_DATABASE_URL"] = url
    try:
        yield url
    finally:
        if previous is None:
            os.environ.pop("PARTICIPANT_DATABASE_URL", None)
        else:
            os.environ["PARTICIPANT_DATABASE_URL"] = previous
        drop_database(name)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with migrated_database() as url:
        yield url


@pytest.fixture(scope="session")
def template_database() -> Iterator[str]:
    """A migrated database nobody connects to, which each bench's database is copied from."""
    with migrated_database("orchestrator_template") as url:
        yield url.rsplit("/", 1)[1]


@contextlib.asynccontextmanager
async def cloned_database(template: str) -> AsyncIterator[str]:
    """A database of the test's own, a copy of ``template`` (fast: no migration to run): a test
    that runs ``orchestrator run`` sees no saga, journal or release another test left."""
    async with empty_database("orchestrator_test", template=template) as url:
        yield url


@contextlib.asynccontextmanager
async def empty_database(prefix: str, *, template: str | None = None) -> AsyncIterator[str]:
    """A database of the test's own (empty, or a copy of ``template``), dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    connection = await asyncpg.connect(ADMIN_DSN)
    try:
        await connection.execute(
            f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")
        )
    finally:
        await connection.close()
    try:
        yield database_url_of(name)
    finally:
        await asyncio.to_thread(drop_database, name)


@pytest.fixture(scope="session")
def private_broker_node() -> Iterator[PrivateBroker]:
    """A RabbitMQ node of the session's own, started once (it takes seconds) and removed at the
    end: for tests that stop the broker, which the shared one on 5672 must never be."""
    with PrivateBroker() as broker:
        yield broker


@pytest.fixture
def private_broker(private_broker_node: PrivateBroker) -> Iterator[PrivateBroker]:
    """The private node, running; whatever a test did to it (stop_app,
    kill), the next test finds it running."""
    private_broker_node.ensure_running()
    yield private_broker_node
    private_broker_node.ensure_running()


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 20) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(5)


@dataclass
class Bench:
    """Everything one test runs against: its namespace, database, processes and broker."""

    namespace: str
    database_url: str
    tmp_path: Path
    processes: list[Process] = field(default_factory=list)
    #: orchestrators running in the test's event loop (``serve``)
    served: list[Served] = field(default_factory=list)
    #: example participants running in the test's event loop (``work``)
    worked: list[Worked] = field(default_factory=list)
    connection: aio_pika.abc.AbstractConnection | None = None
    channel: aio_pika.abc.AbstractChannel | None = None
    store: PostgresStore | None = None
    #: the REST API of the orchestrator started last (each gets a free port of its own)
    api_url: str | None = None
    api_token: str = API_TOKEN
    #: the shared broker, or a private node of the test's own (``private_bench``)
    amqp_url: str = AMQP_URL

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "ORCHESTRATOR_DATABASE_URL": self.database_url,
            # the example participants keep their tables (a schema per service) in the test's
            # own database too, so that no test sees another's stock, payments or inbox
            "PARTICIPANT_DATABASE_URL": self.database_url,
            "ORCHESTRATOR_AMQP_URL": self.amqp_url,
            "ORCHESTRATOR_NAMESPACE": self.namespace,
            "ORCHESTRATOR_API_TOKEN": self.api_token,
            "PYTHONUNBUFFERED": "1",
            # a kit participant's pool is its concurrency plus one: at the default 10, six
            # services of each of three workers' tests came near PostgreSQL's 100 connections
            # (a test that means another sets its own)
            "PARTICIPANT_CONCURRENCY": os.environ.get("PARTICIPANT_CONCURRENCY", "4"),
        }

    def spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> Process:
        log = self.tmp_path / f"{name}-{len(self.processes)}.log"
        handle = log.open("wb")
        popen = subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=ROOT,
            env=env or self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    async def start_orchestrator(self, *extra: str, env: dict[str, str] | None = None) -> Process:
        """``orchestrator run`` with its REST API on a free port (``api_url``), behind the token;
        ``env`` overrides some of the environment."""
        environment = {**self.env, **(env or {})}
        process = self.spawn("orchestrator", "orchestrator", "run", "--port", "0", *extra, env=environment)
        await self.wait_for_log(process, "api listening on ")
        self.api_url = process.output().split("api listening on ", 1)[1].split()[0]
        return process

    async def serve(self, workflows: str = "orchestrator.examples", **options: Any) -> Served:
        """The orchestrator in the test's event loop (tests/integration/in_process.py), with its
        REST API on a free port (``api_url``): for tests whose subject is not the process.
        ``options``: ``hold_clock``, the release gate's flags, any field of ``Settings``."""
        served = await serve(
            **{
                "database_url": self.database_url,
                "amqp_url": self.amqp_url,
                "namespace": self.namespace,
                "api_token": self.api_token,
                "workflows": workflows,
                **options,
            }
        )
        self.served.append(served)
        self.api_url = served.api_url
        return served

    def api(self, *, token: bool = True, actor: str | None = None) -> httpx.AsyncClient:
        """A client of the last started orchestrator's REST API (``async with bench.api() as api``)."""
        assert self.api_url is not None, "start an orchestrator first"
        headers = {"Authorization": f"Bearer {self.api_token}"} if token else {}
        if actor is not None:
            headers["X-Actor"] = actor
        return httpx.AsyncClient(base_url=self.api_url, headers=headers, timeout=30)

    async def start_participant(self, service: str, *options: str) -> Process:
        process = self.spawn(service, "participants", service, *options)
        await self.wait_for_consumer(f"{self.namespace}.{service}")
        return process

    async def start_participants(self, *services: str, **options: tuple[str, ...]) -> dict[str, Process]:
        """The example services (all six unless named), started together (each interpreter's
        start is the slow part), then waited for until each consumes its queue."""
        started = {
            service: self.spawn(service, "participants", service, *options.get(service, ()))
            for service in services or SERVICES
        }
        await self.wait_for_consumer(*(f"{self.namespace}.{service}" for service in started), timeout=60)
        return started

    async def work(self, *services: str, **options: tuple[str, ...]) -> dict[str, Worked]:
        """The example services (all six unless named) in the test's event loop, on the
        participant kit's worker, waited for until each consumes its queue: for tests whose
        subject is not the participant's process. ``options``: each one's command-line options."""
        await ensure_database(self.env["PARTICIPANT_DATABASE_URL"])  # once, for every service
        env = self.env
        started = {service: work(service, options.get(service, ()), env) for service in services or SERVICES}
        self.worked.extend(started.values())
        await self.wait_for_consumer(*(f"{self.namespace}.{service}" for service in started), timeout=60)
        return started

    async def migrate(self, env: dict[str, str] | None = None) -> None:
        """``orchestrator migrate`` as an operator runs it (``env`` overrides some of the
        environment); the test fails with its output unless it exits 0."""
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "orchestrator", "migrate"],
            env={**self.env, **(env or {})},
            cwd=ROOT,
            timeout=120,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def verify(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """``orchestrator verify``, as an operator runs it; ``env`` overrides some of the environment."""
        return subprocess.run(
            [sys.executable, "-m", "orchestrator", "verify", *args],
            env={**self.env, **(env or {})},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )

    async def wait_for_log(self, process: Process, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in process.output():
            if process.popen.poll() is not None:
                raise AssertionError(f"{process.name} exited {process.popen.returncode}:\n{process.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{process.name} never logged {text!r}:\n{process.output()}")
            await asyncio.sleep(0.05)

    async def wait_for_consumer(self, *queues: str, timeout: float = 30) -> None:
        # not robust: a passive declare must ask the broker
        connection = await nodes.connect(self.amqp_url)
        try:
            await wait_for_consumers(connection, queues, timeout)
        except TimeoutError as error:
            raise AssertionError(str(error)) from None
        finally:
            await connection.close()

    async def publish(
        self,
        type_: str,
        body: Any,
        *,
        message_id: str | None = None,
        correlation_id: str | None = None,
        headers: dict[str, Any] | None = None,
        raw: bytes | None = None,
    ) -> str:
        assert self.channel is not None
        exchange = await self.channel.get_exchange(f"{self.namespace}.events")
        message_id = message_id or str(uuid.uuid4())
        await exchange.publish(
            aio_pika.Message(
                raw if raw is not None else orjson.dumps(body),
                type=type_ or None,
                message_id=message_id or None,
                correlation_id=correlation_id,
                headers=headers,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=type_ or "untyped",
        )
        return message_id

    async def reply_id(self, saga_id: str, type_: str, index: int = 0) -> str:
        """The section 6 reply id (docs/protocol.md) of a ``type_`` answer to the ``index``-th
        command the saga waits on, or, waiting on none, the last command it sent: the id a
        participant gives it, without which the saga refuses it (``not_awaited``)."""
        assert self.store is not None
        return reply_id_for(await answered_command(self.store, saga_id, index), type_)

    async def reply(
        self, saga_id: str, type_: str, body: Any, *, correlated: bool = True, index: int = 0
    ) -> str:
        """``body`` published as a participant's reply of ``type_`` to the saga's command."""
        message_id = await self.reply_id(saga_id, type_, index)
        cid = saga_id if correlated else None
        return await self.publish(type_, body, message_id=message_id, correlation_id=cid)

    async def place_order(self, order_id: str, *, sku: str = "sku-1", amount_cents: int = 1000) -> str:
        body = {
            "order_id": order_id,
            "customer_id": "c-1",
            "lines": [{"sku": sku, "quantity": 1}],
            "amount_cents": amount_cents,
        }
        return await self.publish("orders.OrderPlaced", body)

    async def open_escrow(self, escrow_id: str, *, amount_cents: int = 5000) -> str:
        body = {"escrow_id": escrow_id, "buyer_id": "b-1", "seller_id": "s-1", "amount_cents": amount_cents}
        return await self.publish("escrow.EscrowOpened", body)

    async def saga(self, workflow: str, key: str) -> SagaSnapshot | None:
        assert self.store is not None
        return await self.store.get_saga(saga_id_for(workflow, key))

    async def finished(self, workflow: str, keys: list[str], timeout: float = 60) -> dict[str, SagaSnapshot]:
        """Wait until every saga has finished; the sagas by key."""
        deadline = time.monotonic() + timeout
        found: dict[str, SagaSnapshot] = {}
        while time.monotonic() < deadline:
            for key in keys:
                if key not in found:
                    saga = await self.saga(workflow, key)
                    if saga is not None and saga.status in FINISHED:
                        found[key] = saga
            if len(found) == len(keys):
                return found
            await asyncio.sleep(0.1)
        missing = {k: await self.saga(workflow, k) for k in keys if k not in found}
        logs = "\n".join(
            [p.output()[-3000:] for p in self.processes if p.name == "orchestrator"]
            + [s.output()[-3000:] for s in self.served]
        )
        raise AssertionError(f"not finished in {timeout}s: {missing}\n{logs}")

    async def dead_letters(self, count: int, timeout: float = 20) -> list[dict[str, Any]]:
        """This namespace's rows of the dead-letter table (the database is the session's), oldest
        first, once there are ``count`` of them."""
        deadline = time.monotonic() + timeout
        connection = await asyncpg.connect(self.database_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            while True:
                rows = await connection.fetch(
                    "SELECT * FROM dead_letters WHERE starts_with(exchange, $1) ORDER BY id",
                    f"{self.namespace}.",
                )
                if len(rows) >= count or time.monotonic() > deadline:
                    return [dict(r) for r in rows]
                await asyncio.sleep(0.05)
        finally:
            await connection.close()

    async def commands_sent(self, saga_id: str) -> list[str]:
        """Command types in the order the saga's journal decided them."""
        assert self.store is not None
        return [c["type"] for e in await self.store.journal(saga_id) for c in e.decision["commands"]]

    async def cleanup(self) -> None:
        """Everything stopped (what runs in this event loop all at once) and removed, whatever
        fails on the way; a stop that hung fails the test once the rest is cleaned up."""
        stopped = await asyncio.gather(
            *(served.stop() for served in self.served),
            *(worked.stop() for worked in self.worked),
            return_exceptions=True,
        )
        failed = [result for result in stopped if isinstance(result, BaseException)]
        for process in self.processes:  # all told at once, then each waited for
            if process.popen.poll() is None:
                process.popen.send_signal(signal.SIGTERM)
        await asyncio.to_thread(lambda: [process.stop() for process in self.processes])
        if self.store is not None:
            await self.store.close()
        if self.connection is not None:
            with contextlib.suppress(Exception):  # a test may have stopped its private broker
                await asyncio.wait_for(self.connection.close(), 5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(delete_namespace(self.namespace, url=self.amqp_url), 10)
        if failed:
            raise failed[0]

    async def connect(self) -> None:
        """(Again) the test's own connection and channel to publish on."""
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.connection.close(), 5)
        self.connection = await nodes.connect(self.amqp_url)
        self.channel = await self.connection.channel(publisher_confirms=True)


@pytest_asyncio.fixture
async def bench(template_database: str, tmp_path: Path) -> AsyncIterator[Bench]:
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    async with cloned_database(template_database) as database_url:
        setup = Bench(namespace, database_url, tmp_path)
        await setup.connect()
        setup.store = PostgresStore.from_url(database_url, pool_size=2)
        try:
            yield setup
        finally:
            await setup.cleanup()


@pytest_asyncio.fixture
async def private_bench(
    template_database: str, tmp_path: Path, private_broker: PrivateBroker
) -> AsyncIterator[Bench]:
    """A bench whose processes use the private RabbitMQ node, its namespace's topology declared
    there by ``orchestrator migrate``: for tests that stop, freeze or restart the broker."""
    async with cloned_database(template_database) as database_url:
        async for setup in _private_bench(database_url, tmp_path, private_broker):
            yield setup


async def _private_bench(
    database_url: str, tmp_path: Path, private_broker: PrivateBroker
) -> AsyncIterator[Bench]:
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    setup = Bench(namespace, database_url, tmp_path, amqp_url=private_broker.url)
    await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "orchestrator", "migrate"],
        env=setup.env,
        check=True,
        cwd=ROOT,
        timeout=120,
        capture_output=True,
    )
    await setup.connect()
    setup.store = PostgresStore.from_url(database_url, pool_size=2)
    try:
        yield setup
    finally:
        private_broker.ensure_running()  # the cleanup deletes the namespace there
        await setup.cleanup()


def unique(prefix: str) -> Callable[[], str]:
    counter = iter(range(1_000_000))
    run = uuid.uuid4().hex[:6]
    return lambda: f"{prefix}-{run}-{next(counter)}"
