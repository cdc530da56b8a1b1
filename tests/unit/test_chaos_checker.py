"""The chaos checker fails when the evidence shows a bug: a checker that can only pass proves
nothing, so each check is shown here a journal and a tap that break it, beside a clean run."""

from __future__ import annotations

from bench.chaos.checker import (
    Check,
    Command,
    Effects,
    Entry,
    Evidence,
    LedgerRow,
    Move,
    SagaRow,
    Wire,
    check,
    check_effects,
    reply_id,
)
from bench.chaos.workflow import UNDO, WORKFLOW
from bench.responder import REPLIES
from orchestrator.core.engine import saga_id_for

START = "orders.OrderPlaced"


def command_id(saga: str, n: int) -> str:
    return f"{saga}:cmd:{n}"


def reply(
    saga: str, seq: int, command: Command, outcome: str = "moved", sends: tuple[Command, ...] = ()
) -> Entry:
    reply_type = REPLIES[command.type][0]
    return Entry(saga, seq, "event", reply_type, reply_id(command.message_id, reply_type), outcome, sends)


def completed(key: str) -> tuple[SagaRow, list[Entry]]:
    """A saga that went through every step: the journal a healthy run writes."""
    saga = saga_id_for(WORKFLOW, key)
    reserve = Command("inventory.ReserveStock", command_id(saga, 1))
    charge = Command("payment.ChargePayment", command_id(saga, 2))
    ship = Command("shipping.ShipOrder", command_id(saga, 3))
    entries = [
        Entry(saga, 1, "event", START, f"start-{key}", "started", (reserve,)),
        reply(saga, 2, reserve, sends=(charge,)),
        reply(saga, 3, charge, sends=(ship,)),
        reply(saga, 4, ship),
    ]
    return SagaRow(saga, key, "completed", "completed"), entries


def compensated(key: str, *, undo_answered: bool = True) -> tuple[SagaRow, list[Entry]]:
    """Charging timed out after the stock was reserved: the stock is released; the charge's late
    success is refunded."""
    saga = saga_id_for(WORKFLOW, key)
    reserve = Command("inventory.ReserveStock", command_id(saga, 1))
    charge = Command("payment.ChargePayment", command_id(saga, 2))
    release = Command("inventory.ReleaseStock", command_id(saga, 3))
    refund = Command("payment.RefundPayment", command_id(saga, 4))
    entries = [
        Entry(saga, 1, "event", START, f"start-{key}", "started", (reserve,)),
        reply(saga, 2, reserve, sends=(charge,)),
        Entry(saga, 3, "deadline", "saga.DeadlineExpired", f"{saga}:deadline:3", "moved", (release,)),
        reply(saga, 4, release),
        reply(saga, 5, charge, outcome="late_undone", sends=(refund,)),
    ]
    if undo_answered:
        entries.append(reply(saga, 6, refund, outcome="ignored"))
    return SagaRow(saga, key, "compensated", "compensated"), entries


def wire_of(entries: list[Entry]) -> list[Wire]:
    sent = [Wire("commands", c.type, c.message_id, e.saga_id) for e in entries for c in e.commands]
    taken = [Wire("events", e.message_type, e.message_id, e.saga_id) for e in entries if e.kind == "event"]
    return sent + taken


def evidence(sagas: list[tuple[SagaRow, list[Entry]]], published: set[str] | None = None) -> Evidence:
    journal = [e for _, entries in sagas for e in entries]
    return Evidence(
        workflow=WORKFLOW,
        published=published if published is not None else {row.key for row, _ in sagas},
        sagas=[row for row, _ in sagas],
        journal=journal,
        wire=wire_of(journal),
        replies={command: (reply_type,) for command, (reply_type, _) in REPLIES.items()},
        undo=UNDO,
        verify_exit=0,
    )


def failing(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks if not c.ok}


def test_a_clean_run_passes_every_check() -> None:
    assert failing(check(evidence([completed("a"), compensated("b")]))) == {}


def test_a_message_decided_twice_is_flagged() -> None:
    row, entries = completed("a")
    entries.append(Entry(row.id, 5, "event", entries[3].message_type, entries[3].message_id, "ignored"))
    found = failing(check(evidence([(row, entries)])))
    assert set(found) == {"decided_once"}
    assert entries[3].message_id in found["decided_once"].examples[0]


def test_a_start_without_a_saga_is_lost() -> None:
    found = failing(check(evidence([completed("a")], published={"a", "gone"})))
    assert set(found) == {"none_lost"}
    assert saga_id_for(WORKFLOW, "gone") in found["none_lost"].examples[0]


def test_a_compensation_whose_undo_was_never_answered_is_flagged() -> None:
    found = failing(check(evidence([compensated("b", undo_answered=False)])))
    assert set(found) == {"undone", "answered"}
    assert "payment.PaymentRefunded never taken" in found["undone"].examples[0]


def test_a_success_never_undone_is_flagged_even_when_only_the_wire_saw_it() -> None:
    row, entries = compensated("b")
    saga = row.id
    charge = entries[1].commands[0]
    kept = [e for e in entries if e.seq < 5]  # the late charge and its refund never journaled
    data = evidence([(row, kept)])
    late = REPLIES[charge.type][0]
    data.wire.append(Wire("events", late, reply_id(charge.message_id, late), saga))
    found = failing(check(data))
    assert "undone" in found
    assert "payment.RefundPayment never sent" in found["undone"].examples[0]


def test_a_step_sent_under_two_message_ids_is_flagged() -> None:
    row, entries = completed("a")
    data = evidence([(row, entries)])
    data.wire.append(Wire("commands", "payment.ChargePayment", "another-id", row.id))
    found = failing(check(data))
    assert set(found) == {"one_id_per_step"}


def test_unfinished_failed_unverified_and_crashed_runs_fail() -> None:
    row, entries = completed("a")
    stuck = SagaRow(row.id, row.key, "running", "ship")
    data = evidence([(stuck, entries[:3])])
    data.sagas.append(SagaRow(saga_id_for(WORKFLOW, "f"), "f", "failed", "compensating_reserve"))
    data.published.add("f")
    data.verify_exit, data.verify_output = 1, "verified 2 sagas: 1 differ from their journal"
    data.outbox_left = 3
    data.crashes = ["replica-1 exited by itself"]
    data.dead_letters = ["broker delivery_limit: inventory.StockReserved ..."]
    found = failing(check(data))
    expected = {"final", "expected_outcome", "verify", "outbox_empty", "no_crash", "no_dead_letters"}
    assert expected | {"answered"} == set(found)


def test_a_known_bug_still_fails_but_is_named() -> None:
    row, entries = completed("a")
    entries.append(Entry(row.id, 5, "event", entries[3].message_type, entries[3].message_id, "ignored"))
    data = evidence([(row, entries)])
    data.known = {"decided_once": "issue 99"}
    found = failing(check(data))
    assert found["decided_once"].known_bug == "issue 99"


# -- the participants' business tables (--participants kit) ---------------------------------------

INITIAL = 100
STATUS = {"done": "completed", "back": "compensated", "never": "compensated"}


def effects() -> Effects:
    """What a healthy run leaves: ``done`` reserved 2 units, was charged and shipped; ``back`` was
    reserved and charged, then released and refunded; ``never`` failed at its first step."""
    return Effects(
        ledger=[
            LedgerRow("done", "charge", 1000),
            LedgerRow("back", "charge", 500),
            LedgerRow("back", "refund", 500),
        ],
        moves=[
            Move("done", "sku-1", -2, "reserve"),
            Move("back", "sku-1", -1, "reserve"),
            Move("back", "sku-1", 1, "release"),
        ],
        shipments=["done"],
        stock={"sku-1": INITIAL - 2},
        initial_stock=INITIAL,
        lines={"done": {"sku-1": 2}, "back": {"sku-1": 1}, "never": {"sku-1": 3}},
        amounts={"done": 1000, "back": 500, "never": 300},
    )


def test_clean_business_tables_pass_every_effect_check() -> None:
    checks = check_effects(effects(), STATUS)
    assert [c.name for c in checks] == [
        "charged_once",
        "refunded_once",
        "reserved_once",
        "stock_moves",
        "shipped_once",
        "stock_on_hand",
    ]
    assert failing(checks) == {}


def test_a_double_charge_is_caught() -> None:
    data = effects()
    data.ledger.append(LedgerRow("done", "charge", 1000))  # a redelivered ChargePayment carried out again
    found = failing(check_effects(data, STATUS))
    assert set(found) == {"charged_once"}
    assert found["charged_once"].examples == ["done (completed) charged 2 times: [1000, 1000]"]


def test_a_double_charge_refunded_twice_is_still_a_double_charge() -> None:
    data = effects()
    data.ledger += [LedgerRow("back", "charge", 500), LedgerRow("back", "refund", 500)]
    assert set(failing(check_effects(data, STATUS))) == {"charged_once"}


def test_a_charge_of_a_compensated_order_not_refunded_or_refunded_twice_is_caught() -> None:
    missing = effects()
    missing.ledger.remove(LedgerRow("back", "refund", 500))
    assert set(failing(check_effects(missing, STATUS))) == {"refunded_once"}
    twice = effects()
    twice.ledger.append(LedgerRow("back", "refund", 500))
    assert set(failing(check_effects(twice, STATUS))) == {"refunded_once"}
    short = effects()
    short.ledger[2] = LedgerRow("back", "refund", 499)
    assert set(failing(check_effects(short, STATUS))) == {"refunded_once"}
    completed_refunded = effects()
    completed_refunded.ledger.append(LedgerRow("done", "refund", 1000))
    assert set(failing(check_effects(completed_refunded, STATUS))) == {"refunded_once"}


def test_a_completed_order_never_charged_or_charged_the_wrong_amount_is_caught() -> None:
    data = effects()
    data.ledger[0] = LedgerRow("done", "charge", 999)
    assert set(failing(check_effects(data, STATUS))) == {"charged_once"}
    data.ledger.pop(0)
    assert set(failing(check_effects(data, STATUS))) == {"charged_once"}


def test_a_sku_reserved_twice_and_stock_left_held_are_caught() -> None:
    data = effects()
    data.moves.append(Move("done", "sku-1", -2, "reserve"))
    data.stock["sku-1"] -= 2
    found = failing(check_effects(data, STATUS))
    assert set(found) == {"reserved_once", "stock_moves", "stock_on_hand"}
    assert found["reserved_once"].examples == ["done (completed) reserved sku-1 2 times"]


def test_a_compensated_order_whose_release_never_ran_is_caught() -> None:
    data = effects()
    data.moves.remove(Move("back", "sku-1", 1, "release"))
    data.stock["sku-1"] -= 1
    found = failing(check_effects(data, STATUS))
    assert set(found) == {"stock_moves", "stock_on_hand"}
    assert found["stock_moves"].examples == ["back (compensated) still holds 1 units"]


def test_shipments_twice_or_for_a_compensated_order_are_caught() -> None:
    twice = effects()
    twice.shipments.append("done")
    assert set(failing(check_effects(twice, STATUS))) == {"shipped_once"}
    compensated_shipped = effects()
    compensated_shipped.shipments.append("back")
    assert set(failing(check_effects(compensated_shipped, STATUS))) == {"shipped_once"}
    never = effects()
    never.shipments.clear()
    assert set(failing(check_effects(never, STATUS))) == {"shipped_once"}


def test_effects_of_an_order_with_no_saga_are_caught() -> None:
    data = effects()
    data.ledger.append(LedgerRow("ghost", "refund", 5))
    data.shipments.append("ghost")
    assert set(failing(check_effects(data, STATUS))) == {"refunded_once", "shipped_once"}


def test_check_judges_the_effects_when_the_evidence_has_them() -> None:
    data = evidence([completed("done"), compensated("back")])
    data.effects = effects()
    data.effects.lines.pop("never")
    assert failing(check(data)) == {}
    data.effects.ledger.append(LedgerRow("done", "charge", 1000))
    assert set(failing(check(data))) == {"charged_once"}


def with_child(key: str, *, started: int = 1, status: str = "completed") -> list[tuple[SagaRow, list[Entry]]]:
    """An order whose shipping is a child saga: its start routed to the orchestrator itself (not
    on the tapped wire), and the child's outcome back to the parent."""
    from bench.chaos.workflow import CHILD, ShipmentRequested

    parent = saga_id_for(WORKFLOW, key)
    child = saga_id_for(CHILD, key)
    start = Command(ShipmentRequested.TYPE, command_id(parent, 1), f"start:{CHILD}")
    done = Command("saga.ChildCompleted", reply_id(start.message_id, "saga.ChildCompleted"), f"saga:{parent}")
    ship = Command("shipping.ShipOrder", command_id(child, 1))
    parent_entries = [
        Entry(parent, 1, "event", START, f"start-{key}", "started", (start,)),
        Entry(parent, 2, "event", done.type, done.message_id, "moved"),
    ]
    child_entries = [Entry(child, 1, "event", start.type, start.message_id, "started", (ship,))]
    child_entries += [
        Entry(child, 1 + n, "event", start.type, f"again-{n}", "started") for n in range(1, started)
    ]
    child_entries.append(reply(child, 10, ship, sends=(done,)))
    return [
        (SagaRow(parent, key, "completed", "completed"), parent_entries),
        (SagaRow(child, key, status, status), child_entries),
    ]


def test_a_child_saga_started_once_by_its_parent_passes() -> None:
    data = evidence(with_child("a"))
    data.replies["chaos.ShipmentRequested"] = ("saga.ChildCompleted",)
    data.published = {"a"}
    assert failing(check(data)) == {}


def test_a_child_started_twice_or_ending_unlike_its_parent_is_flagged() -> None:
    data = evidence(with_child("a", started=2))
    data.replies["chaos.ShipmentRequested"] = ("saga.ChildCompleted",)
    data.published = {"a"}
    found = failing(check(data))
    assert set(found) == {"children_once"}
    assert "not once by its parent's" in found["children_once"].examples[0]
    data = evidence(with_child("b", status="compensated"))
    data.replies["chaos.ShipmentRequested"] = ("saga.ChildCompleted",)
    data.published = {"b"}
    found = failing(check(data))
    assert "children_once" in found
    assert "though its parent" in found["children_once"].examples[-1]
