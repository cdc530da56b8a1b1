"""The REST API when the database fails mid-request, at each point of a start, an action and a
read: before the commit it is a 503 with Retry-After (never a 500), and once the commit went
through the answer is the committed saga (201 or 200), never an error. Against real PostgreSQL
sessions killed mid-request: tests/integration/test_api_session_kills.py."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from sqlalchemy import exc

from orchestrator.adapters.memory import MemoryStore
from orchestrator.adapters.metrics import Metrics
from orchestrator.adapters.postgres.faults import from_database
from orchestrator.adapters.postgres.queries import HistoryRow, Queries, SagaFilter, SagaPage, Timer
from orchestrator.adapters.postgres.store import make_engine
from orchestrator.core.engine import OutgoingCommand, SagaSnapshot, saga_id_for
from orchestrator.core.routing import Registry
from orchestrator.entrypoints.api.app import ApiContext, create_app
from orchestrator.entrypoints.settings import Settings
from orchestrator.examples import WORKFLOWS
from orchestrator.service.bus import MessageBus
from orchestrator.service.faults import Fault
from orchestrator.service.store import Changes, DueDeadline

ORDER = {"customer_id": "c-1", "lines": [{"sku": "sku-1", "quantity": 1}], "amount_cents": 1200}


class _Adapted(Exception):
    """What SQLAlchemy's asyncpg dialect puts in ``.orig``: the driver's error as its cause."""


def wrapped(kind: type[exc.DBAPIError], driver_error: Exception) -> exc.DBAPIError:
    orig = _Adapted(f"{type(driver_error)}: {driver_error}")
    orig.sqlstate = getattr(driver_error, "sqlstate", None)  # type: ignore[attr-defined]
    orig.__cause__ = driver_error
    return kind("SELECT 1", None, orig)


def rollback_after(first: Exception) -> Exception:
    """A session killed mid-statement: the rollback fails too, with the first failure as context."""
    error = asyncpg.InternalClientError("cannot switch to state 15; another operation is in progress")
    error.__context__ = first
    return error


ERRORS = {
    "internal client error": asyncpg.InternalClientError(
        "cannot switch to state 15; another operation is in progress"
    ),
    "failed rollback": rollback_after(asyncpg.ConnectionDoesNotExistError("connection was closed")),
    "driver interface error": asyncpg.InterfaceError("cannot perform operation: connection is closed"),
    "admin shutdown": asyncpg.AdminShutdownError("terminating connection due to administrator command"),
    "DBAPIError(admin shutdown)": wrapped(exc.DBAPIError, asyncpg.AdminShutdownError("terminating")),
    "InternalError(internal client error)": wrapped(
        exc.InternalError, asyncpg.InternalClientError("cannot switch to state 15")
    ),
    "OperationalError(connection gone)": wrapped(
        exc.OperationalError, asyncpg.ConnectionDoesNotExistError("connection was closed")
    ),
    "InterfaceError(closed)": wrapped(exc.InterfaceError, asyncpg.InterfaceError("connection is closed")),
    "connection reset": ConnectionResetError(104, "Connection reset by peer"),
    "deadlock": asyncpg.DeadlockDetectedError("deadlock detected"),
}
each_error = pytest.mark.parametrize("error", list(ERRORS.values()), ids=list(ERRORS))


class Faults:
    """Where the next requests fail, and with what; each point fails ``times`` times."""

    def __init__(self) -> None:
        self.at: dict[str, tuple[BaseException, int]] = {}
        self.hit: list[str] = []

    def fail(self, point: str, error: BaseException, times: int = 1_000_000) -> None:
        self.at[point] = (error, times)

    def check(self, point: str) -> None:
        if point in self.at:
            error, times = self.at[point]
            self.at[point] = (error, times - 1)
            if times <= 1:
                del self.at[point]
            self.hit.append(point)
            raise error


class _Transaction:
    def __init__(self, inner: Any, faults: Faults) -> None:
        self.inner, self.faults = inner, faults

    async def lock_sagas(self, saga_ids: Iterable[str]) -> dict[str, SagaSnapshot]:
        self.faults.check("lock")
        return await self.inner.lock_sagas(saga_ids)  # type: ignore[no-any-return]

    async def read_batch(self, saga_ids: Iterable[str], message_ids: Iterable[str]) -> Any:
        return await self.inner.read_batch(saga_ids, message_ids)

    async def tombstones(self, saga_ids: Iterable[str]) -> Any:
        return await self.inner.tombstones(saga_ids)

    async def claim_due(self, now: datetime, limit: int, workflows: Any = None) -> list[DueDeadline]:
        return await self.inner.claim_due(now, limit, workflows)  # type: ignore[no-any-return]

    async def save(self, changes: Changes) -> None:
        self.faults.check("save")
        await self.inner.save(changes)


class FaultyStore(MemoryStore):
    """The memory store with a database that fails where told: ``begin`` (no connection),
    ``lock``, ``save``, ``commit`` (the commit failed: nothing stays), ``committed`` (the commit
    went through, but its answer was lost with the connection), and the reads."""

    def __init__(self, faults: Faults) -> None:
        super().__init__()
        self.faults = faults

    def _state(self) -> dict[str, Any]:
        names = ("sagas", "journals", "outbox", "inbox", "deadlines")
        return {name: copy.deepcopy(getattr(self, name)) for name in names}

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:  # type: ignore[override]
        self.faults.check("begin")
        async with super().transaction() as tx:
            before = self._state()
            try:
                yield _Transaction(tx, self.faults)
                self.faults.check("commit")
            except BaseException:
                vars(self).update(before)  # rolled back
                raise
        self.faults.check("committed")  # after the memory store's commit, which an error undoes

    async def get_saga(self, saga_id: str) -> SagaSnapshot | None:
        self.faults.check("read")
        return await super().get_saga(saga_id)

    async def snapshot(self, saga_id: str) -> Any:
        self.faults.check("read")
        return await super().snapshot(saga_id)


class FaultyQueries(Queries):
    def __init__(self, store: FaultyStore) -> None:
        super().__init__(make_engine("postgresql+asyncpg://postgres@127.0.0.1:1/none", 1))
        self.store = store

    async def timers(self, saga_id: str) -> list[Timer]:
        self.store.faults.check("timers")
        return sorted(
            (
                Timer(kind, deadline.state, deadline.due_at, version)
                for (found, kind), (deadline, version) in self.store.deadlines.items()
                if found == saga_id
            ),
            key=lambda t: t.due_at,
        )

    async def sagas(self, f: SagaFilter, limit: int, cursor: str | None = None) -> SagaPage:
        self.store.faults.check("list")
        return SagaPage([], None)

    async def history(self, saga_id: str, after: int, limit: int) -> list[HistoryRow]:
        self.store.faults.check("history")
        return []

    async def exists(self, saga_id: str) -> bool:
        return saga_id in self.store.sagas


@dataclass
class Api:
    client: httpx.AsyncClient
    context: ApiContext
    store: FaultyStore
    faults: Faults
    relay: Relayed

    @property
    def dispatched(self) -> list[list[OutgoingCommand]]:
        return self.relay.handed

    async def start(self, key: str) -> httpx.Response:
        return await self.client.post("/sagas", json={"workflow": "order", "key": key, "data": ORDER})

    def saga(self, key: str) -> SagaSnapshot | None:
        return self.store.sagas.get(saga_id_for("order", key))


class Relayed:
    """The bus's outlet for committed commands: what each commit handed on, or a relay gone."""

    def __init__(self) -> None:
        self.handed: list[list[OutgoingCommand]] = []
        self.broken = False

    def submit(self, commands: Iterable[OutgoingCommand], received_at: float | None = None) -> None:
        if self.broken:
            raise RuntimeError("relay gone")
        self.handed.append(list(commands))


@pytest_asyncio.fixture
async def api() -> AsyncIterator[Api]:
    faults = Faults()
    store = FaultyStore(faults)
    relay = Relayed()
    registry = Registry(WORKFLOWS)
    metrics = Metrics(process=False)
    context = ApiContext(
        registry,
        store,
        FaultyQueries(store),
        replace(Settings(), api_token=None),
        metrics,
        bus=MessageBus(registry, store, outbox=relay, counts=metrics, clock=lambda: datetime.now(UTC)),
    )
    app = create_app(context)
    # Whatever escapes as an error is answered 500 here, as uvicorn would, instead of raised.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield Api(client, context, store, faults, relay)
    await context.queries.engine.dispose()


def unavailable(response: httpx.Response) -> bool:
    return (
        response.status_code == 503
        and response.headers.get("Retry-After") == "5"
        and response.json()["detail"] == "the database is unavailable; try again"
    )


@each_error
def test_every_database_failure_is_told_from_a_bug(error: Exception) -> None:
    assert from_database(error) is not None
    assert from_database(RuntimeError("a bug")) is None
    assert from_database(KeyError("data")) is None


@pytest.mark.parametrize("error", [e for n, e in ERRORS.items() if n != "deadlock"])
def test_a_broken_session_is_the_database_unavailable(error: Exception) -> None:
    assert from_database(error) is Fault.UNAVAILABLE


@each_error
@pytest.mark.parametrize("point", ["begin", "lock", "save", "commit"])
async def test_a_start_that_fails_before_its_commit_is_a_503_and_started_nothing(
    api: Api, point: str, error: Exception
) -> None:
    api.faults.fail(point, error)  # the first try and start_saga's second one both fail

    response = await api.start("o-1")

    assert unavailable(response), response.text
    assert api.saga("o-1") is None and api.store.outbox == {} and api.dispatched == []
    assert api.faults.hit == [point, point]


@each_error
@pytest.mark.parametrize("point", ["begin", "lock", "save", "commit"])
async def test_a_start_that_fails_once_before_its_commit_is_tried_again_and_started(
    api: Api, point: str, error: Exception
) -> None:
    api.faults.fail(point, error, times=1)

    response = await api.start("o-1")

    assert response.status_code == 201, response.text
    assert api.saga("o-1") is not None and len(api.dispatched) == 1


@each_error
async def test_a_start_whose_commit_went_through_unanswered_answers_that_the_saga_exists(
    api: Api, error: Exception
) -> None:
    api.faults.fail("committed", error, times=1)

    response = await api.start("o-1")

    saga = api.saga("o-1")
    assert saga is not None
    assert response.status_code == 200, response.text  # the second try found the first one's saga
    assert (response.json()["id"], response.json()["version"]) == (saga.id, saga.version)
    assert [t["kind"] for t in response.json()["timers"]] == ["deadline"]  # read after the commit
    assert list(api.store.outbox) == [c["message_id"] for c in response.json()["awaiting"]]  # to be swept


@each_error
async def test_a_start_whose_commit_went_through_and_whose_retry_fails_is_a_503_then_200(
    api: Api, error: Exception
) -> None:
    api.faults.fail("committed", error, times=1)
    api.faults.fail("begin", error, times=1)  # start_saga's second try cannot even connect

    failed = await api.start("o-1")
    again = await api.start("o-1")

    assert unavailable(failed), failed.text
    assert api.saga("o-1") is not None  # it did commit: the same start again says so
    assert again.status_code == 200 and again.json()["id"] == saga_id_for("order", "o-1")


@each_error
@pytest.mark.parametrize("point", ["timers", "read"])
async def test_a_start_that_committed_is_a_201_from_its_commit_whatever_fails_after(
    api: Api, point: str, error: Exception
) -> None:
    api.faults.fail(point, error)

    response = await api.start("o-1")

    saga = api.saga("o-1")
    assert saga is not None
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["id"], body["state"], body["version"], body["note"]) == (saga.id, "reserve", 1, None)
    assert response.headers["Location"] == f"/sagas/{saga.id}"
    [(deadline, version)] = api.store.deadlines.values()
    assert body["timers"] == [
        {
            "kind": "deadline",
            "state": deadline.state,
            "due_at": body["timers"][0]["due_at"],
            "version": version,
        }
    ]
    assert datetime.fromisoformat(body["timers"][0]["due_at"]) == deadline.due_at
    assert len(api.dispatched) == 1


async def test_a_start_whose_commands_cannot_be_handed_over_is_still_a_201(api: Api) -> None:
    api.relay.broken = True

    response = await api.start("o-1")

    assert response.status_code == 201, response.text
    assert api.saga("o-1") is not None and list(api.store.outbox)  # the outbox sweep sends them


@each_error
async def test_an_existing_saga_whose_timers_cannot_be_read_is_a_200_with_a_note(
    api: Api, error: Exception
) -> None:
    assert (await api.start("o-1")).status_code == 201
    api.faults.fail("timers", error)

    response = await api.start("o-1")

    assert response.status_code == 200, response.text
    assert response.json()["timers"] is None
    assert "timers could not be read" in response.json()["note"]


@each_error
@pytest.mark.parametrize("point", ["begin", "lock", "save", "commit"])
async def test_an_action_that_fails_before_its_commit_is_a_503_and_changed_nothing(
    api: Api, point: str, error: Exception
) -> None:
    saga = (await api.start("o-1")).json()
    before = api.saga("o-1")
    api.faults.fail(point, error)

    response = await api.client.post(f"/sagas/{saga['id']}/cancel", json={"reason": "r"})

    assert unavailable(response), response.text
    assert api.saga("o-1") == before


@each_error
async def test_an_action_that_committed_answers_200_whatever_fails_after(api: Api, error: Exception) -> None:
    saga = (await api.start("o-1")).json()
    api.faults.fail("timers", error)

    response = await api.client.post(f"/sagas/{saga['id']}/cancel", json={"reason": "r"})

    after = api.saga("o-1")
    assert after is not None and after.version == saga["version"] + 1
    assert response.status_code == 200, response.text
    assert (response.json()["version"], response.json()["status"]) == (after.version, str(after.status))
    assert response.json()["timers"] is None and response.json()["note"]


ACTIONS = {
    "retry": {},
    "cancel": {},
    "resume": {},  # a running saga cannot be resumed: refused before it writes
    "fire-deadline": {},
    "skip": {"outcome": "inventory.StockReserved", "data": {"reservation_id": "r-1"}},
}


@pytest.mark.parametrize(
    ("action", "body", "point"),
    [
        (action, body, point)
        for action, body in ACTIONS.items()
        for point in ("begin", "lock", "save", "commit")
        if action != "resume" or point in ("begin", "lock")
    ],
)
async def test_every_action_the_database_fails_is_a_503(
    api: Api, action: str, body: dict[str, Any], point: str
) -> None:
    saga = (await api.start("o-1")).json()
    api.faults.fail(point, ERRORS["InternalError(internal client error)"])

    response = await api.client.post(f"/sagas/{saga['id']}/{action}", json=body or None)

    assert unavailable(response), response.text


@each_error
@pytest.mark.parametrize(
    ("point", "path"),
    [
        ("read", "/sagas/{id}"),
        ("timers", "/sagas/{id}"),
        ("list", "/sagas"),
        ("history", "/sagas/{id}/history"),
        ("read", "/sagas/{id}/state?at=2030-01-01T00:00:00Z"),
    ],
)
async def test_a_read_the_database_fails_is_a_503(api: Api, point: str, path: str, error: Exception) -> None:
    saga = (await api.start("o-1")).json()
    api.faults.fail(point, error)

    response = await api.client.get(path.format(id=saga["id"]))

    assert unavailable(response), response.text


async def test_a_bug_is_still_a_500(api: Api) -> None:
    api.faults.fail("read", RuntimeError("a bug"))

    response = await api.client.get(f"/sagas/{saga_id_for('order', 'o-1')}")

    assert response.status_code == 500
