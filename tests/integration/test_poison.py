"""Nothing that arrives can stop the service: each kind of bad message, sent as raw bytes through
the real broker, is dead-lettered with its reason, and a canary saga started after it completes in
the same, still running, orchestrator process."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest

from tests.integration.conftest import AMQP_URL, Bench
from tests.integration.raw_amqp import RawPublisher

pytestmark = pytest.mark.integration


def _order(order_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "customer_id": "c-1",
        "lines": [{"sku": "sku-1", "quantity": 1}],
        "amount_cents": 1000,
        **extra,
    }


def _poisons() -> list[tuple[str, str, dict[str, Any]]]:
    """(reason code, what, the publish's arguments) for every class of bad input."""

    def case(code: str, what: str, body: Any = None, headers: Any = None, **properties: Any) -> Any:
        if body is None:
            body = _order(f"p-{uuid.uuid4().hex[:8]}")
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        props = {"type": "orders.OrderPlaced", "message_id": str(uuid.uuid4()), "delivery_mode": 2}
        return code, what, {"body": raw, "properties": {**props, **properties}, "headers": headers}

    return [
        case("bad_header", "x-workflow not UTF-8", headers={"x-workflow": b"\xff\xfe"}),
        case("bad_header", "a header key not UTF-8", headers={b"x-\xff": "v"}),
        case("bad_header", "a 100 KB header", headers={"x-big": "h" * 100_000}),
        case("bad_property", "type not UTF-8", type=b"\xff\xfe"),
        case("bad_property", "a timestamp pamqp cannot decode", timestamp=2**63 - 1),
        case("bad_property", "message_id not UTF-8", message_id=b"m-\xc3"),
        case("bad_property", "NUL in message_id", message_id="m-\x00-1"),
        case("bad_property", "NUL in correlation_id", correlation_id="c\x00"),
        case("unstorable", "NUL in a body string", _order("nul", customer_id="c\u0000")),
        case("unstorable", "nested 40 deep", _order("deep", x=_nested(40))),
        case("not_json", "a lone surrogate in the body", b'{"order_id": "\\ud800"}'),
        case("not_json", "a body that is not JSON", b"\xff{"),
        case("key_too_long", "a 3,000-character key", _order("k" * 3000)),
        case("key_too_long", "a 140,000-character key", _order("k" * 140_000)),
        case("too_large", "a body over 1 MiB", b"{" + b" " * (1024 * 1024) + b"}"),
        # published with its first line as the routing key: not its type
        case("routing_key", "a newline in the type", type="orders.X\n2026 INFO forged"),
    ]


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"x": value}
    return value


async def test_every_kind_of_poison_is_dead_lettered_and_the_innocent_go_on(bench: Bench) -> None:
    orchestrator = await bench.serve()
    await bench.work()
    poisons = _poisons()
    innocent = [f"i-{uuid.uuid4().hex[:8]}" for _ in range(20)]
    async with RawPublisher(AMQP_URL) as publisher:
        # Poison and innocent messages interleaved, so that they share batches.
        for index, (_, _, message) in enumerate(poisons):
            routing_key = (
                str(message["properties"]["type"]) if isinstance(message["properties"]["type"], str) else "x"
            )
            await publisher.publish(f"{bench.namespace}.events", routing_key.split("\n")[0], **message)
            if index < len(innocent):
                await bench.place_order(innocent[index])
    for order_id in innocent[len(poisons) :]:
        await bench.place_order(order_id)
    canary = f"canary-{uuid.uuid4().hex[:8]}"
    await bench.place_order(canary)

    sagas = await bench.finished("order", [*innocent, canary], timeout=60)
    assert {key: s.status for key, s in sagas.items()} == dict.fromkeys([*innocent, canary], "completed")
    dead = await bench.dead_letters(len(poisons))
    assert sorted(row["reason"] for row in dead) == sorted(code for code, _, _ in poisons), [
        (row["reason"], row["detail"]) for row in dead
    ]
    assert all(len(row["detail"]) <= 600 for row in dead)  # a reason, not a copy of the payload
    assert orchestrator.running  # the same process, still running
    output = orchestrator.output()
    assert "\n2026 INFO forged" not in output  # one log line stays one line
    assert "Traceback" not in output
