"""What the broker's x-death header says, and what a replay sends: no broker, no database."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core.ingress import Reason, envelope
from orchestrator.service.dead_letters import (
    DeadLetterRow,
    broker_dead_letter,
    death_of,
    republished,
    why_not_replayable,
)


def _x_death(reason: Any = "rejected", **extra: Any) -> dict[str, Any]:
    entry = {
        "count": 1,
        "reason": reason,
        "queue": "saga.inventory",
        "time": datetime(2026, 11, 25, tzinfo=UTC),
        "exchange": "saga.commands",
        "routing-keys": ["inventory.ReserveStock"],
        **extra,
    }
    return {"x-death": [entry], "x-first-death-reason": reason}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("rejected", Reason.REJECTED),
        ("expired", Reason.EXPIRED),
        ("maxlen", Reason.MAXLEN),
        ("delivery_limit", Reason.DELIVERY_LIMIT),
        ("something_new", Reason.UNKNOWN),
        (b"rejected", Reason.REJECTED),
        (None, Reason.UNKNOWN),
    ],
)
def test_the_broker_reason_maps_to_a_reason_code(raw: Any, reason: Reason) -> None:
    assert death_of(_x_death(raw)).reason is reason


def test_the_detail_says_which_queue_and_how_many_times_and_where_it_was_sent() -> None:
    death = death_of(_x_death("delivery_limit", count=6, queue="saga.orchestrator.events"))
    assert death.detail == "delivery_limit in queue saga.orchestrator.events, 6 times"
    assert (death.exchange, death.routing_key) == ("saga.commands", "inventory.ReserveStock")
    once = death_of(_x_death())
    assert once.detail == "rejected in queue saga.inventory, 1 time"


def test_a_message_migrate_moved_into_its_queue_keeps_where_it_was_first_sent() -> None:
    headers = {
        **_x_death("delivery_limit", exchange="", **{"routing-keys": ["saga.orchestrator.events"]}),
        "x-original-exchange": "saga.events",
        "x-original-routing-key": "orders.OrderPlaced",
    }
    death = death_of(headers)
    assert (death.exchange, death.routing_key) == ("saga.events", "orders.OrderPlaced")


def test_the_latest_death_is_the_first_entry() -> None:
    headers = _x_death("expired")
    headers["x-death"].append({"reason": "rejected", "queue": "saga.payment", "count": 3})
    assert death_of(headers).reason is Reason.EXPIRED


def test_an_unknown_reason_is_quoted_in_the_detail() -> None:
    death = death_of(_x_death("gone\nfishing"))
    assert death.reason is Reason.UNKNOWN
    assert death.detail.startswith("x-death reason 'gone")
    assert "\n" not in death.detail


@pytest.mark.parametrize(
    "headers",
    [None, {}, {"x-death": []}, {"x-death": "rejected"}, {"x-death": [42]}, "not a table", {"x-death": [{}]}],
)
def test_no_readable_x_death_is_unknown_and_never_raises(headers: Any) -> None:
    death = death_of(headers)
    assert death.reason is Reason.UNKNOWN


def test_a_participant_kits_dead_letter_is_rejected_with_its_reason_and_destination() -> None:
    death = death_of(
        {
            "x-participant": "payment",
            "x-participant-reason": "the handler failed 5 times, last: RuntimeError: gateway down",
            "x-original-exchange": "saga.commands",
            "x-original-routing-key": "payment.ChargePayment",
        }
    )
    assert death.reason is Reason.REJECTED
    assert (
        death.detail
        == "rejected by participant payment: the handler failed 5 times, last: RuntimeError: gateway down"
    )
    assert (death.exchange, death.routing_key) == ("saga.commands", "payment.ChargePayment")


def test_a_letter_republished_by_an_earlier_orchestrator_keeps_its_reason_and_destination() -> None:
    death = death_of(
        {
            "x-death-reason": "inventory.StockReserved does not fit its schema",
            "x-original-exchange": "saga.events",
            "x-original-routing-key": "inventory.StockReserved",
        }
    )
    assert death.reason is Reason.UNKNOWN
    assert "does not fit its schema" in death.detail
    assert (death.exchange, death.routing_key) == ("saga.events", "inventory.StockReserved")


def test_a_broker_dead_letter_records_the_original_destination() -> None:
    properties = {
        "type": "inventory.ReserveStock",
        "message_id": "m-1",
        "correlation_id": "s-1",
        "headers": _x_death(),
    }
    letter = broker_dead_letter(envelope(b"{}", properties, "saga.dead", ""))
    assert letter.source == "broker"
    assert letter.reason == "rejected"
    assert (letter.exchange, letter.routing_key) == ("saga.commands", "inventory.ReserveStock")
    assert (letter.message_id, letter.message_type, letter.correlation_id) == (
        "m-1",
        "inventory.ReserveStock",
        "s-1",
    )
    assert letter.body == b"{}"


def test_a_broker_dead_letter_that_breaks_a_rule_here_says_so() -> None:
    properties = {"type": b"\xff", "message_id": "m-1", "headers": _x_death()}
    letter = broker_dead_letter(envelope(b"{}", properties, "saga.dead", ""))
    assert letter.reason == "rejected"
    assert "bad_property" in letter.detail


def _row(**changes: Any) -> DeadLetterRow:
    fields: dict[str, Any] = {
        "id": 1,
        "dead_at": datetime(2026, 11, 25, tzinfo=UTC),
        "source": "broker",
        "reason": "rejected",
        "detail": "",
        "message_id": "m-1",
        "message_type": "inventory.ReserveStock",
        "correlation_id": "s-1",
        "exchange": "saga.commands",
        "routing_key": "inventory.ReserveStock",
        "properties": {
            "type": "inventory.ReserveStock",
            "message_id": "m-1",
            "correlation_id": "s-1",
            "content_type": "application/json",
            "app_id": "someone",
            "headers": {
                **_x_death(),
                "x-delivery-count": 2,
                "x-original-routing-key": "inventory.ReserveStock",
                "x-saga-id": "s-1",
                "x-workflow": "order",
            },
        },
        "body_size": 2,
        "body_stored": 2,
        "replayed_at": None,
        "replayed_by": None,
        "body": b"{}",
    }
    return DeadLetterRow(**{**fields, **changes})


def test_a_replay_sends_the_message_without_the_headers_of_its_deaths() -> None:
    assert republished(_row()) == {
        "delivery_mode": 2,
        "message_type": "inventory.ReserveStock",
        "message_id": "m-1",
        "correlation_id": "s-1",
        "content_type": "application/json",
        "headers": {"x-saga-id": "s-1", "x-workflow": "order"},
    }


def test_what_cannot_be_replayed_says_why() -> None:
    assert why_not_replayable(_row()) is None
    assert "cut" in (why_not_replayable(_row(body_size=3)) or "")
    assert "decoded" in (why_not_replayable(_row(properties={"undecodable": "00"})) or "")
    assert "message_id" in (why_not_replayable(_row(message_id=None)) or "")
    replayed = _row(replayed_at=datetime(2026, 11, 26, tzinfo=UTC), replayed_by="alice")
    assert "replayed already" in (why_not_replayable(replayed) or "")
    assert why_not_replayable(replayed, again=True) is None


def test_the_protocol_lists_every_reason_code_in_order() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    section = doc[doc.index("## 9. ") : doc.index("## 10. ")]
    assert re.findall(r"^\| `([a-z_]+)` \|", section, re.MULTILINE) == [str(r) for r in Reason]
