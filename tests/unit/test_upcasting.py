"""Event schema versions (issue 13, item 4): a class says which schema it reads, upcasters bring
older payloads to it, on the way in (AMQP and REST alike) and when journals are replayed.

The workflow ``shop`` is defined twice, as two releases of one program: at schema 2 of
``shop.OrderPlaced`` (version 1 sent the total in euros, as text) and at schema 3 (the currency
becomes a code in capitals). The same store is read by both, as a deploy would."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, Literal

import httpx
import orjson
import pytest

from orchestrator import PARK, Command, DefinitionError, Event, Workflow, upcaster
from orchestrator.core.engine import Incoming
from orchestrator.core.ingress import Reason, Refused, envelope
from orchestrator.core.replay import rebuild, verify
from orchestrator.core.upcasting import registered, upcast
from orchestrator.service.batch import Verdict
from orchestrator.service.operations import BadRequest
from orchestrator.testing import WorkflowTestKit
from tests.unit.test_api import build


# version 2 and version 3 of one event, as two releases of the program define it ----------------------
@dataclass(frozen=True)
class PlacedV2(Event):
    TYPE = "shop.OrderPlaced"
    SCHEMA = 2
    order_id: str
    amount_cents: int
    currency: str


@dataclass(frozen=True)
class PlacedV3(Event):
    TYPE = "shop.OrderPlaced"
    SCHEMA = 3
    order_id: str
    amount_cents: int
    currency: Literal["EUR", "USD", "GBP"]


def euros_to_cents(payload: dict[str, Any]) -> dict[str, Any]:
    """1 -> 2: ``total`` was euros as text; the currency was always the euro."""
    total = payload.pop("total")
    return {**payload, "amount_cents": int(Decimal(str(total)) * 100), "currency": "EUR"}


def currency_in_capitals(payload: dict[str, Any]) -> dict[str, Any]:
    """2 -> 3: the currency is a code, in capitals."""
    return {**payload, "currency": str(payload["currency"]).upper()}


upcaster(PlacedV2, from_schema=1)(euros_to_cents)
upcaster(PlacedV3, from_schema=1)(euros_to_cents)
upcaster(PlacedV3, from_schema=2)(currency_in_capitals)


@dataclass(frozen=True)
class PackedV2(Event):
    TYPE = "shop.Packed"
    SCHEMA = 2  # version 1 called the parcel "box"
    order_id: str
    parcel_id: str


@upcaster(PackedV2, from_schema=1)
def box_is_parcel(payload: dict[str, Any]) -> dict[str, Any]:
    return {"order_id": payload["order_id"], "parcel_id": payload["box"]}


@dataclass(frozen=True)
class Charge(Command):
    TYPE = "payment.Charge"
    order_id: str
    amount_cents: int
    currency: str


@dataclass(frozen=True)
class Paid(Event):
    TYPE = "payment.Paid"
    order_id: str


def shop(placed: type[Event]) -> Workflow:
    workflow = Workflow("shop", starts_on=placed, key="order_id")
    workflow.state("charging", send=Charge)
    workflow.state("packing")
    workflow.state("done", final=True)
    workflow.on(Paid, source="charging", dest="packing")
    # the warehouse's Packed answers none of the saga's commands: a signal, taken from outside
    workflow.on(PackedV2, source="charging", then=PARK, signal=True)  # early: kept until it fits
    workflow.on(PackedV2, source="packing", dest="done", signal=True)
    return workflow


def deliver(kit: WorkflowTestKit, type_: str, body: Any, headers: dict[str, Any] | None = None, **props: Any):  # type: ignore[no-untyped-def]
    """A delivery as the broker hands it over: properties, headers, bytes."""
    properties = {"type": type_, "message_id": str(uuid.uuid4()), "headers": headers or {}, **props}
    return kit.deliver(envelope(orjson.dumps(body), properties))


@pytest.fixture
def kit2() -> Any:
    kit = WorkflowTestKit(shop(PlacedV2))
    yield kit
    kit.close()


def released(kit: WorkflowTestKit, placed: type[Event]) -> WorkflowTestKit:
    """The next release of the program on the same database: a kit over the same store."""
    return WorkflowTestKit(shop(placed), now=kit.now, store=kit.store)


# the chain --------------------------------------------------------------------------------------------
def test_upcasters_chain_from_any_older_version_to_the_class_s() -> None:
    assert upcast(PlacedV3, {"order_id": "o", "total": "12.5"}, 1) == {
        "order_id": "o",
        "amount_cents": 1250,
        "currency": "EUR",
    }
    assert upcast(PlacedV3, {"order_id": "o", "amount_cents": 5, "currency": "usd"}, 2)["currency"] == "USD"
    same = {"order_id": "o", "amount_cents": 5, "currency": "GBP"}
    assert upcast(PlacedV3, same, 3) is same  # the usual case costs nothing
    assert sorted(registered(PlacedV3)) == [1, 2]


def test_an_upcaster_gets_a_copy_and_the_payload_as_it_came_is_kept() -> None:
    came = {"order_id": "o", "total": "1", "nested": {"a": [1]}}

    def meddler(payload: dict[str, Any]) -> dict[str, Any]:
        payload["nested"]["a"].append(2)
        return euros_to_cents(payload)

    @dataclass(frozen=True)
    class Meddled(Event):
        TYPE = "shop.Meddled"
        SCHEMA = 2

    upcaster(Meddled, from_schema=1)(meddler)
    upcast(Meddled, came, 1)
    assert came == {"order_id": "o", "total": "1", "nested": {"a": [1]}}


def test_a_version_newer_than_the_class_or_without_its_upcaster_is_refused() -> None:
    with pytest.raises(Refused) as newer:
        upcast(PlacedV2, {"order_id": "o"}, 3)
    assert newer.value.reason is Reason.SCHEMA_VERSION
    assert "newer than this orchestrator reads (schema 2)" in newer.value.detail

    @dataclass(frozen=True)
    class Gap(Event):
        TYPE = "shop.Gap"
        SCHEMA = 3

    upcaster(Gap, from_schema=2)(currency_in_capitals)  # 1 -> 2 was dropped
    with pytest.raises(Refused) as gap:
        upcast(Gap, {}, 1)
    assert gap.value.reason is Reason.SCHEMA_VERSION
    assert gap.value.detail == "shop.Gap of schema 1: no upcaster from schema 1 to 2"


def test_upcasters_that_cannot_run_are_refused_where_they_are_written() -> None:
    with pytest.raises(DefinitionError, match="from_schema must be an integer from 1 to 1"):
        upcaster(PlacedV2, from_schema=2)
    with pytest.raises(DefinitionError, match="from_schema must be an integer from 1 to 1"):
        upcaster(PlacedV2, from_schema=0)
    with pytest.raises(DefinitionError, match="two upcasters from schema 1"):
        upcaster(PlacedV2, from_schema=1)(euros_to_cents)
    with pytest.raises(TypeError, match="SCHEMA must be an integer >= 1"):

        @dataclass(frozen=True)
        class Bad(Event):
            TYPE = "shop.Bad"
            SCHEMA = 0


# the way in: AMQP -------------------------------------------------------------------------------------
def test_a_v1_message_without_the_header_and_a_v2_one_make_the_same_saga(kit2: WorkflowTestKit) -> None:
    first = deliver(kit2, "shop.OrderPlaced", {"order_id": "o-1", "total": "12.50"})
    second = deliver(
        kit2,
        "shop.OrderPlaced",
        {"order_id": "o-2", "amount_cents": 1250, "currency": "EUR"},
        {"x-schema-version": 2},
    )
    assert first.verdicts == second.verdicts == [Verdict.ACCEPTED]
    one, two = kit2.saga("o-1"), kit2.saga("o-2")
    assert one.data == {"order_id": "o-1", "amount_cents": 1250, "currency": "EUR"}
    assert dict(two.data) == {**one.data, "order_id": "o-2"}
    assert [dict(c.payload) for c in kit2.take_sent()] == [
        {"order_id": "o-1", "amount_cents": 1250, "currency": "EUR"},
        {"order_id": "o-2", "amount_cents": 1250, "currency": "EUR"},
    ]
    # the journal keeps each as it came, with its version (1: not written)
    [entry] = kit2.journal(one)
    assert entry.message.payload == {"order_id": "o-1", "total": "12.50"} and entry.message.schema == 1
    assert "schema" not in entry.message.as_json()
    [entry] = kit2.journal(two)
    assert entry.message.schema == 2 and entry.message.as_json()["schema"] == 2
    assert kit2.replay_differences(one) == kit2.replay_differences(two) == []


@pytest.mark.parametrize(
    ("header", "why"),
    [
        ("2", "x-schema-version is not an integer but str"),
        (True, "x-schema-version is not an integer but bool"),
        (2.0, "x-schema-version is not an integer but float"),
        (0, "x-schema-version must be from 1 to 2147483647, not 0"),
        (-1, "x-schema-version must be from 1 to 2147483647, not -1"),
    ],
)
def test_a_schema_version_that_is_no_integer_from_1_is_a_bad_header(
    kit2: WorkflowTestKit, header: Any, why: str
) -> None:
    result = deliver(
        kit2, "shop.OrderPlaced", {"order_id": "o-1", "total": "1"}, {"x-schema-version": header}
    )
    assert result.verdicts == [Verdict.DEAD]
    assert result.refusals[0] is not None and result.refusals[0].reason is Reason.BAD_HEADER
    assert result.reasons == [why]


def test_a_version_too_new_is_dead_lettered_with_its_reason(kit2: WorkflowTestKit) -> None:
    result = deliver(
        kit2,
        "shop.OrderPlaced",
        {"order_id": "o-1", "amount_cents": 1, "currency": "EUR"},
        {"x-schema-version": 3},
    )
    assert result.verdicts == [Verdict.DEAD]
    assert result.refusals[0] is not None and result.refusals[0].reason is Reason.SCHEMA_VERSION
    [dead] = kit2.store.dead_letters
    assert dead.reason == "schema_version" and dead.properties["headers"] == {"x-schema-version": 3}
    assert "shop.OrderPlaced of schema 3 is newer than this orchestrator reads (schema 2)" in dead.detail


def test_an_upcaster_that_raises_refuses_that_message_only() -> None:
    @dataclass(frozen=True)
    class Fragile(Event):
        TYPE = "shop.OrderPlaced"
        SCHEMA = 2
        order_id: str
        amount_cents: int
        currency: str

    @upcaster(Fragile, from_schema=1)
    def fragile(payload: dict[str, Any]) -> dict[str, Any]:
        if payload["total"] == "boom":
            raise ValueError("cannot read boom")
        return euros_to_cents(payload)

    kit = WorkflowTestKit(shop(Fragile))
    try:
        bodies = [{"order_id": f"o-{n}", "total": total} for n, total in enumerate(["1", "boom", "3"])]
        envelopes = [
            envelope(orjson.dumps(b), {"type": "shop.OrderPlaced", "message_id": f"m-{n}"})
            for n, b in enumerate(bodies)
        ]
        result = kit._loop.run_until_complete(_batch(kit, envelopes))
        assert result.verdicts == [Verdict.ACCEPTED, Verdict.DEAD, Verdict.ACCEPTED]
        refused = result.refusals[1]
        assert refused is not None and refused.reason is Reason.UPCAST_FAILED
        assert (
            refused.detail
            == "shop.OrderPlaced: the upcaster from schema 1 raised ValueError: cannot read boom"
        )
        assert kit.saga("o-0").data["amount_cents"] == 100 and kit.saga("o-2").data["amount_cents"] == 300
        [dead] = kit.store.dead_letters
        assert dead.reason == "upcast_failed" and dead.message_id == "m-1"
    finally:
        kit.close()


async def _batch(kit: WorkflowTestKit, envelopes: list[Any]) -> Any:
    from orchestrator.service.batch import process_batch

    return await process_batch(kit.registry, kit.store, envelopes, kit.now)


def test_an_upcaster_that_returns_no_object_is_refused(kit2: WorkflowTestKit) -> None:
    @dataclass(frozen=True)
    class Listy(Event):
        TYPE = "shop.Listy"
        SCHEMA = 2

    upcaster(Listy, from_schema=1)(lambda payload: [payload])  # type: ignore[arg-type,return-value]
    with pytest.raises(Refused, match="returned list, not a JSON object") as refused:
        upcast(Listy, {}, 1)
    assert refused.value.reason is Reason.UPCAST_FAILED


def test_the_upcast_payload_is_validated_and_keyed(kit2: WorkflowTestKit) -> None:
    """Upcast first, then the schema: a v1 body that upcasts into nonsense is ``schema``."""
    result = deliver(kit2, "shop.OrderPlaced", {"order_id": "o-1", "total": "many"})
    assert result.refusals[0] is not None and result.refusals[0].reason is Reason.UPCAST_FAILED
    result = deliver(
        kit2,
        "shop.OrderPlaced",
        {"order_id": "o-1", "amount_cents": "x", "currency": "EUR"},
        {"x-schema-version": 2},
    )
    assert result.refusals[0] is not None and result.refusals[0].reason is Reason.SCHEMA


# the way in: REST ---------------------------------------------------------------------------------------
def test_a_start_over_rest_says_its_version_in_the_request(kit2: WorkflowTestKit) -> None:
    kit2.start("shop", "o-1", {"total": "2.00"})  # no version said: 1
    kit2.start("shop", "o-2", {"amount_cents": 200, "currency": "EUR"}, schema_version=2)
    assert kit2.saga("o-1").data == {"order_id": "o-1", "amount_cents": 200, "currency": "EUR"}
    assert dict(kit2.saga("o-2").data) == {"order_id": "o-2", "amount_cents": 200, "currency": "EUR"}
    [entry] = kit2.journal(kit2.saga("o-1"))
    assert entry.message.schema == 2  # the start is validated and stored at the class's version
    with pytest.raises(BadRequest, match=r"schema_version: shop\.OrderPlaced of schema 3 is newer"):
        kit2.start("shop", "o-3", {"amount_cents": 200, "currency": "EUR"}, schema_version=3)
    assert kit2.replay_differences(kit2.saga("o-1")) == []


async def test_post_sagas_refuses_a_version_it_cannot_read_with_422() -> None:
    context, app = build(api_token="t0ken")
    auth = {"Authorization": "Bearer t0ken"}
    start = {"workflow": "order", "key": "o-1", "data": {"customer_id": "c", "lines": [], "amount_cents": 1}}
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
        ) as client:
            too_new = await client.post("/sagas", json={**start, "schema_version": 2}, headers=auth)
            assert too_new.status_code == 422
            assert "orders.OrderPlaced of schema 2 is newer than this orchestrator reads" in too_new.text
            for bad in ("1", 0, 1.5, True):
                answer = await client.post("/sagas", json={**start, "schema_version": bad}, headers=auth)
                assert answer.status_code == 422, bad
        schema = app.openapi()["components"]["schemas"]["Start_order"]
        assert schema["properties"]["schema_version"]["default"] == 1
    finally:
        await context.store.close()


# replay across releases -----------------------------------------------------------------------------
def _journal_at_v2(kit2: WorkflowTestKit) -> None:
    deliver(kit2, "shop.OrderPlaced", {"order_id": "o-1", "total": "12.50"})
    deliver(
        kit2,
        "shop.OrderPlaced",
        {"order_id": "o-2", "amount_cents": 99, "currency": "USD"},
        {"x-schema-version": 2},
    )
    for command in kit2.take_sent():
        kit2.reply(command, Paid(command.payload["order_id"]))


def test_a_journal_of_v1_and_v2_entries_verifies_clean_after_the_move_to_v3(kit2: WorkflowTestKit) -> None:
    _journal_at_v2(kit2)
    kit3 = released(kit2, PlacedV3)
    try:
        for key in ("o-1", "o-2"):
            saga = kit3.saga(key)
            assert saga.state == "packing"
            assert kit3.replay_differences(saga) == []
            # the replay went through the newer chain: 1 -> 2 -> 3 and 2 -> 3
            records = kit3._loop.run_until_complete(kit3.store.records(saga.id))
            assert rebuild(kit3.registry.workflows["shop"], records.journal).saga == saga
        # and the newer release takes both versions, and its own, alongside
        deliver(kit3, "shop.OrderPlaced", {"order_id": "o-3", "total": "1"})
        deliver(
            kit3,
            "shop.OrderPlaced",
            {"order_id": "o-4", "amount_cents": 1, "currency": "gbp"},
            {"x-schema-version": 2},
        )
        deliver(
            kit3,
            "shop.OrderPlaced",
            {"order_id": "o-5", "amount_cents": 1, "currency": "GBP"},
            {"x-schema-version": 3},
        )
        assert [kit3.saga(k).data["currency"] for k in ("o-3", "o-4", "o-5")] == ["EUR", "GBP", "GBP"]
        assert all(kit3.replay_differences(kit3.saga(k)) == [] for k in ("o-3", "o-4", "o-5"))
    finally:
        kit3.close()


def test_a_change_that_alters_the_data_a_saga_took_is_reported_by_verify(kit2: WorkflowTestKit) -> None:
    """What the docs say: replay reads old entries through today's class; a saga whose data the
    newer upcaster would read differently is reported, not silently taken as clean."""
    deliver(
        kit2,
        "shop.OrderPlaced",
        {"order_id": "o-1", "amount_cents": 5, "currency": "usd"},
        {"x-schema-version": 2},
    )
    kit3 = released(kit2, PlacedV3)
    try:
        found = kit3.replay_differences(kit3.saga("o-1"))
        assert any(line.startswith("data: row has") and "'usd'" in line and "'USD'" in line for line in found)
    finally:
        kit3.close()


def test_a_journal_the_loaded_upcasters_cannot_read_is_one_difference(kit2: WorkflowTestKit) -> None:
    deliver(kit2, "shop.OrderPlaced", {"order_id": "o-1", "total": "1"})
    saga = kit2.saga("o-1")
    records = kit2._loop.run_until_complete(kit2.store.records(saga.id))

    @dataclass(frozen=True)
    class NoOldReaders(Event):  # version 1 no longer read: its upcaster was removed
        TYPE = "shop.OrderPlaced"
        SCHEMA = 2
        order_id: str
        amount_cents: int
        currency: str

    newer = WorkflowTestKit(shop(NoOldReaders))
    try:
        assert verify(newer.registry.workflows["shop"], records) == [
            "the journal cannot be replayed: schema_version: shop.OrderPlaced of schema 1:"
            " no upcaster from schema 1 to 2"
        ]
    finally:
        newer.close()


def test_entries_journaled_before_schema_versions_read_as_version_1() -> None:
    before = {
        "type": "shop.OrderPlaced",
        "message_id": "m",
        "payload": {"total": "1"},
        "kind": "event",
        "actor": None,
    }
    message = Incoming.from_json(before)
    assert message.schema == 1 and message.as_json() == before  # written back byte for byte
    assert Incoming.from_json({**before, "schema": 2}).schema == 2


def test_a_parked_event_is_kept_as_it_came_and_upcast_when_applied(kit2: WorkflowTestKit) -> None:
    deliver(kit2, "shop.OrderPlaced", {"order_id": "o-1", "total": "1"})
    saga = kit2.saga("o-1")
    deliver(kit2, "shop.Packed", {"order_id": "o-1", "box": "b-7"}, correlation_id=saga.id)  # early, v1
    parked = kit2.saga("o-1").parked
    assert [(p["payload"], p.get("schema")) for p in parked] == [({"order_id": "o-1", "box": "b-7"}, None)]
    assert kit2.replay_differences(kit2.saga("o-1")) == []
    [charge] = kit2.take_sent()
    kit2.reply(charge, Paid("o-1"))
    done = kit2.saga("o-1")
    assert done.state == "done" and done.data["parcel_id"] == "b-7" and not done.parked
    assert kit2.replay_differences(done) == []


def test_a_parked_v2_event_is_applied_by_the_next_release_through_its_chain(kit2: WorkflowTestKit) -> None:
    deliver(
        kit2,
        "shop.OrderPlaced",
        {"order_id": "o-1", "amount_cents": 1, "currency": "usd"},
        {"x-schema-version": 2},
    )
    saga = kit2.saga("o-1")
    deliver(
        kit2,
        "shop.Packed",
        {"order_id": "o-1", "parcel_id": "p-1"},
        {"x-schema-version": 2},
        correlation_id=saga.id,
    )
    assert kit2.saga("o-1").parked[0]["schema"] == 2
    [charge] = kit2.take_sent()
    kit3 = released(kit2, PlacedV3)
    try:
        kit3.reply(charge, Paid("o-1"))
        assert kit3.saga("o-1").state == "done" and kit3.saga("o-1").data["parcel_id"] == "p-1"
    finally:
        kit3.close()


def test_a_skip_records_the_version_of_its_outcome_s_data(kit2: WorkflowTestKit) -> None:
    deliver(kit2, "shop.OrderPlaced", {"order_id": "o-1", "total": "1"})
    kit2.reply(kit2.take_sent()[0], Paid("o-1"))
    kit2.act(kit2.saga("o-1"), "skip", outcome="shop.Packed", data={"parcel_id": "p-9"})
    done = kit2.saga("o-1")
    assert done.state == "done" and done.data["parcel_id"] == "p-9"
    skip = kit2.journal(done)[-1].message
    assert skip.payload["schema"] == 2 and skip.payload["data"] == {"parcel_id": "p-9"}
    assert kit2.replay_differences(done) == []
    # an operator's skip journaled before schema versions (no "schema") reads its data as version 1
    old = replace(skip, payload={"outcome": "shop.Packed", "data": {"order_id": "o-1", "box": "b-1"}})
    records = kit2._loop.run_until_complete(kit2.store.records(done.id))
    entries = [*records.journal[:-1], replace(records.journal[-1], message=old)]
    assert rebuild(kit2.registry.workflows["shop"], entries).saga.data["parcel_id"] == "b-1"  # type: ignore[union-attr]


def test_two_workflows_read_one_type_each_at_its_own_version() -> None:
    """Upcasters belong to a class, not to a wire type: each workflow reads with its own."""
    other = Workflow("ledger", starts_on=PlacedV3, key="order_id")
    other.state("open")
    kit = WorkflowTestKit(shop(PlacedV2), other)
    try:
        result = deliver(
            kit,
            "shop.OrderPlaced",
            {"order_id": "o-1", "amount_cents": 1, "currency": "usd"},
            {"x-schema-version": 2},
        )
        assert result.verdicts == [Verdict.ACCEPTED]
        assert kit.saga("o-1", "shop").data["currency"] == "usd"
        assert kit.saga("o-1", "ledger").data["currency"] == "USD"
        assert kit.replay_differences(kit.saga("o-1", "shop")) == []
        assert kit.replay_differences(kit.saga("o-1", "ledger")) == []
        too_new = deliver(
            kit,
            "shop.OrderPlaced",
            {"order_id": "o-2", "amount_cents": 1, "currency": "USD"},
            {"x-schema-version": 3},
        )
        assert too_new.refusals[0] is not None and too_new.refusals[0].reason is Reason.SCHEMA_VERSION
    finally:
        kit.close()


def test_the_test_kit_publishes_a_message_in_the_version_its_class_reads(kit2: WorkflowTestKit) -> None:
    kit2.publish(PlacedV2("o-1", 7, "EUR"))
    [entry] = kit2.journal(kit2.saga("o-1"))
    assert entry.message.schema == 2 and kit2.saga("o-1").data["amount_cents"] == 7


def test_orchestrator_check_warns_of_an_upcaster_missing_on_the_way() -> None:
    from orchestrator.core.checks import check

    @dataclass(frozen=True)
    class Skipped(Event):
        TYPE = "shop.OrderPlaced"
        SCHEMA = 3
        order_id: str
        amount_cents: int
        currency: str

    upcaster(Skipped, from_schema=2)(currency_in_capitals)
    [finding] = [f for f in check(shop(Skipped)) if f.code == "upcaster_missing"]
    assert finding.line() == (
        "warning: shop: event shop.OrderPlaced: schema 3 has no upcaster from 1 to 2: a message of"
        " schema 1 or older is dead-lettered (schema_version), and a journal entry of one cannot be"
        " replayed [upcaster_missing]"
    )
    assert [f for f in check(shop(PlacedV3)) if f.code == "upcaster_missing"] == []


def test_a_message_decide_cannot_upcast_is_dead_lettered_and_the_batch_goes_on() -> None:
    """``decide`` upcasts with the class of the definition that decides the saga; should it fail
    where routing did not (an impure upcaster here; a saga decided by another definition of its
    workflow than routing read), that message is refused, not the batch."""

    @dataclass(frozen=True)
    class Flaky(Event):
        TYPE = "shop.OrderPlaced"
        SCHEMA = 2
        order_id: str
        amount_cents: int
        currency: str

    calls: list[str] = []

    @upcaster(Flaky, from_schema=1)
    def second_time_fails(payload: dict[str, Any]) -> dict[str, Any]:  # impure: what not to do
        calls.append(payload["order_id"])
        if payload["order_id"] == "o-1" and calls.count("o-1") > 1:
            raise RuntimeError("read twice")
        return euros_to_cents(payload)

    kit = WorkflowTestKit(shop(Flaky))
    try:
        envelopes = [
            envelope(
                orjson.dumps({"order_id": key, "total": "1"}), {"type": "shop.OrderPlaced", "message_id": key}
            )
            for key in ("o-0", "o-1", "o-2")
        ]
        result = kit._loop.run_until_complete(_batch(kit, envelopes))
        assert result.verdicts == [Verdict.ACCEPTED, Verdict.DEAD, Verdict.ACCEPTED]
        assert (
            result.reasons[1]
            == "shop.OrderPlaced: the upcaster from schema 1 raised RuntimeError: read twice"
        )
        assert [d.message_id for d in kit.store.dead_letters] == ["o-1"]
        assert kit.saga("o-2").data["amount_cents"] == 100
    finally:
        kit.close()


def test_the_api_schema_says_which_version_a_start_s_fields_are() -> None:
    from orchestrator.adapters.metrics import Metrics
    from orchestrator.adapters.postgres.queries import Queries
    from orchestrator.adapters.postgres.store import PostgresStore
    from orchestrator.core.routing import Registry
    from orchestrator.entrypoints.api.app import ApiContext, create_app
    from orchestrator.entrypoints.settings import Settings

    store = PostgresStore.from_url("postgresql+asyncpg://postgres@127.0.0.1:1/none", pool_size=1)
    context = ApiContext(
        Registry([shop(PlacedV2)]), store, Queries(store.engine), Settings(), Metrics(process=False)
    )
    schema = create_app(context).openapi()["components"]["schemas"]["Start_shop"]
    said = schema["properties"]["schema_version"]
    assert said["default"] == 1 and "is schema version 2: send 2" in said["description"]
    assert set(schema["properties"]["data"]["properties"]) == {"amount_cents", "currency"}
