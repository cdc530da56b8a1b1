"""A message handed over between replicas keeps what identifies it and counts its hand-overs."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from orchestrator.adapters.amqp.broker import HAND_OVER_HEADER, MAX_HAND_OVERS, handed_over
from orchestrator.core.ingress import Envelope, envelope


def test_a_hand_over_keeps_the_properties_and_counts() -> None:
    sent = datetime(2026, 12, 3, tzinfo=UTC)
    came = Envelope(
        b"{}",
        exchange="ns.events",
        routing_key="payment.PaymentCharged",
        properties={
            "type": "payment.PaymentCharged",
            "message_id": "m-1",
            "correlation_id": "saga-1",
            "content_type": "application/json",
            "timestamp": sent,
            "user_id": "someone-else",
            "expiration": "60000",
            "headers": {"x-saga-id": "saga-1"},
        },
    )
    first = handed_over(came)
    assert first["message_type"] == "payment.PaymentCharged" and first["message_id"] == "m-1"
    assert first["correlation_id"] == "saga-1" and first["timestamp"] == sent
    assert "user_id" not in first and "expiration" not in first  # refused, or restarted, by the broker
    assert first["delivery_mode"] == 2
    assert first["headers"] == {
        "x-saga-id": "saga-1",
        "x-original-exchange": "ns.events",
        "x-original-routing-key": "payment.PaymentCharged",
        HAND_OVER_HEADER: 1,
    }
    # taken again from the queue every replica takes from: read as it first came in
    again = envelope(
        b"{}", {"type": "payment.PaymentCharged", "headers": first["headers"]}, "", "ns.orchestrator.events"
    )
    assert (again.exchange, again.routing_key) == ("ns.events", "payment.PaymentCharged")
    second = handed_over(again)["headers"]
    assert second[HAND_OVER_HEADER] == 2
    assert second["x-original-routing-key"] == "payment.PaymentCharged"  # the first routing, kept


def test_a_publishers_own_original_exchange_does_not_survive_a_hand_over() -> None:
    """An empty x-original-exchange is what the orchestrator's own publishes resolve to: one a
    publisher wrote on an event it sent to {ns}.events is overwritten, never carried on."""
    forged = {"type": "saga.CancelChild", "message_id": "m", "headers": {"x-original-exchange": ""}}
    first = envelope(b"{}", forged, "ns.events", "saga.CancelChild")
    assert first.refused is not None  # saga.* from the events exchange: sender
    moved = handed_over(first)
    assert moved["headers"]["x-original-exchange"] == "ns.events"
    again = envelope(b"{}", {**forged, "headers": moved["headers"]}, "", "ns.orchestrator.events")
    assert again.refused is not None and again.refused.reason.value == "sender"
    parent = {
        "type": "x.Start",
        "message_id": "m",
        "headers": {"x-original-exchange": "", "x-parent-saga": "p"},
    }
    moved = handed_over(envelope(b"{}", parent, "ns.events", "x.Start"))
    assert envelope(b"{}", {**parent, "headers": moved["headers"]}, "", "q").parent is None


@pytest.mark.parametrize(
    ("written", "counted"),
    [
        (-1_000_000, 1),  # forged: would have gone round the replicas a million times
        (-1, 1),
        (True, 1),  # not a count
        ("29", 1),
        (10**12, MAX_HAND_OVERS + 2),  # over the limit at once: handed over no more
        (MAX_HAND_OVERS, MAX_HAND_OVERS + 1),
    ],
)
def test_the_count_a_message_carries_is_bounded_below_and_above(written: object, counted: int) -> None:
    envelope = Envelope(
        b"{}",
        exchange="ns.events",
        routing_key="payment.PaymentCharged",
        properties={"headers": {HAND_OVER_HEADER: written}},
    )
    count = handed_over(envelope)["headers"][HAND_OVER_HEADER]
    assert count == counted
    assert (count > MAX_HAND_OVERS) == (counted > MAX_HAND_OVERS)
