"""Where a dead letter's replay may go (issue 27, case 1): never where its own headers say, a
command only as its saga's journal proves it, the rest only to the orchestrator's inbound path;
and a bulk replay holds a page of rows at a time. The same against the real broker and database:
tests/integration/test_dead_letters.py."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from orchestrator.service.dead_letters import PAGE, ReplayRoutes, Target, pages, target_of
from orchestrator.service.ports import DeadLetterFilter, DeadLetterRow, SentCommand

ROUTES = ReplayRoutes("ns.commands", "ns.events", frozenset({"payment.RefundPayment"}))
SAGA, COMMAND = "saga-1", "command-1"
PAYLOAD = {"order_id": "o-1", "amount_cents": 1000}
AT = datetime(2026, 12, 7, tzinfo=UTC)


def row(**fields: Any) -> DeadLetterRow:
    made = DeadLetterRow(
        id=1,
        dead_at=AT,
        source="broker",
        reason="rejected",
        detail="rejected by participant payment",
        message_id=COMMAND,
        message_type="payment.RefundPayment",
        correlation_id=SAGA,
        exchange="ns.commands",
        routing_key="payment.RefundPayment",
        properties={},
        body_size=0,
        body_stored=0,
        replayed_at=None,
        replayed_by=None,
        body=orjson.dumps(PAYLOAD),
    )
    return replace(made, **fields)


async def journal(saga_id: str, message_id: str) -> SentCommand | None:
    if (saga_id, message_id) == (SAGA, COMMAND):
        return SentCommand("payment.RefundPayment", PAYLOAD)
    return None


async def test_a_command_its_saga_sent_goes_to_the_commands_exchange_by_its_type() -> None:
    said_elsewhere = row(exchange="amq.direct", routing_key="somewhere.else")

    assert await target_of(said_elsewhere, ROUTES, journal) == Target(
        "ns.commands", "payment.RefundPayment", "command"
    )


@pytest.mark.parametrize(
    ("fields", "because"),
    [
        ({"message_id": "command-2"}, "which sent no command with that id"),
        ({"correlation_id": "saga-2"}, "which sent no command with that id"),
        ({"correlation_id": None}, "names no saga"),
        ({"body": orjson.dumps({**PAYLOAD, "amount_cents": 100000})}, "its body is not the payload"),
        ({"body": b"not json"}, "its body is not the payload"),
        ({"message_type": "x.Y"}, "sent that id as payment.RefundPayment"),
    ],
)
async def test_what_claims_to_be_a_command_and_is_not_proven_goes_nowhere(
    fields: dict[str, Any], because: str
) -> None:
    found = await target_of(row(**fields), ROUTES, journal)

    assert isinstance(found, str) and because in found


async def test_a_command_type_is_proven_whatever_exchange_its_headers_name() -> None:
    unproven = row(message_id="command-9", exchange="ns.events", routing_key="payment.RefundPayment")

    found = await target_of(unproven, ROUTES, journal)

    assert isinstance(found, str) and "only a command a saga sent is replayed" in found


async def test_anything_else_goes_only_to_the_orchestrator_s_inbound_path_by_its_type() -> None:
    reply = row(
        message_type="inventory.StockReserved",
        exchange="amq.topic",
        routing_key="anything.at.all",
        source="orchestrator",
    )

    assert await target_of(reply, ROUTES, journal) == Target(
        "ns.events", "inventory.StockReserved", "inbound"
    )
    untyped = await target_of(row(message_type=None, exchange="ns.events"), ROUTES, journal)
    assert isinstance(untyped, str) and "it has no type" in untyped


class Table:
    """The dead-letter rows a bulk replay reads, counting what it holds at once."""

    def __init__(self, count: int) -> None:
        self.stored = [row(id=n, dead_at=AT + timedelta(seconds=n // 3)) for n in range(1, count + 1)]
        self.asked: list[int] = []

    async def rows(
        self, f: DeadLetterFilter, limit: int, after: tuple[datetime, int] | None = None
    ) -> list[DeadLetterRow]:
        self.asked.append(limit)
        later = [r for r in self.stored if after is None or (r.dead_at, r.id) > after]
        return later[:limit]


async def test_a_bulk_replay_reads_a_page_at_a_time_in_order() -> None:
    table = Table(PAGE * 3 + 5)

    read = [r.id async for r in pages(table, DeadLetterFilter(), 10_000)]  # type: ignore[arg-type]
    capped = [r.id async for r in pages(table, DeadLetterFilter(), PAGE + 2)]  # type: ignore[arg-type]

    assert read == [r.id for r in table.stored]
    assert max(table.asked) == PAGE
    assert capped == [r.id for r in table.stored][: PAGE + 2]
