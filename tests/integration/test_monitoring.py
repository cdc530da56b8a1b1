"""The metrics of a real ``orchestrator run`` after orders ran: the counts per workflow and state,
the step latency per command, the starts, finishes and compensations per workflow are the right
numbers, and every metric the alert rules and the dashboard in deploy/ name is exposed."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from orchestrator.core.engine import saga_id_for
from tests.monitoring import all_uses, unknown

from .conftest import Bench, unique

pytestmark = pytest.mark.integration

order_ids = unique("monitoring")


def samples(text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """A metric's samples in Prometheus text, by their label set."""
    found = {}
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', line.rsplit(" ", 1)[0]))
            found[labels] = float(line.rsplit(" ", 1)[1])
    return found


def of(workflow: str = "order", **labels: str) -> frozenset[tuple[str, str]]:
    return frozenset({"workflow": workflow, **labels}.items())


async def scrape(bench: Bench) -> str:
    async with bench.api() as api:
        answer = await api.get("/metrics")
    assert answer.status_code == 200
    return answer.text


async def test_the_metrics_count_per_workflow_and_state_and_the_rules_find_theirs(bench: Bench) -> None:
    await bench.serve()
    waiting, declined = order_ids(), order_ids()

    # No participant yet: the first order waits in its first state, counted there.
    await bench.place_order(waiting)
    deadline = time.monotonic() + 30
    while (saga := await bench.saga("order", waiting)) is None:
        assert time.monotonic() < deadline, "the order never started"
        await asyncio.sleep(0.1)
    text = await scrape(bench)
    in_state = samples(text, "orchestrator_sagas_in_state")
    assert in_state == {of(release=saga.release, state=saga.state, status="running"): 1.0}, in_state
    assert samples(text, "orchestrator_sagas") == {of(status="running"): 1.0}
    assert samples(text, "orchestrator_sagas_started_total") == {of(): 1.0}
    assert samples(text, "orchestrator_compensations_started_total") == {}

    # The rules and the dashboard: every metric they name, exposed by the running service.
    assert unknown(all_uses(), text, labels=False) == []

    # Then one completes and one is declined and compensated.
    await bench.work(payment=("--decline-over", "100000"))
    await bench.place_order(declined, amount_cents=250_000)
    done = await bench.finished("order", [waiting, declined])
    assert (done[waiting].status, done[declined].status) == ("completed", "compensated")

    text = await scrape(bench)
    assert samples(text, "orchestrator_sagas_started_total") == {of(): 2.0}
    assert samples(text, "orchestrator_compensations_started_total") == {of(): 1.0}
    assert samples(text, "orchestrator_sagas_finished_total") == {
        of(status="completed"): 1.0,
        of(status="compensated"): 1.0,
    }
    assert samples(text, "orchestrator_sagas_in_state") == {}  # none in flight, none failed
    assert samples(text, "orchestrator_stuck_sagas") == {}

    # Step latency per command: one series per command type sent, no more often than it was sent.
    sent = [
        *await bench.commands_sent(saga_id_for("order", waiting)),
        *await bench.commands_sent(saga_id_for("order", declined)),
    ]
    timed = {
        dict(labels)["command"]: n
        for labels, n in samples(text, "orchestrator_step_latency_seconds_count").items()
        if dict(labels)["workflow"] == "order"
    }
    assert set(timed) == set(sent), (timed, sent)
    assert all(1 <= n <= sent.count(command) for command, n in timed.items()), (timed, sent)
    assert sum(samples(text, "orchestrator_step_latency_seconds_bucket").values()) > 0
    assert unknown(all_uses(), text, labels=False) == []
