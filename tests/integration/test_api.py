"""The REST API in process (httpx over ASGI) against the real PostgreSQL: reads, starts, operator
actions, refusals, bad input and the token. The end-to-end run through ``orchestrator run`` is in
``test_api_e2e.py``."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import delete

from orchestrator.adapters.metrics import Metrics
from orchestrator.adapters.postgres.queries import Queries
from orchestrator.adapters.postgres.schema import deadlines
from orchestrator.adapters.postgres.store import PostgresStore
from orchestrator.core.definitions import FAIL, Status, Workflow
from orchestrator.core.routing import Registry
from orchestrator.entrypoints.api.app import ApiContext, create_app
from orchestrator.entrypoints.settings import Settings
from orchestrator.entrypoints.tokens import parse_env
from orchestrator.examples import WORKFLOWS
from orchestrator.examples.contracts import BuyerSigned, EscrowOpened, RequestBuyerSignature
from orchestrator.service.batch import process_batch
from orchestrator.service.bus import MessageBus
from tests.outlets import Handed, Handing
from tests.replies import answer

from .conftest import migrated_database

pytestmark = pytest.mark.integration

TOKEN = "in-process-token"
ORDER = {"customer_id": "c-1", "lines": [{"sku": "sku-1", "quantity": 1}], "amount_cents": 1200}

# Unexpected events fail it: the way to a failed saga, to resume.
strict = Workflow("strict", starts_on=EscrowOpened, key="escrow_id", unexpected=FAIL)
strict.state("signing", send=RequestBuyerSignature, deadline=timedelta(hours=1), on_deadline="given_up")
strict.state("waiting", send=RequestBuyerSignature)
strict.state("signed", final=True)
strict.state("given_up", final=True, status=Status.COMPENSATED)
strict.on(BuyerSigned, source="waiting", dest="signed")


@dataclass
class Harness:
    client: httpx.AsyncClient
    context: ApiContext
    store: PostgresStore
    dispatched: list[Handed] = field(default_factory=list)
    offset: timedelta = timedelta(0)

    def key(self) -> str:
        return f"api-{uuid.uuid4().hex[:12]}"

    async def start(self, workflow: str = "order", key: str | None = None, **headers: str) -> dict[str, Any]:
        data = ORDER if workflow == "order" else {"buyer_id": "b", "seller_id": "s", "amount_cents": 10}
        response = await self.client.post(
            "/sagas", json={"workflow": workflow, "key": key or self.key(), "data": data}, headers=headers
        )
        assert response.status_code == 201, response.text
        return response.json()  # type: ignore[no-any-return]

    async def act(self, saga: dict[str, Any], action: str, **body: Any) -> httpx.Response:
        return await self.client.post(
            f"/sagas/{saga['id']}/{action}", json=body or None, headers={"X-Actor": "alice"}
        )


def app_for(store: PostgresStore, dispatched: list[Handed], **settings: Any) -> tuple[ApiContext, Any]:
    registry, metrics = Registry([*WORKFLOWS, strict]), Metrics(process=False)
    clock: list[Callable[[], datetime]] = []
    bus = MessageBus(registry, store, outbox=Handing(dispatched), counts=metrics, clock=lambda: clock[0]())
    context = ApiContext(
        registry,
        store,
        Queries(store.engine),
        replace(Settings(), api_token=TOKEN, **settings),
        metrics,
        bus=bus,
    )
    clock.append(lambda: context.clock())  # the context's clock, as a test sets it
    return context, create_app(context)


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """A database of this module's own: its ``strict`` workflow is unknown to the ``orchestrator
    verify`` that other tests run over the whole session database."""
    with migrated_database() as url:
        yield url


@pytest_asyncio.fixture
async def api(database_url: str) -> AsyncIterator[Harness]:
    store = PostgresStore.from_url(database_url, pool_size=2)
    dispatched: list[Handed] = []
    context, app = app_for(store, dispatched)
    harness = Harness(httpx.AsyncClient(), context, store, dispatched)
    context.clock = lambda: datetime.now(UTC) + harness.offset
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://127.0.0.1",
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as client:
        harness.client = client
        yield harness
    await store.close()


async def test_a_start_is_idempotent_on_the_key_and_hands_its_commands_over(api: Harness) -> None:
    key = api.key()
    body = {"workflow": "order", "key": key, "data": ORDER}

    first = await api.client.post("/sagas", json=body, headers={"X-Actor": "alice"})
    again = await api.client.post("/sagas", json=body)

    assert (first.status_code, again.status_code) == (201, 200)
    saga = first.json()
    assert first.headers["location"] == f"/sagas/{saga['id']}" == again.headers["location"]
    assert again.json()["version"] == saga["version"] == 1
    assert (saga["state"], saga["status"], saga["data"]["order_id"]) == ("reserve", "running", key)
    assert [c.type for a in api.dispatched for c in a.commands] == ["inventory.ReserveStock"]
    assert [c["type"] for c in saga["awaiting"]] == ["inventory.ReserveStock"]


async def test_a_saga_shows_its_timers_and_the_events_it_waits_for(api: Harness) -> None:
    saga = await api.start()

    got = (await api.client.get(f"/sagas/{saga['id']}")).json()

    assert got["waiting_for"] == ["inventory.OutOfStock", "inventory.StockReserved"]
    [timer] = got["timers"]
    assert (timer["kind"], timer["state"]) == ("deadline", "reserve")
    due = datetime.fromisoformat(timer["due_at"]) - datetime.fromisoformat(got["created_at"])
    assert due == timedelta(seconds=30)


async def test_sagas_list_newest_first_by_filter_and_page_by_cursor(api: Harness) -> None:
    since = datetime.now(UTC).isoformat()
    started = [(await api.start())["id"] for _ in range(5)]
    escrow = await api.start("escrow")

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"workflow": "order", "started_after": since, "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await api.client.get("/sagas", params=params)).json()
        seen += [s["id"] for s in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert seen == started[::-1] and pages == 3
    by_state = await api.client.get("/sagas", params={"state": "awaiting_buyer", "started_after": since})
    assert [s["id"] for s in by_state.json()["items"]] == [escrow["id"]]
    by_key = await api.client.get("/sagas", params={"key": escrow["key"], "status": "running"})
    assert [s["id"] for s in by_key.json()["items"]] == [escrow["id"]]
    none = await api.client.get("/sagas", params={"started_after": since, "status": "completed"})
    assert none.json() == {"items": [], "next_cursor": None}


async def test_operator_actions_go_through_the_engine_and_the_journal_keeps_who_and_why(api: Harness) -> None:
    saga = await api.start(**{"X-Actor": "robot"})

    skipped = await api.act(
        saga, "skip", outcome="inventory.StockReserved", data={"reservation_id": "r-9"}, reason="done by hand"
    )
    cancelled = await api.act(saga, "cancel", reason="customer called")

    assert skipped.status_code == 200, skipped.text
    assert (skipped.json()["state"], skipped.json()["data"]["reservation_id"]) == ("charge", "r-9")
    assert cancelled.status_code == 200, cancelled.text
    assert (cancelled.json()["state"], cancelled.json()["status"]) == ("compensating_reserve", "compensating")
    history = (await api.client.get(f"/sagas/{saga['id']}/history")).json()
    entries = history["items"]
    assert [(e["kind"], e["actor"], e["message"]["type"]) for e in entries] == [
        ("operator", "robot", "orders.OrderPlaced"),
        ("operator", "alice", "operator.skip"),
        ("operator", "alice", "operator.cancel"),
    ]
    assert entries[2]["message"]["payload"] == {"reason": "customer called"}
    assert entries[2]["reason"] == "cancel by alice: customer called"
    assert [c["type"] for c in entries[1]["commands"]] == ["payment.ChargePayment"]
    assert [c["type"] for c in entries[2]["commands"]] == ["inventory.ReleaseStock"]
    # each command with its payload, exactly as it went out
    sent = {c.message_id: dict(c.payload) for a in api.dispatched for c in a.commands}
    assert all(c["payload"] == sent[c["message_id"]] for e in entries for c in e["commands"])
    assert entries[2]["commands"][0]["payload"] == {"order_id": saga["key"]}
    assert (entries[2]["from_state"], entries[2]["to_state"]) == ("charge", "compensating_reserve")
    assert history["next_after"] is None
    assert [c.type for a in api.dispatched[-1:] for c in a.commands] == ["inventory.ReleaseStock"]
    first = (await api.client.get(f"/sagas/{saga['id']}/history", params={"limit": 2})).json()
    rest = (await api.client.get(f"/sagas/{saga['id']}/history", params={"after": 2, "limit": 2})).json()
    assert ([e["seq"] for e in first["items"]], first["next_after"]) == ([1, 2], 2)
    assert ([e["seq"] for e in rest["items"]], rest["next_after"]) == ([3], None)


async def test_the_log_lines_of_a_start_and_an_action_carry_the_saga_and_message_ids(
    api: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="orchestrator.entrypoints.api.app")
    saga = await api.start()
    await api.act(saga, "cancel", reason="customer called")

    lines = [r for r in caplog.records if r.name == "orchestrator.entrypoints.api.app"]
    history = (await api.client.get(f"/sagas/{saga['id']}/history")).json()["items"]
    journaled = [e["message"]["message_id"] for e in history]
    assert [(r.saga_id, r.message_id) for r in lines] == [(saga["id"], m) for m in journaled]  # type: ignore[attr-defined]


async def test_an_action_that_does_not_fit_is_refused_with_409_and_the_reason(api: Harness) -> None:
    saga = await api.start()
    await api.act(saga, "cancel")  # at reserve: nothing was done, so compensated at once

    again = await api.act(saga, "cancel")
    fire = await api.act(saga, "fire-deadline")
    resume = await api.act(saga, "resume")

    assert [r.status_code for r in (again, fire, resume)] == [409, 409, 409]
    assert again.json()["detail"] == "saga is already compensated"
    assert "only a failed saga resumes" in resume.json()["detail"]
    history = (await api.client.get(f"/sagas/{saga['id']}/history")).json()["items"]
    assert len(history) == 2  # a refused action writes nothing


async def test_fire_deadline_and_retry_now(api: Harness) -> None:
    saga = await api.start()

    retried = await api.act(saga, "retry", reason="inventory was down")
    fired = await api.act(saga, "fire-deadline")

    assert retried.status_code == 200 and retried.json()["state"] == "reserve"
    assert [c.type for c in api.dispatched[-2].commands] == ["inventory.ReserveStock"]
    assert fired.status_code == 200, fired.text
    assert (fired.json()["state"], fired.json()["timed_out"], fired.json()["timers"]) == (
        "compensated",
        ["reserve"],
        [],
    )


async def test_a_failed_saga_resumes_from_a_chosen_step(api: Harness) -> None:
    saga = await api.start("strict")
    envelope = await answer(api.store, BuyerSigned(saga["key"]), saga["id"])  # not expected yet: fails it
    await process_batch(api.context.registry, api.store, [envelope], datetime.now(UTC))
    failed = (await api.client.get(f"/sagas/{saga['id']}")).json()
    assert (failed["status"], failed["waiting_for"]) == ("failed", [])

    unknown = await api.act(saga, "resume", step="nowhere")
    resumed = await api.act(saga, "resume", step="waiting", reason="signed on paper")

    assert unknown.status_code == 422 and "nowhere" in unknown.json()["detail"]
    assert resumed.status_code == 200, resumed.text
    body = resumed.json()
    assert (body["state"], body["status"], body["last_error"]) == ("waiting", "running", None)
    assert body["waiting_for"] == [BuyerSigned.TYPE]


async def test_the_state_at_a_time_is_rebuilt_from_the_journal(api: Harness) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    saga = await api.start()
    between = datetime.now(UTC)
    await api.act(saga, "skip", outcome="inventory.StockReserved", data={"reservation_id": "r-1"})

    early = await api.client.get(f"/sagas/{saga['id']}/state", params={"at": before.isoformat()})
    then = await api.client.get(f"/sagas/{saga['id']}/state", params={"at": between.isoformat()})
    now = await api.client.get(
        f"/sagas/{saga['id']}/state", params={"at": datetime.now(UTC).replace(tzinfo=None).isoformat()}
    )

    assert early.status_code == 404 and "did not exist yet" in early.json()["detail"]
    assert (then.json()["state"], then.json()["seq"], then.json()["version"]) == ("reserve", 1, 1)
    assert (now.json()["state"], now.json()["seq"], now.json()["data"]["reservation_id"]) == (
        "charge",
        2,
        "r-1",
    )


async def test_stuck_sagas_are_listed_and_counted(api: Harness) -> None:
    lost = await api.start()
    timed = await api.start()
    async with api.store.engine.begin() as connection:  # its timers lost, as a bug might lose them
        await connection.execute(delete(deadlines).where(deadlines.c.saga_id == lost["id"]))

    fresh = (await api.client.get("/sagas", params={"stuck": "true", "limit": 500})).json()
    api.offset = timedelta(seconds=api.context.settings.stuck_after_seconds + 1)
    later = (await api.client.get("/sagas", params={"stuck": "true", "limit": 500})).json()
    metrics = (await api.client.get("/metrics")).text

    assert lost["id"] not in [s["id"] for s in fresh["items"]]
    stuck = [s["id"] for s in later["items"]]
    assert lost["id"] in stuck and timed["id"] not in stuck
    # The metric counts what the list shows at the same moment, ``lost`` among them, per state.
    counted = {
        line.split('state="', 1)[1].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("orchestrator_stuck_sagas{") and 'workflow="order"' in line
    }
    listed = [s for s in later["items"] if s["workflow"] == "order"]
    assert counted == {state: float(len([s for s in listed if s["state"] == state])) for state in counted}
    assert sum(counted.values()) == len(listed) and lost["state"] in counted


async def test_workflows_show_their_definition_diagram_and_live_counts(api: Harness) -> None:
    await api.start("escrow")

    listed = (await api.client.get("/workflows")).json()
    escrow = (await api.client.get("/workflows/escrow")).json()
    missing = await api.client.get("/workflows/nope")

    assert [w["name"] for w in listed] == ["escrow", "order", "strict"]
    assert escrow["mermaid"].startswith("stateDiagram-v2\n")
    assert "awaiting_buyer --> awaiting_seller: buyer.BuyerSigned" in escrow["mermaid"]
    states = {s["name"]: s for s in escrow["states"]}
    assert states["awaiting_buyer"]["sagas"] >= 1 and states["awaiting_buyer"]["initial"]
    assert states["awaiting_buyer"]["sends"] == ["buyer.RequestSignature", "seller.RequestSignature"]
    assert states["awaiting_funds"]["deadline_seconds"] == 86400
    assert escrow["sagas"]["running"] >= 1 and escrow["starts_on"] == "escrow.EscrowOpened"
    assert {
        "event": "seller.SellerSigned",
        "source": "awaiting_buyer",
        "dest": None,
        "policy": "park",
        "sends": [],
    } in (escrow["rules"])
    assert missing.status_code == 404


async def test_a_workflow_shows_its_activity_over_a_window_and_its_stuck_sagas(api: Harness) -> None:
    before = (await api.client.get("/workflows/order")).json()["activity"]
    kept = await api.start()
    dropped = await api.start()
    await api.act(dropped, "cancel")  # nothing done yet: compensated at once

    after = (await api.client.get("/workflows/order")).json()["activity"]
    narrow = await api.client.get("/workflows/order", params={"window": 59})
    api.offset = timedelta(days=2)  # past the stuck threshold, and the window, for everything above
    later = (await api.client.get("/workflows/order", params={"window": 60})).json()["activity"]
    stuck = (
        await api.client.get("/sagas", params={"workflow": "order", "stuck": "true", "limit": 500})
    ).json()

    assert after["window_seconds"] == 3600
    assert after["started"] == before["started"] + 2
    assert after["finished"].get("compensated", 0) == before["finished"].get("compensated", 0) + 1
    assert narrow.status_code == 422
    assert (later["started"], later["finished"]) == (0, {})
    assert later["stuck"] == len(stuck["items"]) and stuck["next_cursor"] is None
    assert kept["id"] not in {s["id"] for s in stuck["items"]}  # its step has a pending deadline


async def test_health_readiness_and_metrics(api: Harness) -> None:
    await api.start()

    health = await api.client.get("/healthz")
    ready = await api.client.get("/readyz")
    metrics = await api.client.get("/metrics")

    assert health.json() == {"status": "ok"}
    assert ready.json() == {"status": "ready", "checks": {"database": "ok"}}
    assert metrics.headers["content-type"].startswith("text/plain")
    lines = metrics.text.splitlines()
    assert any(line.startswith('orchestrator_sagas{status="running",workflow="order"}') for line in lines)
    assert 'orchestrator_operator_actions_total{action="start"} 1.0' in lines
    assert "orchestrator_database_up 1.0" in lines
    assert any(line.startswith("orchestrator_outbox_backlog ") for line in lines)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "says"),
    [
        ("GET", "/sagas/not-a-uuid", None, 422, "path.saga_id"),
        ("GET", "/sagas/0b5a7b8e-6d5c-4b7a-9c1e-3f2a1b0c9d8e", None, 404, "no saga"),
        ("GET", "/sagas/0b5a7b8e-6d5c-4b7a-9c1e-3f2a1b0c9d8e/history", None, 404, "no saga"),
        (
            "GET",
            "/sagas/0b5a7b8e-6d5c-4b7a-9c1e-3f2a1b0c9d8e/state?at=2020-01-01T00:00:00Z",
            None,
            404,
            "no saga",
        ),
        ("GET", "/sagas/0b5a7b8e-6d5c-4b7a-9c1e-3f2a1b0c9d8e/state", None, 422, "query.at"),
        ("GET", "/sagas/0b5a7b8e-6d5c-4b7a-9c1e-3f2a1b0c9d8e/state?at=yesterday", None, 422, "query.at"),
        ("GET", "/sagas?workflow=nope", None, 422, "unknown 'nope'"),
        (
            "GET",
            "/sagas?workflow=order&state=awaiting_buyer",
            None,
            422,
            "no state 'awaiting_buyer' in order",
        ),
        ("GET", "/sagas?status=lost", None, 422, "query.status"),
        ("GET", "/sagas?limit=0", None, 422, "query.limit"),
        ("GET", "/sagas?limit=501", None, 422, "query.limit"),
        ("GET", "/sagas?cursor=bm9wZQ", None, 422, "cursor is not one this API handed out"),
        # well-formed, but their times fall outside what PostgreSQL stores once in UTC
        ("GET", "/sagas?cursor=WyIwMDAxLTAxLTAxVDAwOjAwOjAwKzAwOjAxIiwieCJd", None, 422, "cursor is not"),
        ("GET", "/sagas?cursor=WyI5OTk5LTEyLTMxVDIzOjU5OjU5LTE0OjAwIiwieCJd", None, 422, "cursor is not"),
        ("GET", "/sagas?started_after=soon", None, 422, "query.started_after"),
        ("GET", "/sagas?updated_before=0001-01-01T00:00:00%2B05:00", None, 422, "out of range"),
        ("GET", "/sagas?key=a%00b", None, 422, "NUL"),
        ("GET", "/sagas?stuck=perhaps", None, 422, "query.stuck"),
        ("GET", "/sagas/0b5a7b8e-6d5c-4b7a-9c1e-3f2a1b0c9d8e/history?after=-1", None, 422, "query.after"),
        ("POST", "/sagas", b"{not json", 422, "body: not valid JSON: "),
        ("POST", "/sagas", b"\xff\xfe", 422, "body: not valid JSON"),
        ("POST", "/sagas", {"workflow": "nope", "key": "k"}, 422, "unknown workflow 'nope'"),
        ("POST", "/sagas", {"workflow": "order", "key": ""}, 422, "body.key"),
        (
            "POST",
            "/sagas",
            {"workflow": "order", "key": "k", "data": {}},
            422,
            "does not fit orders.OrderPlaced",
        ),
        ("POST", "/sagas", {"workflow": "order", "key": "k\u0000"}, 422, "NUL"),
        ("POST", "/sagas", {"workflow": "order", "key": "k", "data": {"x": "\u0000"}}, 422, "data.x"),
        ("POST", "/sagas", {"workflow": "order", "key": "k", "data": {"x": 2**70}}, 422, "beyond 64 bits"),
        ("POST", "/sagas", {"workflow": "order", "key": "k", "extra": 1}, 422, "body.extra"),
        ("POST", "/sagas", [1, 2], 422, "body"),
        ("POST", "/sagas/0b5a7b8e-6d5c-4b7a-9c1e-3f2a1b0c9d8e/cancel", None, 404, "no saga"),
        ("POST", "/sagas/0b5a7b8e-6d5c-4b7a-9c1e-3f2a1b0c9d8e/skip", {}, 422, "body.outcome"),
        ("POST", "/sagas/0b5a7b8e-6d5c-4b7a-9c1e-3f2a1b0c9d8e/cancel", {"reason": 5}, 422, "body.reason"),
    ],
)
async def test_bad_input_is_a_4xx_that_says_what_is_wrong(
    api: Harness, method: str, path: str, body: Any, status: int, says: str
) -> None:
    if isinstance(body, bytes):
        response = await api.client.request(
            method, path, content=body, headers={"content-type": "application/json"}
        )
    else:
        response = await api.client.request(method, path, json=body)

    assert response.status_code == status, response.text
    assert says in response.json()["detail"]


async def test_an_actor_header_that_is_not_printable_is_refused(api: Harness) -> None:
    response = await api.client.post(
        "/sagas", json={"workflow": "order", "key": api.key(), "data": ORDER}, headers={"X-Actor": " padded "}
    )

    assert response.status_code == 422 and "X-Actor" in response.json()["detail"]


async def test_actions_and_reads_need_the_token_unless_reads_are_opened(
    api: Harness, database_url: str
) -> None:
    saga = await api.start()
    transport = api.client._transport

    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as anonymous:
        start = await anonymous.post("/sagas", json={"workflow": "order", "key": api.key(), "data": ORDER})
        cancel = await anonymous.post(f"/sagas/{saga['id']}/cancel", headers={"Authorization": "Bearer nope"})
        read = await anonymous.get(f"/sagas/{saga['id']}")

        metrics = await anonymous.get("/metrics")
        health = await anonymous.get("/healthz")

    assert (start.status_code, cancel.status_code, read.status_code, metrics.status_code) == (401,) * 4
    assert start.headers["www-authenticate"].startswith("Bearer") and health.status_code == 200
    assert (await api.client.get(f"/sagas/{saga['id']}")).json()["state"] == "reserve"

    _, opened = app_for(api.store, [], api_open_reads=True)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=opened), base_url="http://127.0.0.1"
    ) as anonymous:
        assert (await anonymous.get(f"/sagas/{saga['id']}")).json()["state"] == "reserve"
        assert (await anonymous.get("/metrics")).status_code == 200
        refused = await anonymous.post(f"/sagas/{saga['id']}/cancel")
        assert refused.status_code == 401


async def test_a_named_token_is_journaled_as_its_owner_whatever_x_actor_says(api: Harness) -> None:
    tokens = parse_env(f"alice:operate:{'a' * 24} robot:read:{'r' * 24}")
    _, named = app_for(api.store, [], api_tokens=tuple(tokens))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=named), base_url="http://127.0.0.1"
    ) as client:
        alice = {"Authorization": f"Bearer {'a' * 24}", "X-Actor": "mallory"}
        started = await client.post(
            "/sagas", json={"workflow": "order", "key": api.key(), "data": ORDER}, headers=alice
        )
        saga = started.json()
        refused = await client.post(
            f"/sagas/{saga['id']}/retry", headers={"Authorization": f"Bearer {'r' * 24}"}
        )
        legacy = await client.post(
            f"/sagas/{saga['id']}/retry", headers={"Authorization": f"Bearer {TOKEN}", "X-Actor": "ops-desk"}
        )
        cancelled = await client.post(f"/sagas/{saga['id']}/cancel", json={"reason": "asked"}, headers=alice)
        history = (await client.get(f"/sagas/{saga['id']}/history", headers=alice)).json()["items"]

    assert (started.status_code, refused.status_code, legacy.status_code) == (201, 403, 200)
    assert cancelled.status_code == 200, cancelled.text
    assert [(e["actor"], e["message"]["type"]) for e in history] == [
        ("alice", "orders.OrderPlaced"),
        ("ops-desk", "operator.retry"),  # the unnamed token's caller still names itself
        ("alice", "operator.cancel"),
    ]
    assert history[2]["reason"] == "cancel by alice: asked"
