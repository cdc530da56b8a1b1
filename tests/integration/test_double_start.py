"""A start is taken by any replica, and twice is still once (issue 14, item 1): two orchestrator
processes on one namespace and database, each start event published several times with its own
message ids, and the same start asked of both REST APIs at once. The journal's key on the saga
id makes a second start impossible: the loser's batch is retried and finds the saga there."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import httpx
import pytest

from orchestrator.core.engine import saga_id_for
from tests.integration.conftest import Bench

pytestmark = pytest.mark.integration

KEYS = 25
COPIES = 4


async def test_the_same_start_sent_to_two_replicas_over_amqp_and_rest_starts_one_saga(bench: Bench) -> None:
    await bench.serve()
    first_api = bench.api_url
    await bench.serve()
    second_api = bench.api_url
    assert first_api != second_api
    keys = [f"twice-{uuid.uuid4().hex[:6]}-{n}" for n in range(KEYS)]
    body = {"customer_id": "c-1", "lines": [{"sku": "sku-1", "quantity": 1}], "amount_cents": 1000}
    headers = {"Authorization": f"Bearer {bench.api_token}"}

    async def over_rest(url: str, key: str) -> int:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as api:
            answer = await api.post("/sagas", json={"workflow": "order", "key": key, "data": body})
            return answer.status_code

    published = [bench.place_order(key) for key in keys for _ in range(COPIES)]
    asked = [(key, over_rest(url, key)) for key in keys for url in (first_api, second_api)]
    results = await asyncio.gather(*published, *(call for _, call in asked))
    by_key: dict[str, list[int]] = {}
    for (key, _), status in zip(asked, results[len(published) :], strict=True):
        by_key.setdefault(key, []).append(status)
    for key, statuses in by_key.items():
        assert sorted(statuses) in ([200, 200], [200, 201]), (key, statuses)  # never 409 or 500

    assert bench.store is not None
    for key in keys:
        saga_id = saga_id_for("order", key)
        # each AMQP copy has its own message id: it is journaled (started, or ignored as the
        # saga exists); a REST start that started the saga is journaled too, one that found it not
        expected = COPIES + by_key[key].count(201)
        for _ in range(300):
            if len(await bench.store.journal(saga_id)) >= expected:
                break
            await asyncio.sleep(0.1)
        journal = await bench.store.journal(saga_id)
        assert len(journal) == expected, (key, [e.decision["outcome"] for e in journal])
        outcomes = Counter(e.decision["outcome"] for e in journal)
        assert outcomes["started"] == 1 and outcomes["ignored"] == expected - 1, (key, outcomes)
        assert [e.seq for e in journal] == list(range(1, len(journal) + 1))
        sent = [c for e in journal for c in e.decision["commands"]]
        assert [c["type"] for c in sent] == ["inventory.ReserveStock"], (key, sent)
    assert await bench.dead_letters(0, timeout=1) == []
    verified = bench.verify()
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"verified {KEYS} sagas: 0 differ" in verified.stdout
