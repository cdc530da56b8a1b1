"""A message handed over between replicas keeps what identifies it and counts its hand-overs."""

from __future__ import annotations

from datetime import UTC, datetime

from orchestrator.adapters.amqp.broker import HAND_OVER_HEADER, handed_over
from orchestrator.core.ingress import Envelope


def test_a_hand_over_keeps_the_properties_and_counts() -> None:
    sent = datetime(2026, 12, 3, tzinfo=UTC)
    envelope = Envelope(
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
    first = handed_over(envelope)
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
    again = Envelope(
        b"{}", exchange="", routing_key="ns.orchestrator.events", properties={"headers": first["headers"]}
    )
    second = handed_over(again)["headers"]
    assert second[HAND_OVER_HEADER] == 2
    assert second["x-original-routing-key"] == "payment.PaymentCharged"  # the first routing, kept
