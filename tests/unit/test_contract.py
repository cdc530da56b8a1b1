"""The AsyncAPI contract of the bundled workflows: valid AsyncAPI 3.0.0, naming every command and
reply with the schema its body is validated with, the same from ``GET /asyncapi.json`` and
``orchestrator contract``, and never a credential of the broker URL. What the running service
sends and takes, checked against it: tests/integration/test_contract.py."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import httpx
import pytest

from orchestrator import Command, Event, Message, SagaView, Undo, Workflow
from orchestrator.adapters.amqp.topology import Topology
from orchestrator.core.messages import dump
from orchestrator.core.routing import Registry
from orchestrator.entrypoints import cli
from orchestrator.entrypoints.contract import asyncapi_document
from orchestrator.entrypoints.settings import Settings
from orchestrator.examples import WORKFLOWS
from orchestrator.examples import contracts as c
from tests.contract.asyncapi import asyncapi_errors, message_errors
from tests.unit.test_api import build

#: what docs/protocol.md, section 5, says each command of the examples is answered with
REPLIES = {
    "inventory.ReserveStock": ["inventory.OutOfStock", "inventory.StockReserved"],
    "inventory.ReleaseStock": ["inventory.StockReleased"],
    "payment.ChargePayment": ["payment.PaymentCharged", "payment.PaymentDeclined"],
    "payment.RefundPayment": ["payment.PaymentRefunded"],
    "shipping.ShipOrder": ["shipping.OrderShipped", "shipping.ShipmentFailed"],
    "buyer.RequestSignature": ["buyer.BuyerRefused", "buyer.BuyerSigned"],
    "seller.RequestSignature": ["seller.SellerSigned"],
    "seller.VoidDocuments": ["seller.DocumentsVoided"],
    "bank.CollectFunds": ["bank.FundsDeclined", "bank.FundsReceived"],
    "bank.ReturnFunds": ["bank.FundsReturned"],
    "bank.ReleaseFunds": [],  # sent on closing: nobody waits for its reply (section 8)
}
STARTS = ["escrow.EscrowOpened", "orders.OrderPlaced"]


@dataclass(frozen=True)
class Opened(Event):
    TYPE = "desk.Opened"
    desk_id: str


@dataclass(frozen=True)
class OpenedOnAFloor(Event):
    TYPE = "desk.Opened"
    desk_id: str
    floor: int


@dataclass(frozen=True)
class Hold(Command):
    TYPE = "vault.Hold"
    desk_id: str


@dataclass(frozen=True)
class HoldOnAFloor(Command):
    TYPE = "vault.Hold"
    desk_id: str
    floor: int


@dataclass(frozen=True)
class Held(Event):
    TYPE = "vault.Held"
    desk_id: str


@dataclass(frozen=True)
class HoldRefused(Event):
    TYPE = "vault.HoldRefused"
    desk_id: str


@dataclass(frozen=True)
class Unhold(Command):
    TYPE = "vault.Unhold"
    desk_id: str


@dataclass(frozen=True)
class Unheld(Event):
    TYPE = "vault.Unheld"
    desk_id: str


@dataclass(frozen=True)
class UnholdRefused(Event):
    TYPE = "vault.UnholdRefused"
    desk_id: str


@dataclass(frozen=True)
class Ping(Command):
    TYPE = "pager.Ping"
    desk_id: str


def page(view: SagaView) -> Message:
    return Ping(view.key)


def desk(release: str, opened: type[Event], hold: type[Command]) -> Workflow:
    """A free state machine with an ``Undo`` that can be refused, and a command built by a function
    that declares no type."""
    flow = Workflow("desk", starts_on=opened, key="desk_id", release=release, current=release == "2")
    flow.state("holding", send=hold, deadline=timedelta(minutes=1), on_deadline="undone")
    flow.state("done", final=True, send=page)
    flow.state("undone", final=True, compensate=[Undo(Unhold, done=Unheld, failed=UnholdRefused)])
    flow.on(Held, source="holding", dest="done")
    flow.on(HoldRefused, source="holding", dest="undone")
    return flow


def document(**settings: Any) -> dict[str, Any]:
    return asyncapi_document(Registry(WORKFLOWS), replace(Settings(), **settings))


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_the_document_is_valid_asyncapi_3(queue_type: str) -> None:
    made = document(queue_type=queue_type, namespace="demo")

    assert made["asyncapi"] == "3.0.0"
    assert asyncapi_errors(made) == []


@pytest.mark.parametrize(
    "mutilate",
    [
        lambda d: d.pop("info"),
        lambda d: d["operations"]["inventory.receive.inventory.ReserveStock"].update(action="publish"),
        lambda d: d["channels"]["queue.inventory"]["bindings"]["amqp"].update(exchange={"name": "x"}),
        lambda d: d["components"]["messages"]["inventory.ReserveStock"].update(payload=42),
        lambda d: d["operations"]["orchestrator.send.bank.ReleaseFunds"].update(reply={"channel": "here"}),
        lambda d: d.update(asyncapi="2.6.0"),
    ],
    ids=["no info", "bad action", "queue and exchange", "payload no schema", "bad reply", "version"],
)
def test_a_mutilated_document_is_refused(mutilate: Any) -> None:
    """The validation can fail: each of these breaks the AsyncAPI schema."""
    made = copy.deepcopy(document())
    mutilate(made)

    assert asyncapi_errors(made) != []


def test_it_names_every_command_and_reply_and_which_answers_which() -> None:
    made = document()
    operations = made["operations"]
    registry = Registry(WORKFLOWS)
    events = sorted({t for w in WORKFLOWS for t in w.events})

    assert sorted(made["components"]["messages"]) == sorted([*registry.command_types(), *events])
    assert sorted(REPLIES) == sorted(registry.command_types())
    for command, replies in REPLIES.items():
        service = command.split(".")[0]
        receive = operations[f"{service}.receive.{command}"]
        assert receive["action"] == "receive"
        assert receive["channel"] == {"$ref": f"#/channels/queue.{service}"}
        assert operations[f"orchestrator.send.{command}"]["channel"] == {
            "$ref": f"#/channels/command.{command}"
        }
        if replies:
            assert receive["reply"]["messages"] == [
                {"$ref": f"#/channels/replies.{command}/messages/{r}"} for r in replies
            ]
            assert made["channels"][f"replies.{command}"]["parameters"]["reply"]["enum"] == replies
        else:
            assert "reply" not in receive and "ignored" in receive["description"]
        for reply in replies:
            assert operations[f"{service}.send.{reply}"]["action"] == "send"
    assert (
        sorted(t.split(".receive.")[1] for t in operations if t.startswith("orchestrator.receive.")) == events
    )
    for start in STARTS:
        assert "start event" in made["components"]["messages"][start]["summary"]
        assert not any(k.endswith(f".send.{start}") for k in operations)  # no participant sends it
    assert {o["x-service"] for o in operations.values()} == {
        "orchestrator",
        "inventory",
        "payment",
        "shipping",
        "buyer",
        "seller",
        "bank",
    }


def test_the_payloads_are_the_schemas_bodies_are_validated_with() -> None:
    made = document()
    lines = [c.Line("sku-1", 2)]
    sent: list[Command] = [
        c.ReserveStock("o-1", lines),
        c.ChargePayment("o-1", "c-1", 100),
        c.RequestBuyerSignature("e-1", 5000),
        c.ReleaseFunds("e-1", "s-1", 5000),
    ]
    for command in sent:
        assert message_errors(made, command.TYPE, "payload", dump(command)) == []
    start = {
        "order_id": "o-1",
        "customer_id": "c-1",
        "lines": [{"sku": "a", "quantity": 1}],
        "amount_cents": 1,
    }
    assert message_errors(made, "orders.OrderPlaced", "payload", start) == []
    assert message_errors(made, "orders.OrderPlaced", "payload", {**start, "extra": True}) == []  # ignored
    assert message_errors(made, "orders.OrderPlaced", "payload", {**start, "lines": [{"sku": "a"}]}) != []
    assert message_errors(made, "inventory.StockReserved", "payload", {"order_id": "o-1"}) != []
    assert made["components"]["schemas"]["orders.OrderPlaced.Line"]["required"] == ["sku", "quantity"]


def test_headers_and_bindings_follow_the_protocol() -> None:
    made = document(namespace="demo", queue_type="quorum")
    command = made["components"]["messages"]["payment.ChargePayment"]
    reply = made["components"]["messages"]["payment.PaymentCharged"]
    headers = {"x-saga-id": "s", "x-workflow": "order"}

    assert message_errors(made, "payment.ChargePayment", "headers", headers) == []
    assert message_errors(made, "payment.ChargePayment", "headers", {"x-workflow": "order"}) != []
    assert message_errors(made, "payment.ChargePayment", "headers", {**headers, "x-workflow": "escrow"}) != []
    assert message_errors(made, "payment.PaymentCharged", "headers", {}) == []
    assert message_errors(made, "payment.PaymentCharged", "headers", {"x-schema-version": 2}) != []
    assert message_errors(made, "payment.PaymentCharged", "headers", {"x-schema-version": "1"}) != []
    assert command["bindings"]["amqp"]["messageType"] == "payment.ChargePayment"
    assert reply["correlationId"]["location"] == "$message.header#/correlation_id"
    queue = made["channels"]["queue.payment"]["bindings"]["amqp"]["queue"]
    assert queue["name"] == "demo.payment"
    assert queue["x-arguments"] == Topology("demo", queue_type="quorum").queue_arguments
    assert made["channels"]["command.payment.ChargePayment"]["bindings"]["amqp"]["exchange"]["name"] == (
        "demo.commands"
    )
    assert (
        made["channels"]["event.payment.PaymentCharged"]["bindings"]["amqp"]["exchange"]["name"]
        == "demo.events"
    )
    assert (
        made["operations"]["orchestrator.send.payment.ChargePayment"]["bindings"]["amqp"]["deliveryMode"] == 2
    )


def test_no_credential_of_the_broker_url_reaches_the_document() -> None:
    made = document(amqp_url="amqps://operator:s3cr3t-pw@rabbit.example:5671/prod?cafile=/etc/ca.pem")
    text = json.dumps(made)

    assert made["servers"]["rabbitmq"]["host"] == "rabbit.example:5671"
    assert made["servers"]["rabbitmq"]["protocol"] == "amqps"
    assert "s3cr3t-pw" not in text and "operator" not in text and "ca.pem" not in text


def test_it_is_deterministic_and_sorted() -> None:
    first, second = document(), asyncapi_document(Registry(list(reversed(WORKFLOWS))), Settings())

    assert json.dumps(first) == json.dumps(second)
    for part in (first["operations"], first["components"]["messages"], first["components"]["schemas"]):
        assert list(part) == sorted(part)


async def test_the_api_serves_it_as_a_read() -> None:
    context, app = build(api_token="t0ken")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as api:
        refused = await api.get("/asyncapi.json")
        served = await api.get("/asyncapi.json", headers={"Authorization": "Bearer t0ken"})
    await context.store.close()
    _, open_app = build(api_token="t0ken", api_open_reads=True)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=open_app), base_url="http://127.0.0.1"
    ) as api:
        unguarded = await api.get("/asyncapi.json")

    assert refused.status_code == 401
    assert served.status_code == 200 and served.json() == asyncapi_document(
        context.registry, context.settings
    )
    assert unguarded.status_code == 200
    assert app.openapi()["paths"]["/asyncapi.json"]["get"]["security"] == [{"token": []}]


def test_orchestrator_contract_prints_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ORCHESTRATOR_AMQP_URL", "amqp://guest:hunter2@10.0.0.7:5672/")
    monkeypatch.setenv("ORCHESTRATOR_QUEUE_TYPE", "quorum")
    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:1/never")

    with pytest.raises(SystemExit) as exited:
        cli.main(["contract", "--namespace", "demo", "--workflows", "orchestrator.examples"])
    printed = capsys.readouterr()

    assert exited.value.code == 0 and printed.err == ""
    assert json.loads(printed.out) == document(
        namespace="demo", queue_type="quorum", amqp_url="amqp://guest:hunter2@10.0.0.7:5672/"
    )
    assert "hunter2" not in printed.out


def test_orchestrator_contract_says_what_is_wrong_with_the_workflows(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["contract", "--workflows", "no_such_package.workflows"])

    assert exited.value.code == 1
    assert capsys.readouterr().err.startswith("orchestrator: no workflow module 'no_such_package.workflows'")


def test_undo_replies_two_releases_and_an_untyped_command() -> None:
    made = asyncapi_document(
        Registry([desk("1", Opened, Hold), desk("2", OpenedOnAFloor, HoldOnAFloor)]), Settings()
    )
    operations = made["operations"]

    def replies(command: str) -> list[str]:
        reply = operations[f"vault.receive.{command}"]["reply"]
        return [m["$ref"].rsplit("/", 1)[1] for m in reply["messages"]]

    assert asyncapi_errors(made) == []
    assert replies("vault.Hold") == ["vault.Held", "vault.HoldRefused"]
    assert replies("vault.Unhold") == ["vault.Unheld", "vault.UnholdRefused"]
    assert made["info"]["x-commands-without-type"] == ["page"]
    # both releases' sagas may send vault.Hold: either shape
    hold = {"desk_id": "d-1"}
    assert message_errors(made, "vault.Hold", "payload", hold) == []
    assert message_errors(made, "vault.Hold", "payload", {**hold, "floor": 3}) == []
    assert message_errors(made, "vault.Hold", "payload", {}) != []
    # a start goes to the current release: its class is the one that validates it
    assert message_errors(made, "desk.Opened", "payload", {"desk_id": "d-1", "floor": 3}) == []
    assert message_errors(made, "desk.Opened", "payload", {"desk_id": "d-1"}) != []


def test_the_messages_between_a_parent_and_its_child_saga_are_the_orchestrators_own() -> None:
    """Issue 28: a child saga's start, outcome and cancel are listed, on the orchestrator's own
    queue, sent and received by the orchestrator alone: no participant's channel or operation."""
    from orchestrator.examples import shop

    made = asyncapi_document(Registry(shop.WORKFLOWS), replace(Settings(), namespace="demo"))
    assert asyncapi_errors(made) == []
    internal = made["channels"]["internal"]
    assert internal["address"] == "demo.orchestrator.events"
    assert internal["bindings"]["amqp"]["exchange"]["name"] == ""
    assert sorted(internal["messages"]) == [
        "saga.CancelChild",
        "saga.ChildCompensated",
        "saga.ChildCompleted",
        "saga.ChildFailed",
        "warehouse.FulfilmentRequested",
    ]
    assert {k for k in made["operations"] if "internal" in k} == {
        "orchestrator.send.internal",
        "orchestrator.receive.internal",
    }
    assert not any(k.startswith(("saga.", "warehouse.")) for k in made["operations"])
    assert not any(name.startswith(("command.saga.", "event.saga.")) for name in made["channels"])
    # the bundled workflows start no child: nothing of it in their document
    assert "internal" not in document()["channels"]
