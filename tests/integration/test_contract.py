"""The AsyncAPI contract against the running service: every command the orchestrator really sends
and every reply the example participants really give, tapped off the exchanges, is in the
document served at ``GET /asyncapi.json``, fits its payload and headers schemas, goes where its
channel says, answers the command the document pairs it with; and a start built from the
document is taken, while one the document refuses is refused by the service too; and its
queues and exchanges, declared as its bindings say, are what RabbitMQ holds."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aio_pika
import orjson
import pytest

from orchestrator.core.engine import saga_id_for
from tests.contract.asyncapi import asyncapi_errors, message_errors

from .conftest import Bench, unique

pytestmark = pytest.mark.integration

order_ids = unique("contract-order")
escrow_ids = unique("contract-escrow")


@dataclass(frozen=True)
class Tapped:
    exchange: str
    routing_key: str
    type: str
    message_id: str
    correlation_id: str | None
    content_type: str | None
    delivery_mode: int
    headers: dict[str, Any]
    body: bytes


def fails(service: str, key: str, rate: float) -> bool:
    """Whether ``--fail-rate rate`` fails ``key`` at ``service`` (docs/protocol.md, section 10)."""
    digest = hashlib.sha256(f"{service}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


def key_where(service: str, failing: bool, make: Any) -> str:
    while True:
        key = str(make())
        if fails(service, key, 0.5) == failing:
            return key


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        target: Any = document
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        schema = target
    return schema


def example(document: dict[str, Any], schema: dict[str, Any]) -> Any:
    """The least body a schema of the document asks for: what a participant written from the
    document alone would send."""
    schema = resolve(document, schema)
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties", {})
        return {name: example(document, properties[name]) for name in schema.get("required", [])}
    if kind == "array":
        return [example(document, schema["items"])]
    return {"string": "from-the-contract", "integer": 7, "number": 1.5, "boolean": True}[kind]


async def tap(bench: Bench, exchange: str) -> aio_pika.abc.AbstractQueue:
    assert bench.channel is not None
    queue = await bench.channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(f"{bench.namespace}.{exchange}", "#")
    return queue


async def take(queue: aio_pika.abc.AbstractQueue, into: list[Tapped]) -> None:
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        into.append(
            Tapped(
                message.exchange or "",
                message.routing_key or "",
                message.type or "",
                message.message_id or "",
                message.correlation_id,
                message.content_type,
                int(message.delivery_mode or 0),
                dict(message.headers or {}),
                message.body,
            )
        )


async def declared_as_documented(bench: Bench, document: dict[str, Any]) -> None:
    """Declaring each queue and exchange of the document's bindings, as a participant written from
    it would, is accepted by RabbitMQ next to what the orchestrator and the participants declared:
    a queue declared with other arguments, or an exchange of another type, is refused."""
    connection = await aio_pika.connect(bench.amqp_url)
    try:
        for channel in document["channels"].values():
            binding = channel["bindings"]["amqp"]
            declaring = await connection.channel()
            if binding["is"] == "queue":
                queue = binding["queue"]
                assert queue["name"] == channel["address"]
                await declaring.declare_queue(
                    queue["name"],
                    durable=queue["durable"],
                    exclusive=queue["exclusive"],
                    auto_delete=queue["autoDelete"],
                    arguments=queue["x-arguments"],
                )
            else:
                exchange = binding["exchange"]
                await declaring.declare_exchange(
                    exchange["name"],
                    exchange["type"],
                    durable=exchange["durable"],
                    auto_delete=exchange["autoDelete"],
                )
            await declaring.close()
        otherwise = await connection.channel()
        queue = document["channels"]["queue.inventory"]["bindings"]["amqp"]["queue"]
        with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
            await otherwise.declare_queue(queue["name"], durable=True, arguments={"x-queue-type": "quorum"})
    finally:
        await connection.close()


def reply_id(command: Tapped, reply_type: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"{command.message_id}:{reply_type}"))


async def test_what_the_service_sends_and_takes_fits_its_contract(bench: Bench) -> None:
    await bench.serve()
    async with bench.api() as api:
        served = await api.get("/asyncapi.json")
    assert served.status_code == 200
    document = served.json()
    assert asyncapi_errors(document) == []
    commands_tap, events_tap = await tap(bench, "commands"), await tap(bench, "events")
    await bench.work(
        inventory=("--out-of-stock", "unobtainium"),
        payment=("--decline-over", "100000"),
        shipping=("--fail-rate", "0.5"),
        buyer=("--refuse-over", "100000"),
        bank=("--fail-rate", "0.5"),
    )

    await declared_as_documented(bench, document)

    # every reply of both workflows: shipped, failed shipment, out of stock, declined charge;
    # closed, declined funds, refused signature
    orders = [key_where("shipping", False, order_ids), key_where("shipping", True, order_ids)]
    for key in orders:
        await bench.place_order(key)
    orders += [order_ids(), order_ids()]
    await bench.place_order(orders[2], sku="unobtainium")
    await bench.place_order(orders[3], amount_cents=250_000)
    escrows = [key_where("bank", False, escrow_ids), key_where("bank", True, escrow_ids), escrow_ids()]
    await bench.open_escrow(escrows[0])
    await bench.open_escrow(escrows[1])
    await bench.open_escrow(escrows[2], amount_cents=250_000)

    # what the service accepts: a start over the API and one over AMQP, each built from the
    # document alone; and a start event the document refuses, which the service refuses too
    messages = document["components"]["messages"]
    order_data = example(document, messages["orders.OrderPlaced"]["payload"])
    order_key = key_where("shipping", False, order_ids)
    async with bench.api() as api:
        started = await api.post(
            "/sagas",
            json={"workflow": "order", "key": order_key, "data": {**order_data, "order_id": order_key}},
        )
    assert started.status_code == 201, started.text
    orders.append(order_key)
    escrow_key = key_where("bank", False, escrow_ids)
    escrow_body = {**example(document, messages["escrow.EscrowOpened"]["payload"]), "escrow_id": escrow_key}
    assert message_errors(document, "escrow.EscrowOpened", "payload", escrow_body) == []
    await bench.publish("escrow.EscrowOpened", escrow_body)
    escrows.append(escrow_key)
    refused = {**order_data, "order_id": order_ids(), "lines": [{"sku": "x", "quantity": "many"}]}
    assert message_errors(document, "orders.OrderPlaced", "payload", refused) != []
    refused_id = await bench.publish("orders.OrderPlaced", refused)

    done = await bench.finished("order", orders, timeout=90)
    closed = await bench.finished("escrow", escrows, timeout=90)
    assert [done[k].status for k in orders] == [
        "completed",
        "compensated",
        "compensated",
        "compensated",
        "completed",
    ]
    assert [closed[k].state for k in escrows] == ["closed", "expired", "refused", "closed"]

    # every command answered (a reply's message_id derives from its command's), then stop tapping
    commands: list[Tapped] = []
    events: list[Tapped] = []
    deadline = time.monotonic() + 30
    while True:
        await take(commands_tap, commands)
        await take(events_tap, events)
        replied = {e.message_id for e in events}
        if all(any(reply_id(c, t) in replied for t in {e.type for e in events}) for c in commands):
            break
        assert time.monotonic() < deadline, "some commands were never answered"
        await asyncio.sleep(0.2)

    channels, operations = document["channels"], document["operations"]
    ns = bench.namespace
    assert {c.type for c in commands} == {
        t.removeprefix("command.") for t in channels if t.startswith("command.")
    }
    for command in commands:
        service = command.type.split(".")[0]
        channel = channels[f"command.{command.type}"]
        assert (
            (command.exchange, command.routing_key)
            == (
                channel["bindings"]["amqp"]["exchange"]["name"],
                channel["address"],
            )
            == (f"{ns}.commands", command.type)
        )
        assert message_errors(document, command.type, "payload", orjson.loads(command.body)) == []
        assert message_errors(document, command.type, "headers", command.headers) == []
        assert command.correlation_id == command.headers["x-saga-id"] and command.message_id
        assert (command.content_type, command.delivery_mode) == ("application/json", 2)
        receive = operations[f"{service}.receive.{command.type}"]
        queue = channels[receive["channel"]["$ref"].split("/")[-1]]
        assert queue["address"] == f"{ns}.{service}"
        assert queue["bindings"]["amqp"]["queue"]["x-binding-key"] == f"{service}.#"

    by_reply = {reply_id(c, e.type): c for c in commands for e in events}
    undocumented = []
    for event in events:
        if event.message_id == refused_id:  # checked below: dead-lettered
            continue
        if event.type not in messages:
            undocumented.append(event)
            continue
        channel = channels[f"event.{event.type}"]
        assert (event.exchange, event.routing_key) == (
            channel["bindings"]["amqp"]["exchange"]["name"],
            channel["address"],
        )
        assert message_errors(document, event.type, "payload", orjson.loads(event.body)) == []
        assert message_errors(document, event.type, "headers", event.headers) == []
        if event.correlation_id is None:  # a start event the test published
            assert "start event" in messages[event.type]["summary"]
            continue
        command = by_reply[event.message_id]
        service = command.type.split(".")[0]
        reply = operations[f"{service}.receive.{command.type}"]["reply"]
        assert f"#/channels/replies.{command.type}/messages/{event.type}" in [
            m["$ref"] for m in reply["messages"]
        ]
        assert operations[f"{service}.send.{event.type}"]["action"] == "send"
        assert event.correlation_id == command.correlation_id
    # the only replies the document does not name answer the commands it says nobody waits for
    assert {e.type for e in undocumented} == {"bank.FundsReleased"}
    for event in undocumented:
        command = by_reply[event.message_id]
        assert "reply" not in operations[f"bank.receive.{command.type}"]
    # and the sagas above gave every reply and start event the document names
    documented = {name.removeprefix("event.") for name in channels if name.startswith("event.")}
    assert {e.type for e in events} - {"bank.FundsReleased"} == documented

    # everything it was sent was taken, but the start event the document refuses
    letters = await bench.dead_letters(1)
    assert [(row["reason"], row["message_type"]) for row in letters] == [("schema", "orders.OrderPlaced")]
    assert await bench.saga("order", refused["order_id"]) is None
    assert saga_id_for("order", order_key) == started.json()["id"]
