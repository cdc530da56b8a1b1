"""The dry run's comparison (``orchestrator/core/dry_run.py``): real journals, written by the test kit
with the bundled order saga, replayed through changed definitions; one finding kind at a time,
then the summary, then the command line's part that needs no database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta

import pytest

from orchestrator import Event, Saga, Workflow, child, step
from orchestrator.core.dry_run import Change, DryRun, Journal, SagaReport, compare, dry_run
from orchestrator.core.machine import CompiledWorkflow
from orchestrator.entrypoints import cli
from orchestrator.examples import OrderSaga, escrow
from orchestrator.examples.contracts import (
    BuyerSigned,
    ChargePayment,
    EscrowOpened,
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
    SellerSigned,
    ShipmentFailed,
    ShipOrder,
    StockReleased,
    StockReserved,
)
from orchestrator.testing import WorkflowTestKit
from tests.unit.test_definition_changes import RenamedOrderSaga


class ShipNothingOrderSaga(Saga, starts_on=OrderPlaced, key="order_id", name="order"):
    """The order saga whose ship step sends no lines: the same states, another payload."""

    @step(done=StockReserved, failed=OutOfStock, deadline=timedelta(seconds=30))
    def reserve(self, order: OrderPlaced) -> ReserveStock:
        return ReserveStock(order.order_id, order.lines)

    @reserve.compensate(done=StockReleased)
    def release(self, order: OrderPlaced) -> ReleaseStock:
        return ReleaseStock(order.order_id)

    @step(done=PaymentCharged, failed=PaymentDeclined, deadline=timedelta(minutes=2))
    def charge(self, order: OrderPlaced) -> ChargePayment:
        return ChargePayment(order.order_id, order.customer_id, order.amount_cents)

    @charge.compensate(done=PaymentRefunded)
    def refund(self, order: OrderPlaced) -> RefundPayment:
        return RefundPayment(order.order_id)

    @step(done=OrderShipped, failed=ShipmentFailed, deadline=timedelta(minutes=5))
    def ship(self, order: OrderPlaced) -> ShipOrder:
        return ShipOrder(order.order_id, [])


class RecheckedOrderSaga(Saga, starts_on=OrderPlaced, key="order_id", name="order"):
    """The order saga with a step added between the charge and the shipping: a stock check that
    sends ``ReserveStock`` again. Every state of the old definition is still there."""

    @step(done=StockReserved, failed=OutOfStock, deadline=timedelta(seconds=30))
    def reserve(self, order: OrderPlaced) -> ReserveStock:
        return ReserveStock(order.order_id, order.lines)

    @reserve.compensate(done=StockReleased)
    def release(self, order: OrderPlaced) -> ReleaseStock:
        return ReleaseStock(order.order_id)

    @step(done=PaymentCharged, failed=PaymentDeclined, deadline=timedelta(minutes=2))
    def charge(self, order: OrderPlaced) -> ChargePayment:
        return ChargePayment(order.order_id, order.customer_id, order.amount_cents)

    @charge.compensate(done=PaymentRefunded)
    def refund(self, order: OrderPlaced) -> RefundPayment:
        return RefundPayment(order.order_id)

    @step(done=StockReserved, failed=OutOfStock, deadline=timedelta(seconds=30))
    def recheck(self, order: OrderPlaced) -> ReserveStock:
        return ReserveStock(order.order_id, order.lines)

    @step(done=OrderShipped, failed=ShipmentFailed, deadline=timedelta(minutes=5))
    def ship(self, order: OrderPlaced) -> ShipOrder:
        return ShipOrder(order.order_id, order.lines)


@dataclass(frozen=True)
class ShopOrderPlaced(Event):
    """The start event of a new schema, keyed by a field the journals' start events lack."""

    TYPE = "orders.OrderPlaced"
    shop_id: str
    order_id: str


#: The order workflow keyed by that field: deciding a journal's start raises (no ``shop_id``).
REKEYED = Workflow("order", starts_on=ShopOrderPlaced, key="shop_id")
REKEYED.state("reserve", deadline=timedelta(seconds=30), on_deadline="given_up", send=ReserveStock)
REKEYED.state("given_up", final=True)


def placed(key: str) -> OrderPlaced:
    return OrderPlaced(key, "c-1", [Line("sku-1", 2)], 1000)


@pytest.fixture
def kit() -> Iterator[WorkflowTestKit]:
    """Order sagas written by the bundled definition, one in each place a saga can wait:
    ``reserve``, ``charge``, ``ship``, ``compensating_reserve`` (the charge declined),
    ``completed`` and ``compensated`` (the reserve's deadline passed, with and without a
    reservation to release)."""
    kit = WorkflowTestKit(OrderSaga.workflow)
    for key in ("reserve", "charge", "ship", "declined", "completed", "expired"):
        kit.publish(placed(key))
    for key in ("charge", "ship", "declined", "completed"):
        kit.publish(StockReserved(key, f"r-{key}"))
    for key in ("ship", "completed"):
        kit.publish(PaymentCharged(key, f"ch-{key}"))
    kit.publish(OrderShipped("completed", "t-1"))
    kit.publish(PaymentDeclined("declined", "no funds"))
    kit.advance(timedelta(seconds=31))  # the reserve deadline of "reserve" and "expired"
    kit.publish(StockReleased("expired"))
    kit.publish(placed("reserve-2"))  # its deadline not passed: waits in reserve
    yield kit
    kit.close()


def journal(kit: WorkflowTestKit, key: str, release: str = "1") -> Journal:
    saga = kit.saga(key)
    return Journal(saga.id, saga.workflow, release, saga.key, saga.state, str(saga.status), kit.journal(saga))


def by(*workflows: Workflow) -> Callable[[str, str], CompiledWorkflow | None]:
    compiled = {w.name: CompiledWorkflow(w) for w in workflows}
    return lambda workflow, release: compiled.get(workflow)


KEYS = ("reserve", "reserve-2", "charge", "ship", "declined", "completed", "expired")


def test_the_kit_parks_the_sagas_where_the_tests_say(kit: WorkflowTestKit) -> None:
    assert {key: (kit.saga(key).state, kit.saga(key).status) for key in KEYS} == {
        "reserve": ("compensated", "compensated"),  # its deadline passed with nothing to undo
        "reserve-2": ("reserve", "running"),
        "charge": ("charge", "running"),
        "ship": ("ship", "running"),
        "declined": ("compensating_reserve", "compensating"),
        "completed": ("completed", "completed"),
        "expired": ("compensated", "compensated"),
    }


def test_journals_written_by_the_same_definition_replay_unchanged(kit: WorkflowTestKit) -> None:
    run = dry_run([journal(kit, key) for key in KEYS], by(OrderSaga.workflow))

    assert run.reported() == []
    assert (run.in_flight, run.finished, run.breaking, run.differing) == (4, 3, 0, 0)
    assert run.counts == {(Change.UNCHANGED, True): 4, (Change.UNCHANGED, False): 3}


def test_escrow_journals_with_parked_ignored_retried_and_failed_entries_replay_unchanged() -> None:
    """Every kind of entry the engine journals (parked, ignored, a deadline, undo retries, a
    failure at an undo's deadline) replays as written by the definition that wrote it."""
    kit = WorkflowTestKit(escrow)
    for key in ("e-1", "e-2", "e-3"):
        kit.publish(EscrowOpened(key, "b-1", "s-1", 100))
    kit.publish(SellerSigned("e-1"))  # parked until the buyer signs
    kit.publish(BuyerSigned("e-1"))
    kit.publish(BuyerSigned("e-1"))  # ignored: signed already
    kit.publish(BuyerSigned("e-2"))
    kit.advance(timedelta(days=4))  # the deadlines, the undos' retries, then their own deadlines
    sagas = [journal(kit, key) for key in ("e-1", "e-2", "e-3")]

    run = dry_run(sagas, by(escrow))

    assert {j.status for j in sagas} == {"failed"} and all(len(j.entries) > 5 for j in sagas)
    kinds = {e.decision["outcome"] for j in sagas for e in j.entries}
    assert {"parked", "ignored", "retried", "moved"} <= kinds
    assert (run.in_flight, run.breaking, run.reported()) == (3, 0, [])
    kit.close()


def test_a_renamed_state_is_gone_and_the_moves_into_it_go_elsewhere(kit: WorkflowTestKit) -> None:
    definition = by(RenamedOrderSaga.workflow)

    in_charge = compare(journal(kit, "charge"), definition)
    passed = compare(journal(kit, "ship"), definition)
    before = compare(journal(kit, "reserve-2"), definition)

    assert in_charge.kinds == (Change.GONE_STATE, Change.DIFFERENT_OUTCOME)
    assert in_charge.findings[0].detail == "its state charge is not a state of the new definition"
    assert in_charge.findings[1].detail == (
        "journal #2 (inventory.StockReserved): recorded moved to charge (running),"
        " the new definition gives moved to payment (running)"
    )
    assert passed.kinds == (Change.GONE_STATE, Change.DIFFERENT_OUTCOME)
    assert passed.findings[0].detail == (
        "its journal passes through state charge, not a state of the new definition"
    )
    assert before.kinds == (Change.UNCHANGED,) and before.findings == ()
    assert in_charge.line() == (
        f"error: order release 1: saga charge (id {in_charge.saga_id}, charge, running):"
        " its state charge is not a state of the new definition [gone_state]; journal #2"
        " (inventory.StockReserved): recorded moved to charge (running), the new definition gives"
        " moved to payment (running) [different_outcome]"
    )


def test_a_step_added_sends_another_command_and_moves_elsewhere(kit: WorkflowTestKit) -> None:
    found = compare(journal(kit, "ship"), by(RecheckedOrderSaga.workflow))

    assert found.kinds == (Change.DIFFERENT_COMMAND, Change.DIFFERENT_OUTCOME)
    command, outcome = (f.detail for f in found.findings)
    assert command.startswith("journal #3 (payment.PaymentCharged): command ")
    assert "recorded shipping.ShipOrder {'order_id': 'ship', 'lines': [{'sku': 'sku-1', 'quantity': 2}]}" in (
        command
    )
    assert command.endswith("but the workflow now sends inventory.ReserveStock {'order_id': 'ship',"
                            " 'lines': [{'sku': 'sku-1', 'quantity': 2}]}")  # fmt: skip
    assert outcome == (
        "journal #3 (payment.PaymentCharged): recorded moved to ship (running),"
        " the new definition gives moved to recheck (running)"
    )
    # sagas that never got that far are not touched by the new step
    assert compare(journal(kit, "charge"), by(RecheckedOrderSaga.workflow)).findings == ()
    # one that went on from there differs at each entry after it: the first one is said
    completed = compare(journal(kit, "completed"), by(RecheckedOrderSaga.workflow))
    assert completed.kinds == (Change.DIFFERENT_COMMAND, Change.DIFFERENT_OUTCOME)
    assert completed.findings[1].detail.endswith("moved to recheck (running) (and 1 more entry)")


def test_a_command_whose_payload_changed_is_a_different_command_and_nothing_else(
    kit: WorkflowTestKit,
) -> None:
    found = compare(journal(kit, "ship"), by(ShipNothingOrderSaga.workflow))

    assert found.kinds == (Change.DIFFERENT_COMMAND,)
    assert found.findings[0].detail.endswith("but the workflow now sends {'order_id': 'ship', 'lines': []}")
    assert compare(journal(kit, "completed"), by(ShipNothingOrderSaga.workflow)).severity == "warning"


def test_a_journal_from_before_payloads_were_recorded_is_compared_on_command_types(
    kit: WorkflowTestKit,
) -> None:
    written = journal(kit, "ship")
    entries = [
        replace(e, decision={**e.decision, "commands": [{k: v for k, v in c.items() if k != "payload"}
                                                         for c in e.decision["commands"]]})
        for e in written.entries
    ]  # fmt: skip
    old = replace(written, entries=entries)

    assert compare(old, by(ShipNothingOrderSaga.workflow)).findings == ()  # the payload is not known
    found = compare(old, by(RecheckedOrderSaga.workflow))
    assert found.kinds == (Change.DIFFERENT_COMMAND, Change.DIFFERENT_OUTCOME)
    assert "recorded shipping.ShipOrder (payload not recorded) but the workflow now sends" in (
        found.findings[0].detail
    )


def test_a_workflow_the_new_module_lacks_has_no_definition(kit: WorkflowTestKit) -> None:
    found = compare(journal(kit, "charge", release="7"), lambda workflow, release: None)

    assert found.kinds == (Change.NO_DEFINITION,)
    assert found.line().endswith(
        ": the new module has no definition of workflow order release 7 [no_definition]"
    )
    assert found.line().startswith("error: order release 7: saga charge ")


def test_a_definition_that_raises_while_deciding_is_refused_for_that_saga_only(kit: WorkflowTestKit) -> None:
    def broken(workflow: str, release: str) -> CompiledWorkflow | None:
        raise RuntimeError("release table\nunreadable")

    sagas = [journal(kit, key) for key in ("charge", "reserve-2")]
    run = dry_run(sagas, by(REKEYED))
    lookup = compare(sagas[0], broken)

    assert [r.kinds for r in run.reported()] == [(Change.GONE_STATE, Change.REFUSED), (Change.REFUSED,)]
    assert run.reported()[1].findings[0].detail == (
        "the new definition raises while deciding it: KeyError: 'shop_id'"
    )
    assert lookup.findings[0].detail == "its definition cannot be had: RuntimeError: release table"


def test_a_failed_saga_is_in_flight_and_a_finished_one_only_warns(kit: WorkflowTestKit) -> None:
    definition = by(RenamedOrderSaga.workflow)

    failed = compare(replace(journal(kit, "declined"), status="failed"), definition)  # for an operator
    completed = compare(journal(kit, "completed"), definition)

    assert failed.in_flight and failed.severity == "error"
    assert failed.kinds == (Change.GONE_STATE, Change.DIFFERENT_OUTCOME)
    assert not completed.in_flight and completed.severity == "warning"
    assert completed.line().startswith("warning: order release 1: saga completed ")


def test_the_summary_counts_sagas_per_kind_in_flight_and_finished(kit: WorkflowTestKit) -> None:
    run = dry_run([journal(kit, key) for key in KEYS], by(RenamedOrderSaga.workflow))

    assert [r.key for r in run.reported()] == ["charge", "ship", "declined", "completed"]
    assert run.summary() == [
        "replayed 7 journals (4 in flight, 3 finished): 3 in flight would break,"
        " 1 finished would go otherwise, 3 unchanged",
        "  no_definition      0 in flight, 0 finished",
        "  refused            0 in flight, 0 finished",
        "  gone_state         3 in flight, 1 finished",
        "  different_command  0 in flight, 0 finished",
        "  different_outcome  3 in flight, 1 finished",
        "  unchanged          1 in flight, 2 finished",
    ]


def test_a_report_line_names_the_saga_even_without_a_state() -> None:
    report = SagaReport("id-1", "order", "1", "k", "", "failed", True)

    assert (
        report.line()
        == "ok: order release 1: saga k (id id-1, no state, failed): replays as written [unchanged]"
    )
    assert DryRun().summary()[0] == (
        "replayed 0 journals (0 in flight, 0 finished): 0 in flight would break,"
        " 0 finished would go otherwise, 0 unchanged"
    )


def test_runs_over_parts_merge_into_one_in_saga_id_order(kit: WorkflowTestKit) -> None:
    journals = sorted((journal(kit, key) for key in KEYS), key=lambda j: j.saga_id)
    definition = by(RenamedOrderSaga.workflow)

    whole = dry_run(journals, definition)
    merged = DryRun.merged([dry_run(journals[0::2], definition), dry_run(journals[1::2], definition)])

    assert merged == whole
    assert [r.saga_id for r in merged.errors] == sorted(r.saga_id for r in merged.errors)


# the command line, where no database is needed ----------------------------------------------------
def test_a_finished_sample_without_journals_is_a_bad_invocation(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["check", "--finished-sample", "10"])

    assert exited.value.code == 2
    assert "check: --finished-sample needs --journals" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--jobs", "2"], ["--journals", "--jobs", "0"]])
def test_jobs_without_journals_or_below_one_is_a_bad_invocation(
    capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["check", *args])

    assert exited.value.code == 2
    assert "check: --jobs needs --journals, and 1 or more" in capsys.readouterr().err


def test_check_without_journals_reads_no_database(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere")

    with pytest.raises(SystemExit) as exited:
        cli.main(["check"])

    assert exited.value.code == 0
    assert "replayed" not in capsys.readouterr().out


def test_journals_from_a_database_that_cannot_be_reached_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere")

    with pytest.raises(SystemExit) as exited:
        cli.main(["check", "--journals"])

    out, err = capsys.readouterr()
    assert exited.value.code == 2
    assert out.splitlines()[-1].startswith("checked 2 workflows (order, escrow)")  # the definitions first
    assert err.startswith(
        "orchestrator: cannot reach PostgreSQL at postgresql+asyncpg://postgres@127.0.0.1:1/"
    )
    assert len(err.splitlines()) == 1


def test_parent_and_child_journals_replay_unchanged_and_a_changed_child_step_is_found() -> None:
    """Issue 28, item 5: the dry run reads a child's start (its parent in the journaled message)
    and the messages between sagas (their routes) as any other entry."""
    from orchestrator.examples import shop
    from orchestrator.examples.shop import FulfilmentRequested, InvoiceRefused, ShopOrderPlaced

    kit = WorkflowTestKit(*shop.WORKFLOWS)
    kit.publish(ShopOrderPlaced("o-1", "c-1", [Line("sku-1", 1)], 100))
    charge = [c for c in kit.sent if c.type == ChargePayment.TYPE][-1]
    kit.reply(charge, PaymentCharged("o-1", "ch-1"))
    kit.reply([c for c in kit.sent if c.type == ReserveStock.TYPE][-1], StockReserved("o-1", "r-1"))
    kit.reply([c for c in kit.sent if c.type == ShipOrder.TYPE][-1], OrderShipped("o-1", "t-1"))
    kit.reply([c for c in kit.sent if c.type == "billing.SendInvoice"][-1], InvoiceRefused("o-1", "x"))
    sagas = [
        Journal(s.id, s.workflow, "1", s.key, s.state, str(s.status), kit.journal(s))
        for s in (kit.saga("o-1", "shop_order"), kit.saga("o-1", "fulfilment"))
    ]
    assert "parent" in sagas[1].entries[0].message.as_json()  # the child's start names its parent

    assert dry_run(sagas, by(*shop.WORKFLOWS)).reported() == []

    class HastyShopSaga(Saga, starts_on=ShopOrderPlaced, key="order_id", name="shop_order"):
        @child(shop.FulfilmentSaga, deadline=timedelta(seconds=5))
        def fulfil(self, order: ShopOrderPlaced) -> FulfilmentRequested:
            return FulfilmentRequested(order.order_id, order.lines)

    changed = dry_run(sagas, by(HastyShopSaga.workflow, shop.FulfilmentSaga.workflow))
    assert changed.breaking == 1 and changed.reported()
    kit.close()
