"""Closed by default (issue 27, case 6): once a token is set, every route but the health checks
needs one, the schema and the metrics included; /docs is off unless asked for; a client guessing
tokens is refused for a while; a service run --insecure refuses writes from another site.

Past the guard the database is unreachable (tests/unit/test_api.py's ``build``): a 503 there means
the request was let through, a 401 that it was not."""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi import FastAPI

from orchestrator.entrypoints.api.auth import Throttle

from .test_api import SAGA, build

TOKEN = "a-token-of-twenty-chars"
OPEN = {"/healthz", "/readyz"}


def concrete(path: str) -> str:
    """A path of the schema with its parameters filled in, so that the guard is what answers."""
    values = {"saga_id": SAGA.rsplit("/", 1)[1], "name": "order", "dead_letter_id": "1"}
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), "1"), path)


def reads_of(app: FastAPI) -> list[str]:
    schema = app.openapi()
    return sorted(concrete(path) for path, operations in schema["paths"].items() if "get" in operations)


async def answers(app: FastAPI, paths: list[str], **headers: str) -> dict[str, int]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1", headers=headers
    ) as client:
        return {path: (await client.get(path)).status_code for path in paths}


async def test_every_read_but_the_health_checks_needs_a_token_once_one_is_set() -> None:
    context, app = build(api_token=TOKEN)
    paths = [*reads_of(app), "/openapi.json"]

    without = await answers(app, paths)
    wrong = await answers(app, paths, authorization="Bearer not-the-token-at-all")
    await context.store.close()

    assert {"/sagas", "/metrics", "/dead-letters", "/workflows", "/asyncapi.json", "/me"} <= set(paths)
    assert {p: s for p, s in without.items() if p not in OPEN} == {p: 401 for p in paths if p not in OPEN}
    assert without["/healthz"] == 200 and without["/readyz"] == 503  # open: the database is away
    assert wrong["/sagas"] == 401


async def test_a_read_token_reads_and_open_reads_need_none() -> None:
    context, app = build(api_token=TOKEN)
    with_token = await answers(app, ["/sagas", "/openapi.json", "/metrics"], authorization=f"Bearer {TOKEN}")
    await context.store.close()
    context, opened = build(api_token=TOKEN, api_open_reads=True)
    without = await answers(opened, ["/sagas", "/openapi.json", "/metrics", "/me"])
    await context.store.close()

    assert with_token == {"/sagas": 503, "/openapi.json": 200, "/metrics": 200}
    assert without == {"/sagas": 503, "/openapi.json": 200, "/metrics": 200, "/me": 401}
    assert "security" not in opened.openapi()["paths"]["/sagas"]["get"]


async def test_the_docs_page_is_off_unless_asked_for_and_then_the_schema_is_published() -> None:
    context, closed = build(api_token=TOKEN)
    by_default = await answers(closed, ["/docs", "/redoc"], authorization=f"Bearer {TOKEN}")
    await context.store.close()
    context, published = build(api_token=TOKEN, api_docs=True)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=published), base_url="http://127.0.0.1"
    ) as api:
        page, schema, sagas = await api.get("/docs"), await api.get("/openapi.json"), await api.get("/sagas")
    await context.store.close()

    assert by_default == {"/docs": 404, "/redoc": 404}
    assert page.status_code == 200 and "/openapi.json" in page.text
    assert schema.status_code == 200 and schema.json()["info"]["title"] == "Saga orchestrator"
    assert sagas.status_code == 401  # only the description is published, not the data


async def test_a_client_that_keeps_guessing_is_refused_even_with_the_right_token() -> None:
    context, app = build(api_token=TOKEN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as api:
        missing = [(await api.get("/sagas")).status_code for _ in range(12)]
        guesses = [
            (await api.get("/sagas", headers={"Authorization": f"Bearer guess-{n:016d}"})).status_code
            for n in range(11)
        ]
        right = await api.get("/me", headers={"Authorization": f"Bearer {TOKEN}"})
    await context.store.close()

    assert missing == [401] * 12  # a forgotten token is not a guess
    assert guesses == [401] * 10 + [429]
    assert right.status_code == 429 and 1 <= int(right.headers["Retry-After"]) <= 60
    assert right.json()["detail"].startswith("too many failed authentications from this address")


def test_a_client_may_try_again_once_its_failures_are_old_and_others_are_not_held_back() -> None:
    now = [0.0]
    throttle = Throttle(limit=3, window=60, clients=2, monotonic=lambda: now[0])
    for _ in range(3):
        throttle.failed("10.0.0.1")
        now[0] += 1

    held = throttle.wait("10.0.0.1")
    other = throttle.wait("10.0.0.2")
    now[0] = 60.5
    after = throttle.wait("10.0.0.1")
    for address in ("10.0.0.3", "10.0.0.4", "10.0.0.5"):
        throttle.failed(address)

    assert held == pytest.approx(57) and other == 0 and after == 0
    assert len(throttle._failures) == 2  # the least recent forgotten: memory is bounded


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Origin": "http://evil.example"}, 403),
        ({"Origin": "null"}, 403),
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Origin": "http://127.0.0.1"}, 503),  # the console, on the API's own origin
        ({}, 503),  # curl, a script: no browser to forge with
    ],
)
async def test_an_insecure_service_refuses_writes_from_another_site(
    headers: dict[str, str], status: int
) -> None:
    context, app = build(api_token=None)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as api:
        cancel = await api.post(f"{SAGA}/cancel", headers=headers)  # a body-less form post
        read = await api.get(SAGA, headers=headers)
    await context.store.close()

    assert cancel.status_code == status, cancel.text
    assert read.status_code == 503  # reads are not writes
    if status == 403:
        assert "from another site" in cancel.json()["detail"]


@pytest.mark.parametrize(
    ("api_host", "host", "status"),
    [
        ("127.0.0.1", "evil.example:8000", 400),  # a name rebound to 127.0.0.1 (DNS rebinding)
        ("127.0.0.1", "localhost:8000", 503),
        ("127.0.0.1", "127.0.0.1:8000", 503),
        ("10.1.2.3", "10.1.2.3:8000", 503),  # the address it listens on
        ("0.0.0.0", "evil.example", 503),  # every interface: no list could name them all
    ],
)
async def test_an_insecure_service_answers_only_to_the_names_of_its_address(
    api_host: str, host: str, status: int
) -> None:
    """Another site's page whose name an attacker points at 127.0.0.1 is of the same origin as
    itself: its reads (and same-origin writes) would reach an API without a token. Only the
    loopback names and the listening address are served."""
    context, app = build(api_token=None, api_host=api_host)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as api:
        read = await api.get(SAGA, headers={"Host": host})
        write = await api.post(f"{SAGA}/cancel", headers={"Host": host, "Origin": f"http://{host}"})
    await context.store.close()

    assert (read.status_code, write.status_code) == (status, status), read.text
