"""The database goes away under a running orchestrator: the batch in hand waits unacked (nothing
is dead-lettered for it, nothing lost), /readyz answers 503 and says why, and once the database is
back the same process carries on.

The orchestrator reaches PostgreSQL through a TCP proxy in this test, so that the test can cut
the connection without stopping the server that other tests share."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from .conftest import Bench
from .proxy import Proxy

pytestmark = pytest.mark.integration


async def test_a_database_outage_holds_the_batch_and_makes_the_service_unready(bench: Bench) -> None:
    proxy = Proxy()
    await proxy.open()
    proxied = bench.database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    assert proxied != bench.database_url
    orchestrator = await bench.serve(database_url=proxied)
    await bench.work()
    before = f"before-{uuid.uuid4().hex[:6]}"
    await bench.place_order(before)
    await bench.finished("order", [before])

    await proxy.cut()
    during = f"during-{uuid.uuid4().hex[:6]}"
    await bench.place_order(during)
    async with bench.api() as api:
        deadline = time.monotonic() + 30
        while True:
            ready = await api.get("/readyz")
            checks = ready.json().get("checks", {})
            if ready.status_code == 503 and checks.get("consumer", "ok") != "ok":
                break
            assert time.monotonic() < deadline, ready.text
            await asyncio.sleep(0.2)
        assert checks["database"] != "ok"
        assert checks["consumer"].startswith("cannot commit")
        metrics = (await api.get("/metrics")).text
        assert 'orchestrator_batch_failures_total{fault="unavailable"}' in metrics
        assert "orchestrator_consumer_stalled 1.0" in metrics

        await proxy.open()  # the database is back, on the same port
        sagas = await bench.finished("order", [during], timeout=60)
        assert sagas[during].status == "completed"
        deadline = time.monotonic() + 30
        while (await api.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)

    assert await bench.dead_letters(0) == []
    assert orchestrator.running  # the same service throughout
    await orchestrator.stop()
    await proxy.cut()
