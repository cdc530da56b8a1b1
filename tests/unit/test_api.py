"""The REST API with no database behind it: its schema, the token, bad input, and an outage
that is a 503 (never a 500). The API against the real database is in tests/integration."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from sqlalchemy.exc import TimeoutError as PoolTimeout

from orchestrator.adapters.metrics import Metrics
from orchestrator.adapters.postgres.queries import Queries
from orchestrator.adapters.postgres.store import PostgresStore
from orchestrator.core.routing import Registry
from orchestrator.entrypoints.api.app import ApiContext, create_app
from orchestrator.entrypoints.settings import Settings, SettingsError
from orchestrator.examples import WORKFLOWS

NOWHERE = "postgresql+asyncpg://postgres@127.0.0.1:1/none"
SAGA = "/sagas/0b5a7b8e-6d5c-4b7a-9c1e-3f2a1b0c9d8e"


def build(**settings: Any) -> tuple[ApiContext, Any]:
    store = PostgresStore.from_url(NOWHERE, pool_size=1)
    context = ApiContext(
        Registry(WORKFLOWS),
        store,
        Queries(store.engine),
        replace(Settings(), **settings),
        Metrics(process=False),
    )
    return context, create_app(context)


@pytest_asyncio.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """A client of an API whose token it holds (reads need one too)."""
    context, app = build(api_token="t0ken")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://127.0.0.1",
        headers={"Authorization": "Bearer t0ken"},
    ) as made:
        yield made
    await context.store.close()


def test_the_schema_documents_the_token_and_every_error_answer() -> None:
    _, app = build(api_token="t0ken")
    schema = app.openapi()

    assert schema["components"]["securitySchemes"]["token"] == {
        "type": "http",
        "description": "a named token (ORCHESTRATOR_API_TOKENS or _FILE), or ORCHESTRATOR_API_TOKEN",
        "scheme": "bearer",
    }
    cancel = schema["paths"]["/sagas/{saga_id}/cancel"]["post"]
    assert cancel["security"] == [{"token": []}]
    assert set(cancel["responses"]) == {"200", "400", "401", "403", "404", "409", "413", "422", "429", "503"}
    problem = {"$ref": "#/components/schemas/Problem"}
    assert cancel["responses"]["422"]["content"]["application/json"]["schema"] == problem
    assert schema["paths"]["/sagas"]["get"]["security"] == [{"token": []}]  # reads are closed by default
    assert schema["paths"]["/sagas"]["get"]["parameters"][0]["schema"]["enum"] == [
        "escrow",
        "order",
    ]
    assert set(schema["paths"]["/sagas"]["post"]["responses"]["201"]["links"]) >= {"get", "cancel", "history"}
    start = schema["components"]["schemas"]["Start_order"]
    assert start["properties"]["workflow"]["const"] == "order"
    assert start["properties"]["data"]["required"] == ["customer_id", "lines", "amount_cents"]
    assert schema["components"]["schemas"]["order_Line"]["required"] == ["sku", "quantity"]


def test_without_a_token_nothing_is_secured_and_with_protected_reads_everything_is() -> None:
    _, insecure = build(api_token=None)
    _, guarded = build(api_token="t0ken", api_open_reads=False)

    assert "securitySchemes" not in insecure.openapi().get("components", {})
    paths = guarded.openapi()["paths"]
    assert paths["/sagas"]["get"]["security"] == [{"token": []}]
    assert paths["/metrics"]["get"]["security"] == [{"token": []}]
    assert "security" not in paths["/healthz"]["get"]


async def test_actions_need_the_token(client: httpx.AsyncClient) -> None:
    del client.headers["Authorization"]
    missing = await client.post(f"{SAGA}/cancel")
    wrong = await client.post(f"{SAGA}/cancel", headers={"Authorization": "Bearer nope"})
    basic = await client.post(f"{SAGA}/cancel", headers={"Authorization": "Basic dTpw"})

    assert [r.status_code for r in (missing, wrong, basic)] == [401, 401, 401]
    assert missing.headers["www-authenticate"] == 'Bearer realm="orchestrator"'
    assert missing.json() == {"detail": "a valid bearer token is needed"}


async def test_a_database_outage_is_a_503_and_readiness_says_so(client: httpx.AsyncClient) -> None:
    saga = await client.get(SAGA)
    listed = await client.get("/sagas")
    ready = await client.get("/readyz")
    health = await client.get("/healthz")
    metrics = await client.get("/metrics")

    assert (saga.status_code, listed.status_code) == (503, 503)
    assert saga.json()["detail"] == "the database is unavailable; try again"
    assert ready.status_code == 503 and ready.json()["status"] == "unready"
    assert ready.json()["checks"]["database"].startswith("unreachable")
    assert health.status_code == 200
    assert metrics.status_code == 200 and "orchestrator_database_up 0.0" in metrics.text


async def test_a_write_during_an_outage_is_a_503_too(client: httpx.AsyncClient) -> None:
    token = {"Authorization": "Bearer t0ken"}
    order = {"customer_id": "c-1", "lines": [{"sku": "s", "quantity": 1}], "amount_cents": 100}

    started = await client.post(
        "/sagas", json={"workflow": "order", "key": "k", "data": order}, headers=token
    )
    cancelled = await client.post(f"{SAGA}/cancel", json={"reason": "r"}, headers=token)

    assert (started.status_code, cancelled.status_code) == (503, 503), (started.text, cancelled.text)
    assert started.headers["Retry-After"] == "5"


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.TooManyConnectionsError("sorry, too many clients already"),
        PoolTimeout("QueuePool limit reached"),
    ],
)
async def test_a_database_that_drops_or_refuses_mid_request_is_a_503(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    async def fails(*args: Any, **kwargs: Any) -> None:
        raise error

    monkeypatch.setattr(PostgresStore, "get_saga", fails)

    assert (await client.get(SAGA)).status_code == 503


def test_every_operation_documents_the_503() -> None:
    _, app = build(api_token="t0ken")
    operations = [op for path in app.openapi()["paths"].values() for op in path.values()]

    assert operations and all("503" in op["responses"] for op in operations)


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("/sagas/42", "path.saga_id: Input should be a valid UUID"),
        ("/sagas?limit=x", "query.limit: Input should be a valid integer"),
        ("/sagas?cursor=%%%", "cursor is not one this API handed out"),
        ("/sagas?workflow=nope", "workflow: unknown 'nope'; known: escrow, order"),
        ("/workflows/nope", "no workflow 'nope'; known: escrow, order"),
    ],
)
async def test_bad_input_says_what_is_wrong_before_the_database_is_asked(
    client: httpx.AsyncClient, path: str, says: str
) -> None:
    response = await client.get(path)

    assert 400 <= response.status_code < 500
    assert response.json()["detail"].startswith(says)


async def test_a_body_over_the_cap_is_a_413_declared_or_streamed() -> None:
    context, app = build(api_token="t0ken", api_max_body_bytes=1000)
    auth = {"Authorization": "Bearer t0ken"}
    big = b'{"workflow": "order", "data": {"x": "' + b"a" * 2000 + b'"}}'

    async def chunks() -> Any:  # no Content-Length: the cap must count what it reads
        for start in range(0, len(big), 100):
            yield big[start : start + 100]

    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
        ) as api:
            declared = await api.post("/sagas", content=big, headers=auth)
            streamed = await api.post("/sagas", content=chunks(), headers=auth)
            small = await api.post("/sagas", json={"workflow": "nope", "data": {}}, headers=auth)
    finally:
        await context.store.close()
    for answer in (declared, streamed):
        assert answer.status_code == 413, answer.text
        assert answer.json()["detail"] == "the request body is over 1000 bytes"
    assert small.status_code == 422  # under the cap, the body is read and judged as before


def test_the_body_cap_must_be_positive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_API_MAX_BODY_BYTES", "0")
    with pytest.raises(SettingsError, match="ORCHESTRATOR_API_MAX_BODY_BYTES must be at least 1"):
        Settings.from_env()
