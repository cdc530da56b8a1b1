"""Property-based: whatever the wire brings, nothing raises and every message ends somewhere.

Deliveries are generated the way another client (or a broken one) can send them: bodies of any
bytes or of JSON that sometimes fits a bundled workflow's event and sometimes holds NUL, lone
surrogates, 70-bit integers, deep nesting or long keys; properties of any kind (text, bytes that
are not UTF-8, objects, over-long values); header tables of anything. Each goes through
``ingress.envelope`` (which must never raise) and then, in batches, through the orchestrator's
own commit path (the bus's unit of work: retried, split, the culprit dead-lettered) against a
real migrated PostgreSQL database. Every message must end accepted, duplicate or dead, every
dead one with its row in ``dead_letters`` and a reason from ``ingress.Reason``, and every
accepted start event with its saga.

The AMQP side is fuzzed too: ``envelope_of`` over fake aiormq deliveries whose pamqp properties
hold odd values, and content-header frames built byte by byte (any shortstr bytes, any table)
decoded by pamqp with the orchestrator's tolerant decoders installed.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import json
import os
import struct
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import asyncpg
import pamqp.frame
import pytest
from aiormq.abc import DeliveredMessage
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pamqp import commands, header

from orchestrator.adapters.amqp import broker as amqp_broker
from orchestrator.adapters.postgres import store as postgres_store
from orchestrator.adapters.postgres.store import PostgresStore
from orchestrator.core import ingress
from orchestrator.core.engine import saga_id_for
from orchestrator.core.ingress import Envelope, Reason
from orchestrator.core.routing import Registry
from orchestrator.entrypoints.bootstrap import build, load_workflows
from orchestrator.entrypoints.runtime import Orchestrator
from orchestrator.entrypoints.settings import Settings
from orchestrator.service.batch import Verdict
from tests.integration import raw_amqp
from tests.integration.conftest import migrated_database

pytestmark = pytest.mark.integration

REASONS = {str(r) for r in Reason}
START_TYPES = {"orders.OrderPlaced": ("order", "order_id"), "escrow.EscrowOpened": ("escrow", "escrow_id")}
#: FUZZ_EXAMPLES=5000 for a longer hunt; the default keeps the module well under a minute
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")),
    deadline=None,
    database=None,  # nothing written into the worktree; a failure prints its reproduce blob
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

# --- strategies -------------------------------------------------------------------------------

#: the characters that break things: NUL, lone surrogates, line breaks of every kind, controls
NASTY = ["\x00", "\ud800", "\udfff", "\udc80", "\n", "\r", "\u2028", "\x85", "\x1b[31m", "\ufeff", "…"]
nasty_text = st.lists(st.one_of(st.characters(), st.sampled_from(NASTY)), max_size=40).map("".join)
any_text = st.one_of(st.text(max_size=40), nasty_text)
long_text = st.integers(200, 600).map(lambda n: "é" * n)  # over 255 bytes as UTF-8 from 128 on
huge_ints = st.one_of(st.integers(), st.sampled_from([2**63, 2**64 - 1, 2**64, -(2**63) - 1, 2**70, 10**40]))
floats = st.floats(allow_nan=True, allow_infinity=True)
leaf_objects = st.one_of(
    st.none(),
    st.booleans(),
    huge_ints,
    floats,
    st.decimals(allow_nan=True, allow_infinity=True),
    st.datetimes(),
    st.dates(),
    st.builds(object),
    st.binary(max_size=40).map(bytearray),
    st.binary(max_size=40).map(memoryview),
    st.uuids(),
)
#: a shortstr property as a client can set it: absent, text of any kind, bytes of any kind,
#: something that is not text at all, or longer than AMQP allows
property_value = st.one_of(
    st.none(),
    st.just(""),
    any_text,
    st.binary(max_size=300),
    st.sampled_from([b"\xff\xfe", b"m-\xc3", b"\xed\xa0\x80", b"ok"]),
    long_text,
    leaf_objects,
    st.lists(any_text, max_size=3),
    st.dictionaries(any_text, any_text, max_size=3),
)
header_key = st.one_of(
    any_text, st.binary(max_size=20), st.sampled_from(["x-workflow", "x-original-exchange"])
)
header_leaf = st.one_of(
    st.none(),
    st.booleans(),
    huge_ints,
    floats,
    any_text,
    st.binary(max_size=60),
    st.datetimes(),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.integers(1000, 20_000).map(lambda n: "h" * n),  # near and over the 16 KiB budget
)
header_value = st.recursive(
    header_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(header_key, inner, max_size=4), st.tuples(inner)
    ),
    max_leaves=20,
)
x_workflow = st.sampled_from(
    ["order", "escrow", "nope", "", b"order", b"\xff", 5, "o" * 300, None, ["order"]]
)
headers = st.one_of(
    st.none(),
    st.dictionaries(header_key, header_value, max_size=6),
    st.fixed_dictionaries({"x-workflow": x_workflow}),
    st.builds(lambda v: {"x": _nested(v)}, st.integers(30, 40)),  # around the depth limit
    st.sampled_from(["not a table", ["a", "list"], 7]),
)

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    huge_ints,
    st.floats(allow_nan=False, allow_infinity=False),
    any_text,
    long_text,
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(any_text, inner, max_size=4)),
    max_leaves=25,
)
#: keys of sagas that fuzzed start events create and later events are sent to
ORDER_KEYS = [f"o-{i}" for i in range(20)]
ESCROW_KEYS = [f"e-{i}" for i in range(20)]
key_value = st.one_of(
    st.sampled_from(ORDER_KEYS + ESCROW_KEYS),
    st.uuids().map(str),
    any_text,
    st.integers(490, 520).map(lambda n: "k" * n),  # around the 500-character key limit
    st.just(""),
    huge_ints,
    st.none(),
)
amount = st.one_of(
    st.integers(0, 10**6), huge_ints, st.sampled_from(["100", "1" * 25, 1.0, 1e19, 1e20, 2.5, True, None])
)
lines = st.one_of(
    st.lists(
        st.fixed_dictionaries({"sku": st.one_of(st.just("sku-1"), any_text), "quantity": amount}),
        max_size=3,
    ),
    json_value,
)
extra = st.dictionaries(any_text, json_value, max_size=3)


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"x": value}
    return value


@st.composite
def order_placed(draw: st.DrawFn) -> dict[str, Any]:
    body = {
        "order_id": draw(st.one_of(st.sampled_from(ORDER_KEYS), st.uuids().map(str), key_value)),
        "customer_id": draw(st.one_of(st.just("c-1"), any_text)),
        "lines": draw(lines),
        "amount_cents": draw(amount),
    }
    if draw(st.booleans()):
        body.update(draw(extra))
    if draw(st.integers(0, 9)) == 0:
        del body[draw(st.sampled_from(sorted(body)))]
    return body


@st.composite
def escrow_opened(draw: st.DrawFn) -> dict[str, Any]:
    body = {
        "escrow_id": draw(st.one_of(st.sampled_from(ESCROW_KEYS), st.uuids().map(str), key_value)),
        "buyer_id": draw(st.one_of(st.just("b-1"), any_text)),
        "seller_id": draw(st.one_of(st.just("s-1"), any_text)),
        "amount_cents": draw(amount),
    }
    if draw(st.booleans()):
        body.update(draw(extra))
    return body


#: fresh ids, unique across the run (hypothesis's own uuids() repeats itself on purpose)
fresh_ids = st.just("m").map(lambda prefix: f"{prefix}-{uuid.uuid4()}")
plain_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20)


def follow_ups(text: st.SearchStrategy[str], keys: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """(type, body) of events to the sagas above: some move them, some park, some come late."""
    order_keys = st.one_of(st.sampled_from(ORDER_KEYS), keys)
    escrow_keys = st.one_of(st.sampled_from(ESCROW_KEYS), keys)
    return st.one_of(
        st.tuples(
            st.sampled_from(["inventory.StockReserved", "payment.PaymentCharged", "shipping.OrderShipped"]),
            st.fixed_dictionaries(
                {"order_id": order_keys, "reservation_id": text, "charge_id": text, "tracking_id": text}
            ),
        ),
        st.tuples(
            st.sampled_from(["inventory.OutOfStock", "payment.PaymentDeclined", "shipping.ShipmentFailed"]),
            st.fixed_dictionaries({"order_id": order_keys, "sku": text, "reason": text}),
        ),
        st.tuples(
            st.sampled_from(["seller.SellerSigned", "buyer.BuyerSigned", "bank.FundsReceived"]),
            st.fixed_dictionaries({"escrow_id": escrow_keys}),
        ),
        st.tuples(
            st.sampled_from(["buyer.BuyerRefused", "bank.FundsDeclined"]),
            st.fixed_dictionaries({"escrow_id": escrow_keys, "reason": text}),
        ),
    )


def _json_bytes(value: Any, ascii_only: bool) -> bytes:
    """JSON as a lax encoder writes it: lone surrogates escaped (or raw, so not UTF-8), 70-bit
    integers, NaN."""
    text = json.dumps(value, ensure_ascii=ascii_only, allow_nan=True)
    return text.encode("utf-8", "surrogatepass")


#: events that fit their schema, to the sagas above (or new ones): the service's daily bread
valid_events = st.one_of(
    st.tuples(
        st.just("orders.OrderPlaced"),
        st.fixed_dictionaries(
            {
                "order_id": st.one_of(st.sampled_from(ORDER_KEYS), fresh_ids),
                "customer_id": st.just("c-1"),
                "lines": st.lists(
                    st.fixed_dictionaries({"sku": st.just("sku-1"), "quantity": st.integers(1, 5)}),
                    min_size=1,
                    max_size=3,
                ),
                "amount_cents": st.integers(0, 10**6),
            }
        ),
    ),
    st.tuples(
        st.just("escrow.EscrowOpened"),
        st.fixed_dictionaries(
            {
                "escrow_id": st.one_of(st.sampled_from(ESCROW_KEYS), fresh_ids),
                "buyer_id": st.just("b-1"),
                "seller_id": st.just("s-1"),
                "amount_cents": st.integers(0, 10**6),
            }
        ),
    ),
    follow_ups(plain_text, st.nothing()),
)


@st.composite
def bodies(draw: st.DrawFn) -> tuple[str | None, bytes]:
    """(the type the body was made for, if any; the body)."""
    kind = draw(
        st.sampled_from(["valid"] * 4 + ["order", "order", "escrow", "follow", "json", "bytes", "odd"])
    )
    if kind == "valid":
        type_, body = draw(valid_events)
        return type_, _json_bytes(body, draw(st.booleans()))
    if kind == "bytes":
        return None, draw(st.binary(max_size=200))
    if kind == "odd":
        return None, draw(
            st.sampled_from(
                [
                    b"",
                    b"null",
                    b"[]",
                    b'"x"',
                    b'{"order_id": "\\ud800"}',
                    b'{"a": "\\u0000"}',
                    b'{"a": 1e400}',
                    b'{"a": 123456789012345678901234567890}',
                    b"[" * 2000 + b"]" * 2000,
                    b'{"a":' * 40 + b"1" + b"}" * 40,
                    b"\xef\xbb\xbf{}",
                    b'{"a": 1, "a": 2}',
                    b'{"' + b"k" * 100_000 + b'": 1}',  # a long key
                    b'{"order_id": "' + b"\xf0\x9f\x98\x80" * 600 + b'"}',  # 600 4-byte characters
                    b"{" + b" " * (1024 * 1024) + b"}",  # over the size cap
                ]
            )
        )
    if kind == "json":
        return None, _json_bytes(draw(json_value), draw(st.booleans()))
    if kind == "follow":
        type_, body = draw(follow_ups(any_text, key_value))
        return type_, _json_bytes(body, draw(st.booleans()))
    body = draw(order_placed() if kind == "order" else escrow_opened())
    type_ = "orders.OrderPlaced" if kind == "order" else "escrow.EscrowOpened"
    return type_, _json_bytes(body, draw(st.booleans()))


#: message ids: fresh, shared (duplicates within and across batches), or bad
message_ids = st.one_of(
    fresh_ids,
    fresh_ids,
    st.sampled_from(["dup-1", "dup-2", "dup-3"]),
    property_value,
)


@dataclass
class Raw:
    body: bytes
    properties: dict[str, Any]
    exchange: Any
    routing_key: Any
    #: the type the body was built for (None: random bytes or random JSON)
    made_for: str | None
    #: a message id that ingress would refuse, smuggled past it into the envelope: what
    #: PostgreSQL (or the driver) then refuses, as it would anything a rule had missed
    smuggled: str | None = None


@st.composite
def deliveries(draw: st.DrawFn) -> Raw:
    """A delivery as a well-behaved client sends it, or (four times in ten) as a hostile one."""
    made_for, body = draw(bodies())
    hostile = draw(st.sampled_from([False, False, False, True, True]))
    if made_for is None or (hostile and draw(st.booleans())):
        type_ = draw(st.one_of(st.sampled_from([*START_TYPES, "inventory.StockReserved"]), property_value))
    else:
        type_ = made_for
    dups = st.sampled_from(["dup-1", "dup-2"])
    ids = message_ids if hostile else st.one_of(fresh_ids, fresh_ids, fresh_ids, dups)
    properties: dict[str, Any] = {"type": type_, "message_id": draw(ids), "delivery_mode": 2}
    if draw(st.integers(0, 3)) == 0:
        properties["correlation_id"] = draw(
            st.one_of(
                property_value if hostile else st.none(),
                st.sampled_from([saga_id_for("order", k) for k in ORDER_KEYS]),
                fresh_ids,
            )
        )
    if hostile:
        for name in draw(st.lists(st.sampled_from(OPTIONAL), max_size=3)):
            properties[name] = draw(property_value)
        if draw(st.booleans()):
            properties["headers"] = draw(headers)
        if draw(st.integers(0, 4)) == 0:
            properties["timestamp"] = draw(st.one_of(st.datetimes(), huge_ints, any_text))
            properties["delivery_mode"] = draw(st.one_of(st.integers(-5, 300), any_text))
            properties["priority"] = draw(st.one_of(st.integers(-5, 300), st.none()))
    else:
        properties["content_type"] = "application/json"
        if draw(st.booleans()):
            properties["headers"] = draw(
                st.sampled_from(
                    [{}, {"x-workflow": "order"}, {"x-workflow": "escrow"}, {"x-trace": [1, "a"]}]
                )
            )
    exchange = draw(st.one_of(st.just("fuzz.events"), st.just(""), any_text, st.binary(max_size=20)))
    routing_key = draw(st.one_of(st.just(made_for or "x"), any_text, st.binary(max_size=20)))
    smuggled = None
    if draw(st.sampled_from([False] * 14 + [True])):
        smuggled = "smuggled-" + draw(st.sampled_from(["\x00", "\ud800"])) + f"-{uuid.uuid4()}"
    return Raw(body, properties, exchange, routing_key, made_for, smuggled)


OPTIONAL = ["content_type", "content_encoding", "reply_to", "expiration", "user_id", "app_id"]


# --- the database -----------------------------------------------------------------------------


@dataclass
class Rig:
    runner: asyncio.Runner
    orchestrator: Orchestrator
    connection: asyncpg.Connection
    batches: int = 0
    #: per message, how it ended (a verdict, or the reason it was dead-lettered)
    seen: Counter[str] = field(default_factory=Counter)


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    """A database of its own, migrated once for the module, and an orchestrator that is never
    started: its bus needs only the store (the relay and the deadline alarm just queue what it
    hands them in memory; no broker connection is made until ``start``)."""
    with migrated_database("orchestrator_fuzz") as url, asyncio.Runner() as runner:

        async def rigged() -> Rig:
            store = PostgresStore.from_url(url, pool_size=2)
            registry = Registry(load_workflows("orchestrator.examples"), max_parked=3)
            orchestrator = build(Settings(database_url=url), registry=registry, store=store)
            connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
            return Rig(runner, orchestrator, connection)

        rig = runner.run(rigged())
        try:
            yield rig
            # it never connected to anything but PostgreSQL
            assert rig.orchestrator.broker._publish_connection is None
            assert rig.orchestrator.broker.consumer._connection is None
            assert not rig.orchestrator.deadlines.alarm.running  # type: ignore[attr-defined]
        finally:
            runner.run(rig.connection.close())
            runner.run(rig.orchestrator.store.close())


async def _commit_and_check(rig: Rig, raws: list[Raw], envelopes: list[Envelope]) -> None:
    connection = rig.connection
    last = await connection.fetchval("SELECT coalesce(max(id), 0) FROM dead_letters")
    arrived = [time.monotonic()] * len(envelopes)
    result = await rig.orchestrator.bus.handle(envelopes, arrived)  # must not raise
    rig.batches += 1

    assert len(result.verdicts) == len(result.refusals) == len(envelopes)
    assert set(result.verdicts) <= set(Verdict)
    rows = await connection.fetch("SELECT reason, detail FROM dead_letters WHERE id > $1", last)
    dead = [r for v, r in zip(result.verdicts, result.refusals, strict=True) if v is Verdict.DEAD]
    assert all(r is not None for r in dead)
    assert len(rows) == len(dead), (rows, dead)
    assert Counter(row["reason"] for row in rows) == Counter(str(r.reason) for r in dead if r)
    assert {row["reason"] for row in rows} <= REASONS
    assert all(len(row["detail"]) <= ingress.MAX_DETAIL + 20 for row in rows)

    for raw, envelope, verdict, refusal in zip(
        raws, envelopes, result.verdicts, result.refusals, strict=True
    ):
        event(f"verdict: {verdict}")
        rig.seen[str(refusal.reason) if refusal is not None else str(verdict)] += 1
        if raw.smuggled is not None and refusal is not None:
            event(f"smuggled: {refusal.reason}")
        if raw.smuggled is not None and verdict is not Verdict.DUPLICATE:  # it cannot have been taken
            assert refusal is not None, envelope
        if refusal is not None:
            event(f"dead: {refusal.reason}")
            assert verdict is Verdict.DEAD
            continue
        assert envelope.message_id, "only a message with an id is taken"
        taken = await connection.fetchval(
            "SELECT count(*) FROM inbox WHERE message_id = $1", envelope.message_id
        )
        assert taken == 1, f"{verdict} message {envelope.message_id!r} is not in the inbox"
        if verdict is Verdict.ACCEPTED and envelope.type in START_TYPES:
            workflow, key_field = START_TYPES[envelope.type]
            correlated = envelope.correlation_id and await connection.fetchval(
                "SELECT count(*) FROM sagas WHERE id = $1", envelope.correlation_id
            )
            if not correlated:
                key = json.loads(envelope.body)[key_field]
                saga = await connection.fetchval(
                    "SELECT count(*) FROM sagas WHERE id = $1", saga_id_for(workflow, str(key))
                )
                assert saga == 1, f"accepted start event {envelope.message_id!r} has no saga"
                event(f"started: {workflow}")


@FUZZ
@given(batch=st.lists(deliveries(), min_size=1, max_size=20))
def test_any_batch_of_deliveries_ends_accepted_duplicate_or_dead(rig: Rig, batch: list[Raw]) -> None:
    envelopes = []
    for raw in batch:
        envelope = ingress.envelope(raw.body, raw.properties, raw.exchange, raw.routing_key)
        assert isinstance(envelope, Envelope)
        assert envelope.refused is None or envelope.refused.reason in set(Reason)
        # what the dead-letter record of it would be is always storable
        letter = ingress.dead_letter_of(envelope, envelope.refused or ingress.Refused(Reason.UNKNOWN, "x"))
        postgres_store._dumps(letter.properties)
        if raw.smuggled is not None:
            envelope = replace(envelope, message_id=raw.smuggled, type=raw.made_for or "orders.OrderPlaced")
            envelope = replace(envelope, refused=None)
        envelopes.append(envelope)
    rig.runner.run(_commit_and_check(rig, batch, envelopes))


# --- the AMQP side ------------------------------------------------------------------------------

#: every basic property pamqp knows, with what a broken or hostile client may have put there
PAMQP_PROPERTIES = [
    "content_type",
    "content_encoding",
    "headers",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "message_type",
    "user_id",
    "app_id",
    "cluster_id",
]
odd_value = st.one_of(property_value, headers, st.integers(), st.floats(), st.datetimes())


@st.composite
def delivered_messages(draw: st.DrawFn) -> DeliveredMessage:
    if draw(st.integers(0, 9)) == 0:
        properties: Any = amqp_broker.UndecodableProperties()
        properties.error = draw(any_text)
        properties.raw = draw(st.binary(max_size=50))
    elif draw(st.integers(0, 19)) == 0:
        properties = draw(st.sampled_from([None, object(), "props"]))
    else:
        properties = commands.Basic.Properties()
        for name in draw(st.lists(st.sampled_from(PAMQP_PROPERTIES), unique=True)):
            setattr(properties, name, draw(odd_value))  # set as is: pamqp's validation skipped
    delivery: Any = commands.Basic.Deliver(
        consumer_tag="ctag", delivery_tag=draw(st.integers(1, 2**63)), redelivered=draw(st.booleans())
    )
    delivery.exchange = draw(st.one_of(st.none(), any_text, st.binary(max_size=20), st.integers()))
    delivery.routing_key = draw(st.one_of(st.none(), any_text, st.binary(max_size=20), st.integers()))
    if draw(st.integers(0, 19)) == 0:
        delivery = draw(st.sampled_from([None, object(), commands.Basic.GetEmpty()]))
    content: Any = header.ContentHeader(properties=commands.Basic.Properties())
    content.properties = properties
    if draw(st.integers(0, 19)) == 0:
        content = draw(st.sampled_from([None, object()]))
    body = draw(st.one_of(st.binary(max_size=100), bodies().map(lambda b: b[1]), st.none()))
    return DeliveredMessage(delivery=delivery, header=content, body=body, channel=None)  # type: ignore[arg-type]


@FUZZ
@given(message=delivered_messages())
def test_envelope_of_any_delivery_never_raises(message: DeliveredMessage) -> None:
    envelope = amqp_broker.envelope_of(message)
    assert isinstance(envelope, Envelope)
    assert isinstance(envelope.exchange, str) and isinstance(envelope.routing_key, str)
    if isinstance(getattr(message.header, "properties", None), amqp_broker.UndecodableProperties):
        assert envelope.refused is not None and envelope.refused.reason is Reason.BAD_PROPERTY
    if envelope.refused is None:
        for text in (envelope.type, envelope.message_id, envelope.correlation_id, envelope.workflow):
            assert text is None or ingress.check_text(text) == text
    event(f"envelope_of: {envelope.refused.reason if envelope.refused else 'ok'}")


# Frames built byte by byte (raw_amqp's encoders), never by pamqp's own strict encoder.
shortstr_bytes = st.one_of(
    st.binary(max_size=255), st.sampled_from([b"\xff\xfe", b"\xed\xa0\x80", b"a\x00b"])
)
raw_field = st.builds(
    raw_amqp.RawField,
    st.sampled_from([b"x", b"S", b"s", b"F", b"A", b"T", b"D", b"l", b"I", b"Z", b"?", b"\x00"]),
    st.binary(max_size=24),
)
wire_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.binary(max_size=40),
    any_text.map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.decimals(allow_nan=False, allow_infinity=False, places=3, min_value=-(10**6), max_value=10**6),
    raw_field,
    st.sampled_from([raw_amqp.RawField(b"T", struct.pack(">Q", 2**63 - 1))]),  # past the year 9999
)
wire_table = st.recursive(
    st.dictionaries(shortstr_bytes, wire_leaf, max_size=5),
    lambda inner: st.dictionaries(
        shortstr_bytes, st.one_of(wire_leaf, inner, st.lists(wire_leaf, max_size=3))
    ),
    max_leaves=15,
)
WIRE_SHORTSTRS = [n for n, (_, kind) in raw_amqp.PROPERTIES.items() if kind == "shortstr"]


@st.composite
def content_headers(draw: st.DrawFn) -> tuple[bytes, dict[str, Any]]:
    """(a content header frame as the broker would send it, the shortstr properties in it)."""
    properties: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(WIRE_SHORTSTRS), unique=True)):
        properties[name] = draw(shortstr_bytes)
    if draw(st.booleans()):
        properties["headers"] = draw(wire_table)
    if draw(st.booleans()):
        properties["delivery_mode"] = draw(st.integers(0, 255))
        properties["priority"] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        properties["timestamp"] = draw(
            st.sampled_from([0, 1_700_000_000, 253402300800, 2**63 - 1, 2**64 - 1])
        )
    shortstrs = {n: v for n, v in properties.items() if n in WIRE_SHORTSTRS}
    payload = struct.pack(">HHQ", raw_amqp.BASIC_CLASS, 0, draw(st.integers(0, 2**32)))
    if draw(st.integers(0, 9)) == 0:  # property flags and then anything at all
        payload += struct.pack(">H", draw(st.integers(0, 0xFFFE))) + draw(st.binary(max_size=100))
        shortstrs = {}
    else:
        payload += raw_amqp.encode_properties(properties)
    return raw_amqp.frame(raw_amqp.FRAME_HEADER, 1, payload), shortstrs


@FUZZ
@given(frame=content_headers(), body=st.binary(max_size=50))
def test_any_content_header_decodes_and_gives_an_envelope(
    frame: tuple[bytes, dict[str, Any]], body: bytes
) -> None:
    data, shortstrs = frame
    consumed, channel, decoded = pamqp.frame.unmarshal(data)  # with the tolerant decoders: never raises
    assert (consumed, channel) == (len(data), 1)
    assert isinstance(decoded, header.ContentHeader)
    properties = decoded.properties
    if isinstance(properties, amqp_broker.UndecodableProperties):
        event(f"undecodable: {properties.error.split(':')[0]}")
    else:
        for name, sent in shortstrs.items():  # what came decodes back to the very bytes sent
            value = getattr(properties, "message_type" if name == "type" else name)
            assert value.encode("utf-8", "surrogateescape") == sent
        event("decoded")
    delivery = commands.Basic.Deliver("ctag", 1, False, "fuzz.events", "rk")
    envelope = amqp_broker.envelope_of(DeliveredMessage(delivery, decoded, body, None))  # type: ignore[arg-type]
    assert isinstance(envelope, Envelope)
    event(f"frame envelope: {envelope.refused.reason if envelope.refused else 'ok'}")


def test_an_int_the_schema_reads_from_text_fails_its_saga_not_the_next_message(rig: Rig) -> None:
    """Found by the fuzz test above: ``"amount_cents": "1111111111111111111111111"`` passes the
    ingress rules (it is text) and the schema (pydantic reads it as an int). The order started;
    the innocent ``StockReserved`` that followed built a ``ChargePayment`` orjson cannot encode,
    failed its commit on every try, and was dead-lettered ``failed_repeatedly`` while the saga
    stayed stuck (an escrow, whose first command holds the amount, never started at all). Now
    each saga fails at its start, with the reason (its data holds the amount as the schema reads
    it), and every message is taken; a saga that sent nothing has nothing a reply could answer."""
    order_id, escrow_id = f"big-{uuid.uuid4()}", f"big-{uuid.uuid4()}"
    huge = "1" * 25

    def sent(type_: str, body: dict[str, Any]) -> Envelope:
        return ingress.envelope(_json_bytes(body, True), {"type": type_, "message_id": f"m-{uuid.uuid4()}"})

    placed = {
        "order_id": order_id,
        "customer_id": "c",
        "lines": [{"sku": "s", "quantity": 1}],
        "amount_cents": huge,
    }
    opened = {"escrow_id": escrow_id, "buyer_id": "b", "seller_id": "s", "amount_cents": huge}

    async def run() -> None:
        last = await rig.connection.fetchval("SELECT coalesce(max(id), 0) FROM dead_letters")
        batch = [sent("orders.OrderPlaced", placed), sent("escrow.EscrowOpened", opened)]
        result = await rig.orchestrator.bus.handle(batch, [time.monotonic()] * len(batch))
        assert result.verdicts == [Verdict.ACCEPTED] * len(batch), result.reasons
        assert await rig.connection.fetchval("SELECT count(*) FROM dead_letters WHERE id > $1", last) == 0
        for workflow, key in (("order", order_id), ("escrow", escrow_id)):
            row = await rig.connection.fetchrow(
                "SELECT status, last_error FROM sagas WHERE id = $1", saga_id_for(workflow, key)
            )
            assert row is not None and row["status"] == "failed", (workflow, row)
            assert "is an integer beyond 64 bits" in row["last_error"]

    rig.runner.run(run())


def test_the_fuzzed_database_saw_every_kind_of_verdict(rig: Rig) -> None:
    """After the batches above: the run was not vacuous."""

    async def counts() -> dict[str, int]:
        return {
            "sagas": await rig.connection.fetchval("SELECT count(*) FROM sagas"),
            "duplicates": await rig.connection.fetchval("SELECT coalesce(sum(duplicates), 0) FROM inbox"),
            "dead": await rig.connection.fetchval("SELECT count(DISTINCT reason) FROM dead_letters"),
        }

    if not rig.batches:
        pytest.skip("run with the fuzz test above")
    found = rig.runner.run(counts())
    print(
        f"{rig.batches} batches, {sum(rig.seen.values())} messages: {dict(rig.seen.most_common())}; {found}"
    )
    assert rig.batches >= 100
    # what the commits handed on waits in memory: the relay never ran, nothing was sent
    assert rig.orchestrator.relay.pending.qsize() > 0
    assert rig.orchestrator.metrics.commands_out == 0
    assert found["sagas"] >= 5 and found["duplicates"] >= 1 and found["dead"] >= 8, found


def test_envelope_never_raises_on_a_property_mapping_of_objects() -> None:
    """A smoke case of the above kept as a plain example: properties no rule foresaw."""
    weird = {
        "type": uuid.uuid4(),
        "message_id": decimal.Decimal("NaN"),
        "headers": {"t": datetime.date.today()},
    }
    assert ingress.envelope(b"{}", weird).refused is not None
