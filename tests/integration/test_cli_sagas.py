"""``orchestrator sagas list | show | history | cancel | retry | resume | skip | fire-deadline`` as an
operator runs them (a subprocess), on the real PostgreSQL and RabbitMQ, without a running service:
the sagas are started in this process through the service layer, as ``POST /sagas`` starts them.

Reads must print what the REST API answers (compared with the API in process, over the same
database); actions must exit 0, 3 or 4 as REST answers 200, 409 or 404, journal their actor, and
put their commands on the broker themselves."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import aio_pika
import httpx
import pytest
import pytest_asyncio
from sqlalchemy import select

from orchestrator.adapters.amqp.broker import services_of
from orchestrator.adapters.amqp.topology import Topology, declare
from orchestrator.adapters.metrics import Metrics
from orchestrator.adapters.postgres.queries import Queries
from orchestrator.adapters.postgres.schema import outbox
from orchestrator.adapters.postgres.store import PostgresStore
from orchestrator.core.routing import Registry
from orchestrator.entrypoints.api.app import ApiContext, create_app
from orchestrator.entrypoints.settings import Settings
from orchestrator.examples.contracts import BuyerSigned
from orchestrator.service.batch import process_batch
from orchestrator.service.operations import start_saga
from tests.replies import answer

from .cli_workflows import WORKFLOWS
from .conftest import AMQP_URL, ROOT, delete_namespace, migrated_database, unique

pytestmark = pytest.mark.integration

MODULE = "tests.integration.cli_workflows"
ORDER = {"customer_id": "c-1", "lines": [{"sku": "sku-1", "quantity": 1}], "amount_cents": 1200}
ESCROW = {"buyer_id": "b", "seller_id": "s", "amount_cents": 10}
#: the OS user the subprocesses run as, as getpass.getuser() reads it
USER = "ann-on-call"
keys = unique("cli")


@dataclass
class Shell:
    env: dict[str, str]
    store: PostgresStore
    registry: Registry
    rest: httpx.AsyncClient
    #: bound to the namespace's command exchange: every command sent, whoever sent it
    commands: aio_pika.abc.AbstractQueue

    async def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """``orchestrator sagas ...``, as an operator runs it."""
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "orchestrator", "sagas", *args],
            env={**self.env, **env},
            cwd=ROOT,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )

    async def start(self, workflow: str = "order") -> dict[str, Any]:
        data = ORDER if workflow == "order" else ESCROW
        applied = await start_saga(
            self.registry, self.store, workflow, keys(), data, "test", datetime.now(UTC)
        )
        return {"id": applied.saga.id, "key": applied.saga.key, "awaiting": applied.saga.awaiting}

    async def failed(self) -> dict[str, Any]:
        """A ``strict`` saga failed by an event it does not expect."""
        saga = await self.start("strict")
        signed = await answer(self.store, BuyerSigned(saga["key"]), saga["id"])  # too early
        await process_batch(self.registry, self.store, [signed], datetime.now(UTC))
        return saga

    async def rest_json(self, path: str, **params: Any) -> Any:
        response = await self.rest.get(path, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    async def sent(self, count: int, timeout: float = 10) -> list[aio_pika.abc.AbstractIncomingMessage]:
        found: list[aio_pika.abc.AbstractIncomingMessage] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while len(found) < count and asyncio.get_running_loop().time() < deadline:
            message = await self.commands.get(no_ack=True, fail=False)
            if message is None:
                await asyncio.sleep(0.05)
            else:
                found.append(message)
        return found

    async def unsent(self, saga_id: str) -> list[str]:
        async with self.store.engine.connect() as connection:
            rows = await connection.execute(select(outbox.c.message_id).where(outbox.c.saga_id == saga_id))
            return [r[0] for r in rows]


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """A database of this module's own: its ``strict`` sagas are unknown to the workflows other
    tests load."""
    with migrated_database() as url:
        yield url


@pytest_asyncio.fixture(scope="module")
async def shell(database_url: str) -> AsyncIterator[Shell]:
    namespace = f"test-cli-{uuid.uuid4().hex[:8]}"
    registry = Registry(WORKFLOWS)
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    topology = Topology(namespace)
    await declare(channel, topology, services_of(registry.command_types()), registry.start_types())
    commands = await channel.declare_queue(exclusive=True, auto_delete=True)
    await commands.bind(topology.commands, routing_key="#")
    store = PostgresStore.from_url(database_url, pool_size=2)
    context = ApiContext(registry, store, Queries(store.engine), replace(Settings()), Metrics(process=False))
    env = {
        **os.environ,
        "ORCHESTRATOR_DATABASE_URL": database_url,
        "ORCHESTRATOR_AMQP_URL": AMQP_URL,
        "ORCHESTRATOR_NAMESPACE": namespace,
        "ORCHESTRATOR_WORKFLOWS": MODULE,
        "LOGNAME": USER,
        "USER": USER,
    }
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(context)), base_url="http://127.0.0.1"
        ) as rest:
            yield Shell(env, store, registry, rest, commands)
    finally:
        await store.close()
        await connection.close()
        await delete_namespace(namespace)


async def test_reads_print_a_table_and_with_json_what_the_rest_api_answers(shell: Shell) -> None:
    first, second = await shell.start(), await shell.start()
    rest_page = await shell.rest_json("/sagas", workflow="order", limit=1)
    cursor = rest_page["next_cursor"]

    table, page, shown, shown_json, history, history_json = await asyncio.gather(
        shell.cli("list", "--workflow", "order", "--limit", "1", "--cursor", cursor),
        shell.cli("list", "--workflow", "order", "--limit", "1", "--json"),
        shell.cli("show", first["id"]),
        shell.cli("show", "--workflow", "order", "--key", first["key"], "--json"),
        shell.cli("history", first["id"]),
        shell.cli("history", first["id"], "--json"),
    )

    assert table.returncode == 0, table.stderr
    header, row, *_ = table.stdout.splitlines()
    assert header.split() == ["ID", "WORKFLOW", "KEY", "STATE", "STATUS", "UPDATED", "(UTC)"]
    assert row.split()[:5] == [first["id"], "order", first["key"], "reserve", "running"]  # the next page
    assert json.loads(page.stdout) == rest_page and rest_page["items"][0]["id"] == second["id"]

    assert shown.returncode == 0, shown.stderr
    fields = dict(line.split(":", 1) for line in shown.stdout.splitlines() if line[:1].isalpha())
    assert fields["state"].strip() == "reserve (running)"
    assert fields["waiting for"].strip() == "inventory.OutOfStock, inventory.StockReserved"
    assert fields["timers"].strip().startswith("deadline in reserve, due ")
    assert f'"order_id": "{first["key"]}"' in shown.stdout
    assert json.loads(shown_json.stdout) == await shell.rest_json(f"/sagas/{first['id']}")

    assert history.returncode == 0, history.stderr
    assert "orders.OrderPlaced" in history.stdout and "sent inventory.ReserveStock" in history.stdout
    assert history.stdout.splitlines()[-1] == "1 journal entry"
    assert json.loads(history_json.stdout) == await shell.rest_json(f"/sagas/{first['id']}/history")


async def test_a_read_of_what_is_not_there_exits_4_and_of_what_cannot_be_exits_2(shell: Shell) -> None:
    nobody = str(uuid.uuid4())

    missing, not_shown, no_state = await asyncio.gather(
        shell.cli("history", nobody),
        shell.cli("show", nobody),
        shell.cli("list", "--workflow", "order", "--state", "nowhere"),
    )

    assert (missing.returncode, missing.stderr) == (4, f"orchestrator: no saga {nobody}\n")
    assert (not_shown.returncode, not_shown.stderr) == (4, f"orchestrator: no saga {nobody}\n")
    assert no_state.returncode == 2 and "no state 'nowhere' in order" in no_state.stderr


async def test_each_action_exits_0_done_3_refused_4_not_found_and_journals_its_actor(shell: Shell) -> None:
    retried, cancelled, fired, skipped, failed = [await shell.start() for _ in range(4)] + [
        await shell.failed()
    ]
    reserved = ("--outcome", "inventory.StockReserved", "--data", '{"reservation_id": "r-1"}')

    done = dict(
        zip(
            ("retry", "cancel", "fire-deadline", "skip", "resume"),
            await asyncio.gather(
                shell.cli("retry", retried["id"], "--reason", "participant back", "--actor", "alice"),
                shell.cli("cancel", "--workflow", "order", "--key", cancelled["key"], "--reason", "asked"),
                shell.cli("fire-deadline", fired["id"]),
                shell.cli("skip", skipped["id"], *reserved),
                shell.cli("resume", failed["id"], "--step", "waiting", "--json"),
            ),
            strict=True,
        )
    )
    # each refused now: the cancelled saga is finished, the failed one runs again
    refused = dict(
        zip(
            done,
            await asyncio.gather(
                shell.cli("retry", cancelled["id"]),
                shell.cli("cancel", cancelled["id"]),
                shell.cli("fire-deadline", cancelled["id"]),
                shell.cli("skip", cancelled["id"], *reserved),
                shell.cli("resume", failed["id"]),
            ),
            strict=True,
        )
    )
    nobody = str(uuid.uuid4())
    absent = await asyncio.gather(
        shell.cli("cancel", nobody),
        shell.cli("skip", "--workflow", "order", "--key", "never", *reserved),
        shell.cli("retry", nobody),
        shell.cli("fire-deadline", nobody),
        shell.cli("resume", nobody),
    )

    assert {a: r.returncode for a, r in done.items()} == dict.fromkeys(done, 0), {
        a: r.stderr for a, r in done.items()
    }
    assert {a: r.returncode for a, r in refused.items()} == dict.fromkeys(done, 3), {
        a: r.stderr for a, r in refused.items()
    }
    assert [r.returncode for r in absent] == [4] * 5 and f"no saga {nobody}" in absent[0].stderr
    assert refused["resume"].stderr == "orchestrator: saga is running: only a failed saga resumes\n"
    assert done["skip"].stdout.startswith(
        f"skip: saga {skipped['id']} (order {skipped['key']}) is now in charge"
    )
    assert json.loads(done["resume"].stdout)["state"] == "waiting"  # the REST answer, SagaWritten
    assert "is now in compensated (compensated)" in done["fire-deadline"].stdout

    (retry,) = (await shell.store.journal(retried["id"]))[1:]
    (cancel,) = (await shell.store.journal(cancelled["id"]))[1:]
    assert (retry.message.type, retry.message.actor) == ("operator.retry", "alice")
    assert (cancel.message.type, cancel.message.actor) == ("operator.cancel", f"cli:{USER}")
    assert cancel.decision["reason"] == f"cancel by cli:{USER}: asked"
    await shell.sent(10, timeout=1)  # what these sent: the next tests read their own


async def test_bad_input_exits_2_before_anything_is_written(shell: Shell) -> None:
    saga = await shell.start()

    results = await asyncio.gather(
        shell.cli("skip", saga["id"], "--outcome", "nope"),
        shell.cli("skip", saga["id"], "--outcome", "inventory.StockReserved", "--data", '{"x": 1}'),
    )

    assert [r.returncode for r in results] == [2, 2]
    assert "no event type 'nope'" in results[0].stderr and "reservation_id" in results[1].stderr
    assert len(await shell.store.journal(saga["id"])) == 1


async def test_an_actions_commands_arrive_on_the_broker_and_leave_the_outbox(shell: Shell) -> None:
    saga = await shell.start()
    (awaited,) = saga["awaiting"]
    await shell.sent(10, timeout=0.5)  # nothing else of this test's is there to read

    same = await shell.cli("retry", saga["id"])
    fresh = await shell.cli("retry", saga["id"], "--new-attempt")
    first, second = await shell.sent(2)

    assert (same.returncode, fresh.returncode) == (0, 0), same.stderr + fresh.stderr
    assert "commands: 1 command (inventory.ReserveStock), confirmed by the broker" in same.stdout
    assert (first.type, first.message_id, first.correlation_id) == (
        "inventory.ReserveStock",
        awaited["message_id"],  # the same id: the participant takes it as a duplicate
        saga["id"],
    )
    assert first.headers["x-saga-id"] == saga["id"] and json.loads(first.body)["order_id"] == saga["key"]
    assert second.type == "inventory.ReserveStock" and second.message_id != first.message_id
    assert await shell.unsent(saga["id"]) == []  # confirmed, so marked sent (the start's is that one)


async def test_with_the_broker_away_the_action_is_done_and_exits_6_its_commands_in_the_outbox(
    shell: Shell,
) -> None:
    saga = await shell.start()
    away = "amqp://guest:guest@127.0.0.1:1/"
    absent_database = shell.env["ORCHESTRATOR_DATABASE_URL"] + "_absent"
    reserved = ("--outcome", "inventory.StockReserved", "--data", '{"reservation_id": "r"}')

    acted, no_database = await asyncio.gather(
        shell.cli("skip", saga["id"], *reserved, ORCHESTRATOR_AMQP_URL=away),
        shell.cli("show", saga["id"], ORCHESTRATOR_DATABASE_URL=absent_database),
    )

    assert acted.returncode == 6, acted.stderr
    assert "1 not confirmed by the broker" in acted.stdout
    assert "the action is done and journaled" in acted.stderr and "outbox sweep sends it" in acted.stderr
    assert "Traceback" not in acted.stderr and len(acted.stderr.splitlines()) == 1
    journal = await shell.store.journal(saga["id"])
    assert journal[-1].message.type == "operator.skip"
    charge = journal[-1].decision["commands"][0]
    assert charge["type"] == "payment.ChargePayment" and charge["message_id"] in await shell.unsent(
        saga["id"]
    )
    assert no_database.returncode == 5 and "PostgreSQL" in no_database.stderr
