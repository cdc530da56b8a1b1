"""Operators and late confirmations over the REST API against the real PostgreSQL (issue 11,
items 5-8): a step saga failed on its compensation's deadline resumes without a step, re-sending
the cancel with its message id; a late confirmation carries such a saga on; the rows replay."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio

from orchestrator.adapters.metrics import Metrics
from orchestrator.adapters.postgres.queries import Queries
from orchestrator.adapters.postgres.store import PostgresStore
from orchestrator.core.engine import OutgoingCommand, reply_id_for
from orchestrator.core.replay import differences, replay
from orchestrator.core.routing import Registry
from orchestrator.entrypoints.api.app import ApiContext, create_app
from orchestrator.entrypoints.settings import Settings
from orchestrator.service.batch import Envelope, process_batch
from orchestrator.service.bus import MessageBus
from tests.outlets import Handed, Handing
from tests.replies import answered_command
from tests.unit.test_late_confirmations import WORKFLOW, FlightBooked, FlightCancelled

from .conftest import migrated_database

pytestmark = pytest.mark.integration

TOKEN = "late-confirmations-token"


class Api:
    def __init__(
        self, client: httpx.AsyncClient, context: ApiContext, store: PostgresStore, dispatched: list[Handed]
    ) -> None:
        self.client, self.context, self.store = client, context, store
        self.dispatched = dispatched

    async def act(self, saga_id: str, action: str, **body: Any) -> dict[str, Any]:
        response = await self.client.post(
            f"/sagas/{saga_id}/{action}", json=body or None, headers={"X-Actor": "alice"}
        )
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    async def reply(self, saga_id: str, type_: str, payload: dict[str, Any]) -> None:
        """The participant's reply to the command the saga waits on (or else its last)."""
        command = await answered_command(self.store, saga_id)
        envelope = Envelope(orjson.dumps(payload), type_, reply_id_for(command, type_), saga_id)
        await process_batch(self.context.registry, self.store, [envelope], datetime.now(UTC))

    def last_commands(self) -> list[OutgoingCommand]:
        return self.dispatched[-1].commands

    async def replays(self, saga_id: str) -> list[str]:
        row = await self.store.get_saga(saga_id)
        return differences(
            row, replay(self.context.registry.workflows["trip"], await self.store.journal(saga_id))
        )


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """A database of its own: its ``trip`` workflow is unknown to the session's ``verify``."""
    with migrated_database() as url:
        yield url


@pytest_asyncio.fixture
async def api(database_url: str) -> AsyncIterator[Api]:
    store = PostgresStore.from_url(database_url, pool_size=2)
    dispatched: list[Handed] = []
    registry, metrics = Registry([WORKFLOW]), Metrics(process=False)
    context = ApiContext(
        registry,
        store,
        Queries(store.engine),
        replace(Settings(), api_token=TOKEN),
        metrics,
        bus=MessageBus(
            registry, store, outbox=Handing(dispatched), counts=metrics, clock=lambda: datetime.now(UTC)
        ),
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(context)),
        base_url="http://127.0.0.1",
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as client:
        harness = Api(client, context, store, dispatched)
        yield harness
    await store.close()


async def failed_on_the_cancel_deadline(api: Api) -> tuple[str, str, OutgoingCommand]:
    key = f"trip-{uuid.uuid4().hex[:10]}"
    started = await api.client.post("/sagas", json={"workflow": "trip", "key": key, "data": {"city": "Oslo"}})
    assert started.status_code == 201, started.text
    saga_id = started.json()["id"]
    await api.reply(saga_id, FlightBooked.TYPE, {"trip_id": key})
    assert (await api.act(saga_id, "fire-deadline"))["state"] == "compensating_flight"
    (cancel,) = api.last_commands()
    failed = await api.act(saga_id, "fire-deadline", reason="no answer from flights")
    assert (failed["state"], failed["status"], failed["timed_out"]) == (
        "failed",
        "failed",
        ["charge", "compensating_flight"],
    )
    return saga_id, key, cancel


async def test_resume_without_a_step_resends_the_cancel_with_its_message_id(api: Api) -> None:
    saga_id, _, cancel = await failed_on_the_cancel_deadline(api)

    resumed = await api.act(saga_id, "resume")

    assert (resumed["state"], resumed["status"], resumed["timed_out"]) == (
        "compensating_flight",
        "compensating",
        ["charge"],
    )
    assert [(c.type, c.message_id) for c in api.last_commands()] == [(cancel.type, cancel.message_id)]
    fresh = await api.act(saga_id, "retry", new_attempt=True)
    assert fresh["attempt"] == 1
    assert [c.message_id for c in api.last_commands()] != [cancel.message_id]
    assert await api.replays(saga_id) == []


async def test_a_late_confirmation_of_the_cancel_compensates_the_failed_saga(api: Api) -> None:
    saga_id, key, _ = await failed_on_the_cancel_deadline(api)

    await api.reply(saga_id, FlightCancelled.TYPE, {"trip_id": key})

    saga = (await api.client.get(f"/sagas/{saga_id}")).json()
    assert (saga["state"], saga["status"], saga["last_error"]) == ("compensated", "compensated", None)
    history = (await api.client.get(f"/sagas/{saga_id}/history")).json()["items"]
    assert (history[-1]["outcome"], history[-1]["from_state"]) == ("moved", "failed")
    assert await api.replays(saga_id) == []
