"""One broker user per party, with only the permissions docs/security.md lists (issue 27), on a
RabbitMQ node of the session's own: the orchestrator, each example participant on the kit and
the shop that places orders get their users; orders complete under them; and what a party may
not do, the broker refuses: a participant answering for another service (topic permissions), a
participant writing to the default exchange, and a publish whose ``user_id`` names someone else
(RabbitMQ validates it against the connection's user)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import uuid
from collections.abc import Mapping
from pathlib import Path

import aio_pika
import orjson
import pytest

from participants.cli import ensure_database
from tests.integration.conftest import SERVICES, Bench
from tests.integration.in_process import work
from tests.integration.private_broker import PrivateBroker

pytestmark = pytest.mark.integration


def password_hash(password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def permissions(namespace: str, prefix: str) -> dict[str, tuple[tuple[str, str, str], str | None]]:
    """Each party's (configure, write, read) and the routing keys it may publish to
    ``{ns}.events`` with, as docs/security.md gives them."""
    ns = re.escape(namespace)
    found: dict[str, tuple[tuple[str, str, str], str | None]] = {
        f"{prefix}orchestrator": ((f"^{ns}\\.", f"^({ns}\\..*|amq\\.default)$", f"^{ns}\\."), None),
        f"{prefix}shop": (("^$", f"^{ns}\\.events$", "^$"), "^orders\\.OrderPlaced$|^escrow\\.EscrowOpened$"),
    }
    for service in SERVICES:
        found[f"{prefix}{service}"] = (
            (
                f"^{ns}\\.(commands|events|dead|dead-letter|{service})$",
                f"^{ns}\\.(events|dead|dead-letter|{service})$",
                f"^{ns}\\.(commands|dead|{service})$",
            ),
            f"^{re.escape(service)}\\.",
        )
    return found


def add_users(broker: PrivateBroker, namespace: str, prefix: str, password: str, tmp_path: Path) -> None:
    """The users, their permissions and topic permissions, in one ``import_definitions``."""
    parties = permissions(namespace, prefix)
    definitions = {
        "users": [
            {
                "name": user,
                "password_hash": password_hash(password),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": [],
            }
            for user in parties
        ],
        "permissions": [
            {"user": user, "vhost": "/", "configure": c, "write": w, "read": r}
            for user, ((c, w, r), _) in parties.items()
        ],
        "topic_permissions": [
            {"user": user, "vhost": "/", "exchange": f"{namespace}.events", "write": keys, "read": ".*"}
            for user, (_, keys) in parties.items()
            if keys is not None
        ],
    }
    path = tmp_path / "definitions.json"
    path.write_text(json.dumps(definitions))
    broker.ctl("import_definitions", str(path))


def url_of(broker: PrivateBroker, user: str, password: str) -> str:
    return broker.url.replace("guest:guest@", f"{user}:{password}@")


async def refused(url: str, exchange: str, routing_key: str, **properties: object) -> str:
    """Publish one message as the party of ``url``; the broker's refusal, or "" if it took it."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        target = (
            channel.default_exchange if exchange == "" else await channel.get_exchange(exchange, ensure=False)
        )
        try:
            await target.publish(aio_pika.Message(b"{}", **properties), routing_key=routing_key)  # type: ignore[arg-type]
            await channel.close()
        except Exception as error:
            return f"{type(error).__name__}: {error}"
        return ""
    finally:
        await connection.close()


async def test_each_party_on_its_own_broker_user_does_its_part_and_nothing_else(
    private_bench: Bench, private_broker: PrivateBroker, tmp_path: Path
) -> None:
    bench = private_bench
    prefix, password = f"u{uuid.uuid4().hex[:6]}-", uuid.uuid4().hex
    add_users(private_broker, bench.namespace, prefix, password, tmp_path)
    # each service's events must carry its broker user's user_id (ORCHESTRATOR_SENDERS)
    senders = (
        ("orders", f"{prefix}shop"),
        ("escrow", f"{prefix}shop"),
        *((s, f"{prefix}{s}") for s in SERVICES),
    )
    await bench.serve(amqp_url=url_of(private_broker, f"{prefix}orchestrator", password), senders=senders)
    await ensure_database(bench.env["PARTICIPANT_DATABASE_URL"])
    for service in SERVICES:
        env: Mapping[str, str] = {
            **bench.env,
            "ORCHESTRATOR_AMQP_URL": url_of(private_broker, f"{prefix}{service}", password),
        }
        bench.worked.append(work(service, (), env))
    await bench.wait_for_consumer(*(f"{bench.namespace}.{s}" for s in SERVICES), timeout=60)

    shop = url_of(private_broker, f"{prefix}shop", password)
    key = f"o-{uuid.uuid4().hex[:8]}"
    order = {
        "order_id": key,
        "customer_id": "c-1",
        "lines": [{"sku": "sku-1", "quantity": 1}],
        "amount_cents": 100,
    }
    connection = await aio_pika.connect(shop)
    try:
        channel = await connection.channel(publisher_confirms=True)
        events = await channel.get_exchange(f"{bench.namespace}.events", ensure=False)
        await events.publish(
            aio_pika.Message(
                orjson.dumps(order),
                type="orders.OrderPlaced",
                message_id=str(uuid.uuid4()),
                user_id=f"{prefix}shop",
            ),
            routing_key="orders.OrderPlaced",
        )
        unsigned = f"o-{uuid.uuid4().hex[:8]}"  # the same start without its user_id: whose is it?
        await events.publish(
            aio_pika.Message(
                orjson.dumps({**order, "order_id": unsigned}), type="orders.OrderPlaced", message_id=unsigned
            ),
            routing_key="orders.OrderPlaced",
        )
    finally:
        await connection.close()
    sagas = await bench.finished("order", [key], timeout=60)  # the kit's replies carry their users

    payment = url_of(private_broker, f"{prefix}payment", password)
    answering_for_inventory = await refused(payment, f"{bench.namespace}.events", "inventory.StockReserved")
    to_the_default_exchange = await refused(payment, "", f"{bench.namespace}.orchestrator.events")
    as_someone_else = await refused(
        payment, f"{bench.namespace}.events", "payment.PaymentCharged", user_id=f"{prefix}inventory"
    )
    as_itself = await refused(
        payment, f"{bench.namespace}.events", "payment.PaymentCharged", user_id=f"{prefix}payment"
    )

    dead = {row["message_id"]: row for row in await bench.dead_letters(2)}
    assert sagas[key].status == "completed"
    assert dead[unsigned]["reason"] == "sender", dead
    assert f"{prefix}shop" in dead[unsigned]["detail"]
    assert await bench.saga("order", unsigned) is None
    assert "ACCESS_REFUSED" in answering_for_inventory or "403" in answering_for_inventory, (
        answering_for_inventory
    )
    assert "ACCESS_REFUSED" in to_the_default_exchange or "403" in to_the_default_exchange, (
        to_the_default_exchange
    )
    assert "PRECONDITION_FAILED" in as_someone_else or "406" in as_someone_else, as_someone_else
    assert as_itself == ""
