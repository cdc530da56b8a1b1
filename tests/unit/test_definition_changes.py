"""A workflow deployed with a state its running sagas are in renamed or removed (issue 13, item 3,
before versions exist): such a saga fails with the reason on its next message, for an operator,
instead of raising (which stopped every saga) or ignoring every message; the rest go on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from orchestrator import Saga, step
from orchestrator.core.definitions import Status
from orchestrator.examples import OrderSaga
from orchestrator.examples.contracts import (
    ChargePayment,
    Line,
    OrderPlaced,
    OrderShipped,
    OutOfStock,
    PaymentCharged,
    PaymentDeclined,
    PaymentRefunded,
    RefundPayment,
    ReleaseStock,
    ReserveStock,
    ShipmentFailed,
    ShipOrder,
    StockReleased,
    StockReserved,
)
from orchestrator.testing import WorkflowTestKit
from tests.replies import reply_envelope


class RenamedOrderSaga(Saga, starts_on=OrderPlaced, key="order_id", name="order"):
    """The order saga with its ``charge`` step renamed ``payment``."""

    @step(done=StockReserved, failed=OutOfStock, deadline=timedelta(seconds=30))
    def reserve(self, order: OrderPlaced) -> ReserveStock:
        return ReserveStock(order.order_id, order.lines)

    @reserve.compensate(done=StockReleased)
    def release(self, order: OrderPlaced) -> ReleaseStock:
        return ReleaseStock(order.order_id)

    @step(done=PaymentCharged, failed=PaymentDeclined, deadline=timedelta(minutes=2))
    def payment(self, order: OrderPlaced) -> ChargePayment:
        return ChargePayment(order.order_id, order.customer_id, order.amount_cents)

    @payment.compensate(done=PaymentRefunded)
    def refund(self, order: OrderPlaced) -> RefundPayment:
        return RefundPayment(order.order_id)

    @step(done=OrderShipped, failed=ShipmentFailed, deadline=timedelta(minutes=5))
    def ship(self, order: OrderPlaced) -> ShipOrder:
        return ShipOrder(order.order_id, order.lines)


def placed(key: str) -> OrderPlaced:
    return OrderPlaced(key, "c-1", [Line("sku-1", 1)], 1000)


def test_a_saga_in_a_state_the_loaded_workflow_lacks_fails_with_the_reason_and_the_rest_go_on() -> None:
    before = WorkflowTestKit(OrderSaga.workflow)
    before.publish(placed("o-1"))
    before.publish(StockReserved("o-1", "r-1"))
    assert before.saga("o-1").state == "charge"
    after = WorkflowTestKit(RenamedOrderSaga.workflow, store=before.store)  # the new deployment
    try:
        result = after.publish(PaymentCharged("o-1", "ch-1"))

        saga = after.saga("o-1")
        assert (saga.state, saga.status) == ("charge", Status.FAILED)
        assert saga.last_error == (
            "charge is not a state of workflow order as loaded: payment.PaymentCharged cannot be decided"
        )
        assert [d.outcome.value for d in result.decisions] == ["failed"]
        after.publish(placed("o-2"))  # the service goes on
        after.publish(StockReserved("o-2", "r-2"))
        assert after.saga("o-2").state == "payment"

        resumed = after.act(saga, "resume", step="payment")  # an operator puts it where it belongs
        assert (resumed.saga.state, [c.type for c in resumed.commands]) == (
            "payment",
            ["payment.ChargePayment"],
        )
        assert after.replay_differences(after.saga("o-2")) == []
    finally:
        before.close()
        after.close()


def test_a_deadline_of_a_state_the_loaded_workflow_lacks_fails_the_saga_too() -> None:
    before = WorkflowTestKit(OrderSaga.workflow)
    before.publish(placed("o-1"))
    before.publish(StockReserved("o-1", "r-1"))
    after = WorkflowTestKit(RenamedOrderSaga.workflow, now=before.now, store=before.store)
    try:
        after.advance(timedelta(minutes=3))  # charge's deadline falls due

        saga = after.saga("o-1")
        assert (saga.state, saga.status) == ("charge", Status.FAILED)
        assert "charge is not a state of workflow order as loaded" in (saga.last_error or "")
    finally:
        before.close()
        after.close()


async def test_a_definition_that_raises_fails_that_saga_only_and_the_batch_goes_on() -> None:
    """Nothing raises out of the engine for one saga: a definition that raises while deciding it
    (here a move table pointing at a state that does not exist) fails that saga with the reason,
    and the other messages of the batch are decided as ever."""
    import orjson

    from orchestrator.adapters.memory import MemoryStore
    from orchestrator.core.engine import Outcome, saga_id_for
    from orchestrator.core.machine import Fired
    from orchestrator.core.messages import dump
    from orchestrator.core.routing import Registry
    from orchestrator.service.batch import Envelope, Verdict, process_batch

    registry = Registry([OrderSaga.workflow])
    compiled = registry.workflows["order"]
    store = MemoryStore()
    now = datetime(2026, 11, 25, 12, tzinfo=UTC)

    def envelope(message: Any, message_id: str, correlation_id: str | None = None) -> Envelope:
        return Envelope(orjson.dumps(dump(message)), message.TYPE, message_id, correlation_id)

    await process_batch(
        registry, store, [envelope(placed("o-a"), "p-a"), envelope(placed("o-b"), "p-b")], now
    )
    compiled.moves[("reserve", StockReserved.TYPE)] = Fired("nowhere", ())  # a broken definition
    a, b = saga_id_for("order", "o-a"), saga_id_for("order", "o-b")
    result = await process_batch(
        registry,
        store,
        [
            reply_envelope(store, StockReserved("o-a", "r-a"), a),
            reply_envelope(store, OutOfStock("o-b", "sku-1"), b),
        ],
        now,
    )
    assert result.verdicts == [Verdict.ACCEPTED, Verdict.ACCEPTED]
    failed, other = await store.get_saga(a), await store.get_saga(b)
    assert failed is not None and failed.status is Status.FAILED and failed.state == "reserve"
    assert failed.last_error is not None
    assert "KeyError" in failed.last_error and "nowhere" in failed.last_error
    assert other is not None and other.status is Status.COMPENSATED
    assert [d.outcome for d in result.decisions] == [Outcome.FAILED, Outcome.MOVED]


def test_whatever_a_definition_raises_while_deciding_fails_the_saga_and_replays_the_same() -> None:
    from orchestrator.core.engine import Incoming, Outcome, decide
    from orchestrator.core.machine import CompiledWorkflow

    class Exploding(dict[Any, Any]):
        def get(self, *args: Any) -> Any:
            raise RuntimeError("boom")

        def __contains__(self, key: object) -> bool:
            raise RuntimeError("boom")

    kit = WorkflowTestKit(OrderSaga.workflow)
    kit.publish(placed("o-x"))
    saga = kit.store.sagas[kit.saga("o-x").id]
    kit.close()
    compiled = CompiledWorkflow(OrderSaga.workflow)
    compiled.moves = Exploding(compiled.moves)
    now = datetime(2026, 11, 25, 12, tzinfo=UTC)
    message = Incoming(StockReserved.TYPE, "m-x", {"order_id": "o-x", "reservation_id": "r"})
    first, again = decide(compiled, saga, message, now), decide(compiled, saga, message, now)
    assert first.outcome is Outcome.FAILED and first.saga.status is Status.FAILED
    assert first.saga.version == saga.version + 1 and first.deadline_changed and first.retry_changed
    assert (
        first.reason
        == "release 1 of order cannot decide inventory.StockReserved in reserve: RuntimeError: boom"
    )
    assert again == first  # pure: a replay fails it the same way
