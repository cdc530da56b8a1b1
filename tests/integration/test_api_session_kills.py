"""The REST API while PostgreSQL kills its sessions mid-request (``pg_terminate_backend`` on every
backend of the API's database, in a loop): no answer is ever a 500, every 503 carries Retry-After,
and every answer to a start or an action agrees with the database afterwards. A 201 is a saga that
is there, exactly as answered; a 503'd start either did not commit or, if it did, the same start
again answers 200 with it; a 200 action is committed as answered.

The API runs in process (httpx over ASGI) on a database of this module's own, so that the killing
touches no other test's sessions."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio

from orchestrator.adapters.metrics import Metrics
from orchestrator.adapters.postgres.queries import Queries
from orchestrator.adapters.postgres.store import PostgresStore
from orchestrator.core.engine import saga_id_for
from orchestrator.core.routing import Registry
from orchestrator.entrypoints.api.app import ApiContext, create_app
from orchestrator.entrypoints.settings import Settings
from orchestrator.examples import WORKFLOWS

from .conftest import ADMIN_DSN, migrated_database

pytestmark = pytest.mark.integration

ORDER = {"customer_id": "c-1", "lines": [{"sku": "sku-1", "quantity": 1}], "amount_cents": 1200}
ALLOWED = {200, 201, 404, 409, 503}


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with migrated_database() as url:
        yield url


@dataclass
class Storm:
    client: httpx.AsyncClient
    database: str
    #: per key, the answers its starts got, in order
    starts: dict[str, list[httpx.Response]] = field(default_factory=dict)
    #: per saga id, the answer to its cancel, and its version before
    cancels: dict[str, tuple[int, httpx.Response]] = field(default_factory=dict)
    answers: Counter[int] = field(default_factory=Counter)
    bad: list[str] = field(default_factory=list)
    killed: int = 0

    def note(self, what: str, response: httpx.Response) -> None:
        self.answers[response.status_code] += 1
        if response.status_code not in ALLOWED:
            self.bad.append(f"{what}: {response.status_code} {response.text[:300]}")
        elif response.status_code == 503 and response.headers.get("Retry-After") != "5":
            self.bad.append(f"{what}: a 503 without Retry-After: {dict(response.headers)}")

    async def start(self, key: str) -> httpx.Response:
        response = await self.client.post("/sagas", json={"workflow": "order", "key": key, "data": ORDER})
        self.starts.setdefault(key, []).append(response)
        self.note(f"start {key}", response)
        return response


@pytest_asyncio.fixture
async def storm(database_url: str) -> AsyncIterator[Storm]:
    store = PostgresStore.from_url(database_url, pool_size=4)
    context = ApiContext(
        Registry(WORKFLOWS),
        store,
        Queries(store.engine),
        replace(Settings(), api_token=None),
        Metrics(process=False),
    )
    # An error that escapes is answered 500, as uvicorn would answer it, instead of raised here.
    transport = httpx.ASGITransport(app=create_app(context), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=30) as client:
        yield Storm(client, database_url.rsplit("/", 1)[1])
    await store.close()


async def kill_sessions(storm: Storm, stop: asyncio.Event) -> None:
    """Terminates every session of the API's database, again and again, until told to stop."""
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        while not stop.is_set():
            killed = await admin.fetchval(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()) AS k",
                storm.database,
            )
            storm.killed += killed
            await asyncio.sleep(random.uniform(0.005, 0.15))  # some requests get through
    finally:
        await admin.close()


async def client_loop(storm: Storm, stop: asyncio.Event, existing: list[str], cancel: list[str]) -> None:
    while not stop.is_set():
        key = f"kill-{uuid.uuid4().hex[:12]}"
        started = await storm.start(key)
        if started.status_code in (200, 201):
            saga_id = started.json()["id"]
            storm.note("get", await storm.client.get(f"/sagas/{saga_id}"))
            storm.note("history", await storm.client.get(f"/sagas/{saga_id}/history"))
        storm.note("list", await storm.client.get("/sagas", params={"limit": 5}))
        storm.note("workflows", await storm.client.get("/workflows"))
        await storm.start(random.choice(existing))  # an existing key: 200, or 503
        if cancel:
            saga_id, version = cancel.pop()
            response = await storm.client.post(f"/sagas/{saga_id}/cancel", json={"reason": "storm"})
            storm.cancels[saga_id] = (version, response)
            storm.note(f"cancel {saga_id}", response)


async def test_sessions_killed_mid_request_never_give_a_500_and_every_answer_holds(storm: Storm) -> None:
    existing = [f"kill-before-{i}-{uuid.uuid4().hex[:6]}" for i in range(40)]
    cancel: list[Any] = []
    for key in existing:
        response = await storm.start(key)
        assert response.status_code == 201, response.text
        cancel.append((response.json()["id"], response.json()["version"]))
    storm.starts.clear()
    storm.answers.clear()

    stop = asyncio.Event()
    killer = asyncio.create_task(kill_sessions(storm, stop))
    clients = [asyncio.create_task(client_loop(storm, stop, existing, cancel)) for _ in range(6)]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
        storm.answers[503] >= 60 and storm.answers[201] >= 40 and len(storm.cancels) >= 30
    ):
        await asyncio.sleep(0.2)
    stop.set()
    await asyncio.gather(killer, *clients)

    assert storm.bad == [], storm.bad
    assert storm.answers[503] >= 20 and storm.answers[201] >= 20, (storm.answers, storm.killed)

    connection = await asyncpg.connect(f"{ADMIN_DSN.rsplit('/', 1)[0]}/{storm.database}")
    try:
        rows = {
            r["id"]: r
            for r in await connection.fetch(
                "SELECT id, state, status, version FROM sagas WHERE key LIKE 'kill-%'"
            )
        }
        timers = {
            (r["saga_id"], r["kind"]): r
            for r in await connection.fetch("SELECT saga_id, kind, state, due_at, version FROM deadlines")
        }
    finally:
        await connection.close()

    for key, responses in storm.starts.items():
        saga_id = saga_id_for("order", key)
        for response in responses:
            if response.status_code not in (200, 201):
                continue
            assert saga_id in rows, f"{key} answered {response.status_code} but is not in the database"
            body = response.json()
            assert body["id"] == saga_id, key
            assert (body["note"] is None) == (body["timers"] is not None), body
            if response.status_code == 201:  # nothing moved it since: the answer is the row
                row = rows[saga_id]
                assert body["note"] is None, body
                assert (body["state"], body["status"], body["version"]) == (
                    row["state"],
                    row["status"],
                    row["version"],
                ), key
                answered = {(saga_id, t["kind"]): t for t in body["timers"]}
                stored = {k: v for k, v in timers.items() if k[0] == saga_id}
                assert answered.keys() == stored.keys(), key
                for k, t in answered.items():
                    assert datetime.fromisoformat(t["due_at"]) == stored[k]["due_at"], key
        if [r.status_code for r in responses] == [503] * len(responses) and not key.startswith("kill-before"):
            # never answered but 503: the same start now says whether the first one committed
            again = await retried(storm, key)
            assert again.status_code == (200 if saga_id in rows else 201), (key, again.text)

    for saga_id, (version, response) in storm.cancels.items():
        row = rows[saga_id]
        if response.status_code == 200:
            assert (response.json()["version"], response.json()["status"]) == (row["version"], row["status"])
            assert row["version"] == version + 1
        else:
            assert response.status_code == 503, response.text
            assert row["version"] in (version, version + 1)  # cut off before, or during, its commit


async def retried(storm: Storm, key: str) -> httpx.Response:
    """The same start again, now that nothing kills sessions (a pooled connection that was killed
    may still fail the first try: a client retries a 503)."""
    for _ in range(5):
        response = await storm.client.post("/sagas", json={"workflow": "order", "key": key, "data": ORDER})
        if response.status_code != 503:
            return response
        await asyncio.sleep(0.1)
    return response
