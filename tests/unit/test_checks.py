"""``orchestrator check``'s findings: one small workflow per finding, the bundled examples, and the
command line's output and exit status."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from datetime import timedelta

import pytest

from orchestrator import FAIL, IGNORE, Command, Event, Saga, Status, Undo, Workflow, step
from orchestrator.core.checks import Finding, Severity, check, check_all, saga_class
from orchestrator.entrypoints import cli
from orchestrator.examples import WORKFLOWS, OrderSaga, escrow

MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class Started(Event):
    TYPE = "t.Started"
    id: str


@dataclass(frozen=True)
class Go(Event):
    TYPE = "t.Go"
    id: str


@dataclass(frozen=True)
class Back(Event):
    TYPE = "t.Back"
    id: str


@dataclass(frozen=True)
class Stop(Event):
    TYPE = "t.Stop"
    id: str


@dataclass(frozen=True)
class Nobody(Event):
    TYPE = "t.Nobody"
    id: str


@dataclass(frozen=True)
class Notify(Command):
    TYPE = "t.Notify"
    id: str


@dataclass(frozen=True)
class Undone(Event):
    TYPE = "t.Undone"
    id: str


def free(name: str = "free") -> Workflow:
    """``start`` (a deadline to ``done``) and the final ``done``: nothing to find in it."""
    workflow = Workflow(name, starts_on=Started, key="id")
    workflow.state("start", deadline=MINUTE, on_deadline="done")
    workflow.state("done", final=True)
    return workflow


def codes(findings: list[Finding]) -> list[tuple[str, str, str | None, str | None]]:
    return [(f.severity, f.code, f.state, f.event) for f in findings]


def test_a_sound_free_machine_has_no_findings() -> None:
    assert check(free()) == []


def test_a_state_without_deadline_that_nothing_moves_out_of_is_an_error() -> None:
    workflow = free()
    workflow.state("waiting")
    workflow.state("held", on_cancel="done")
    workflow.on(Go, source="start", dest="waiting")
    workflow.on(Back, source="start", dest="held")
    workflow.on(Back, source="waiting", dest="waiting")  # a self-loop is no way out
    workflow.on(Stop, source="waiting", then=IGNORE)  # nor is a policy

    found = check(workflow)

    assert codes(found) == [
        ("error", "no_way_out", "waiting", None),
        ("error", "no_way_out", "held", None),
    ]
    assert found[0].line() == (
        "error: free: state waiting: a saga here waits forever: no deadline, and no event moves it"
        " out [no_way_out]"
    )
    assert found[1].message.endswith("only an operator's cancel leads out (to done)")


def test_states_whose_ways_out_never_reach_a_final_state_are_an_error() -> None:
    workflow = free()
    workflow.state("ping")
    workflow.state("pong")
    workflow.on(Go, source="start", dest="ping")
    workflow.on(Go, source="ping", dest="pong")
    workflow.on(Back, source="pong", dest="ping")

    found = check(workflow)

    assert codes(found) == [
        ("error", "never_finishes", "ping", None),
        ("error", "never_finishes", "pong", None),
    ]
    assert "every way out leads to states (pong)" in found[0].message


def test_a_deadline_that_leads_back_to_its_state_is_no_way_to_finish() -> None:
    workflow = free()
    workflow.state("again", deadline=MINUTE, on_deadline="again")
    workflow.on(Go, source="start", dest="again")

    assert [f.line() for f in check(workflow)] == [
        "error: free: state again: a saga here never finishes: its deadline leads back to it, and no"
        " event moves it out [never_finishes]"
    ]


def test_a_state_nothing_leads_to_is_an_error_and_so_is_one_only_it_leads_to() -> None:
    workflow = free()
    workflow.state("orphan", deadline=MINUTE, on_deadline="orphaned")
    workflow.state("orphaned", final=True)
    workflow.state("given_up", final=True, status=None)

    found = check(workflow)

    assert codes(found) == [
        ("error", "unreachable", "orphan", None),
        ("error", "unreachable", "orphaned", None),
        ("error", "unreachable", "given_up", None),
    ]
    assert found[0].message.endswith("no event, deadline or cancel leads to it")
    assert found[1].message.endswith("only orphan leads to it, and no saga gets there")


def test_a_failed_final_state_nothing_leads_to_is_not_reported() -> None:
    workflow = free()
    workflow.state("stuck_for_good", final=True, status=Status.FAILED)  # as a step saga's "failed"

    assert check(workflow) == []


def test_an_event_declared_but_handled_nowhere_is_a_warning() -> None:
    workflow = free()
    workflow.state("orphan", deadline=MINUTE, on_deadline="done")
    workflow.on(Nobody, source=[], dest="done")  # declares the type, and no rule
    workflow.on(Back, source="orphan", dest="done")  # handled only where no saga gets
    workflow.on(Stop, source="done", then=IGNORE)  # a finished saga ignores everything anyway

    found = [f for f in check(workflow) if f.severity is Severity.WARNING]

    assert codes(found) == [
        ("warning", "unhandled_event", None, "t.Nobody"),
        ("warning", "unhandled_event", None, "t.Back"),
        ("warning", "unhandled_event", None, "t.Stop"),
    ]
    assert found[0].line() == (
        "warning: free: event t.Nobody: declared (taken from the broker) but handled nowhere: no state"
        " has a rule for it; each one is journaled as ignored (unexpected=ignore) [unhandled_event]"
    )
    assert "only states where no saga waits (orphan: unreachable or final) have a rule" in found[1].message
    assert "only states where no saga waits (done: unreachable or final)" in found[2].message


def test_an_event_handled_nowhere_says_what_unexpected_does_with_it() -> None:
    workflow = Workflow("strict", starts_on=Started, key="id", unexpected=FAIL)
    workflow.state("start", deadline=MINUTE, on_deadline="done")
    workflow.state("done", final=True)
    workflow.on(Nobody, source=[], dest="done")

    (found,) = check(workflow)

    assert found.message.endswith("each one fails the saga it comes to (unexpected=fail)")


def test_a_command_sent_into_a_final_state_is_a_warning_whatever_sends_it() -> None:
    workflow = Workflow("notify", starts_on=Started, key="id")
    workflow.state("start", deadline=MINUTE, on_deadline="given_up")
    workflow.state("done", final=True)
    workflow.state("given_up", final=True, compensate=[Notify])  # a plain compensate=: sent, not awaited
    workflow.on(Go, source="start", dest="done", send=Notify)

    found = check(workflow)

    assert codes(found) == [
        ("warning", "reply_not_awaited", "start", "saga.DeadlineExpired"),
        ("warning", "reply_not_awaited", "start", "t.Go"),
    ]  # the cancel the compiler derives from the deadline sends the same: not listed again
    assert found[1].line() == (
        "warning: notify: state start, event t.Go: sends t.Notify on the way into final state done:"
        " nobody waits for its reply, which is journaled as ignored [reply_not_awaited]"
    )


def test_an_undo_is_awaited_and_a_builder_without_a_type_is_named() -> None:
    def notify(view: object) -> Notify:
        return Notify("x")

    workflow = Workflow("undo", starts_on=Started, key="id")
    workflow.state("start", deadline=MINUTE, on_deadline="expired")
    workflow.state("expired", final=True, compensate=[Undo(Notify, done=Undone, deadline=MINUTE)])
    workflow.state("done", final=True)
    workflow.on(Go, source="start", dest="done", send=notify)

    found = check(workflow)

    assert codes(found) == [("warning", "reply_not_awaited", "start", "t.Go")]
    assert "sends test_an_undo_is_awaited_and_a_builder_without_a_type_is_named.<locals>.notify" in (
        found[0].message
    )
    assert "(type unknown)" in found[0].message


# step sagas --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Book(Command):
    TYPE = "t.Book"
    id: str


@dataclass(frozen=True)
class Booked(Event):
    TYPE = "t.Booked"
    id: str


@dataclass(frozen=True)
class Pay(Command):
    TYPE = "t.Pay"
    id: str


@dataclass(frozen=True)
class Paid(Event):
    TYPE = "t.Paid"
    id: str


@dataclass(frozen=True)
class Declined(Event):
    TYPE = "t.Declined"
    id: str


@dataclass(frozen=True)
class Cancel(Command):
    TYPE = "t.Cancel"
    id: str


class UndoneBookingSaga(Saga, starts_on=Started, key="id", name="undone_booking"):
    """Book, then pay; the booking has no compensation, and the payment can be declined."""

    @step(done=Booked, deadline=MINUTE)
    def book(self, start: Started) -> Book:
        return Book(start.id)

    @step(done=Paid, failed=Declined)
    def pay(self, start: Started) -> Pay:
        return Pay(start.id)


class ForgottenUndoSaga(Saga, starts_on=Started, key="id", name="forgotten_undo"):
    """Book (undone by a cancel nobody confirms), then pay, which can be declined."""

    @step(done=Booked)
    def book(self, start: Started) -> Book:
        return Book(start.id)

    @book.compensate
    def cancel(self, start: Started) -> Cancel:
        return Cancel(start.id)

    @step(done=Paid, failed=Declined)
    def pay(self, start: Started) -> Pay:
        return Pay(start.id)


def test_a_step_without_compensation_before_a_step_that_can_fail_is_a_warning() -> None:
    found = check(UndoneBookingSaga.workflow)

    assert codes(found) == [("warning", "uncompensated_step", "book", "t.Booked")]
    assert found[0].line() == (
        "warning: undone_booking: state book, event t.Booked: this step has no compensation, and a"
        " later step can fail (pay): when it does, what book did is not undone [uncompensated_step]"
    )


def test_the_last_step_needs_no_compensation() -> None:
    assert saga_class(OrderSaga.workflow) is OrderSaga
    assert check(OrderSaga.workflow) == []


def test_a_compensation_without_done_is_one_warning_on_its_step() -> None:
    found = check(ForgottenUndoSaga.workflow)

    assert codes(found) == [("warning", "reply_not_awaited", "book", None)]
    assert found[0].message.startswith("its compensation t.Cancel has no done=: it is sent and nobody waits")


class RefundedLastSaga(Saga, starts_on=Started, key="id", name="refunded_last"):
    """Book, then pay; each undone (and confirmed) when a later step fails, and pay, the last,
    undone when its success comes after its deadline."""

    @step(done=Booked)
    def book(self, start: Started) -> Book:
        return Book(start.id)

    @book.compensate(done=Undone)
    def unbook(self, start: Started) -> Cancel:
        return Cancel(start.id)

    @step(done=Paid, failed=Declined, deadline=MINUTE)
    def pay(self, start: Started) -> Pay:
        return Pay(start.id)

    @pay.compensate(done=Undone)
    def refund(self, start: Started) -> Cancel:
        return Cancel(start.id)


def test_the_last_step_s_compensation_is_reached_when_a_parent_reopens_the_saga() -> None:
    """Issue 28: ``check`` called the last step's compensating state unreachable (an error, exit
    1) though ``run`` accepts the module: a gate on ``check`` blocked a correct workflow. It is
    where a completed saga goes when its parent compensates it (child sagas), and a resume
    target: nothing to report."""
    found = check(RefundedLastSaga.workflow)

    assert found == []
    assert RefundedLastSaga.workflow.reopen == ("compensating_pay", ())


def test_a_copy_of_a_step_saga_is_checked_as_a_free_machine() -> None:
    copy = UndoneBookingSaga.workflow.with_deadlines("quick_booking", MINUTE)

    assert saga_class(copy) is None
    assert check(copy) == []


# refusals ----------------------------------------------------------------------------------------
def test_a_definition_the_compiler_refuses_is_one_error() -> None:
    workflow = free("broken")
    workflow.on(Go, source="start", dest="nowhere")

    assert [f.line() for f in check(workflow)] == [
        "error: broken: the definition is refused: broken: t.Go names unknown state 'nowhere' [refused]"
    ]


def test_two_workflows_of_one_name_are_an_error_and_errors_come_first() -> None:
    found = check_all([escrow, free("twice"), free("twice")])

    assert codes(found) == [
        ("error", "refused", None, None),
        ("warning", "reply_not_awaited", "awaiting_funds", "bank.FundsReceived"),
    ]
    assert found[0].line() == "error: twice: two workflows are called so [refused]"


# the bundled examples ----------------------------------------------------------------------------
def test_the_bundled_examples_have_no_errors_and_the_escrows_release_is_fire_and_forget() -> None:
    assert [f.line() for f in check_all(WORKFLOWS)] == [
        "warning: escrow: state awaiting_funds, event bank.FundsReceived: sends bank.ReleaseFunds on"
        " the way into final state closed: nobody waits for its reply, which is journaled as ignored"
        " [reply_not_awaited]"
    ]


# the command line --------------------------------------------------------------------------------
def run_check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int | str | None, str, str]:
    with pytest.raises(SystemExit) as exited:
        cli.main(["check", *args])
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def test_the_bundled_examples_pass_the_command_line_with_a_warning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_check(capsys)

    assert code == 0 and err == ""
    assert out.splitlines() == [
        "warning: escrow: state awaiting_funds, event bank.FundsReceived: sends bank.ReleaseFunds on"
        " the way into final state closed: nobody waits for its reply, which is journaled as ignored"
        " [reply_not_awaited]",
        "checked 2 workflows (order, escrow): 0 errors, 1 warning",
    ]


def test_an_error_exits_1_and_is_listed_before_the_warnings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    flawed = free("flawed")
    flawed.state("waiting")
    flawed.on(Go, source="start", dest="waiting")
    module = types.ModuleType("flawed_workflows")
    module.WORKFLOWS = [UndoneBookingSaga, flawed]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flawed_workflows", module)

    code, out, err = run_check(capsys, "--workflows", "flawed_workflows")

    assert code == 1 and err == ""
    assert out.splitlines() == [
        "error: flawed: state waiting: a saga here waits forever: no deadline, and no event moves it"
        " out [no_way_out]",
        "warning: undone_booking: state book, event t.Booked: this step has no compensation, and a"
        " later step can fail (pay): when it does, what book did is not undone [uncompensated_step]",
        "checked 2 workflows (undone_booking, flawed): 1 error, 1 warning",
    ]


def test_a_module_that_refuses_its_own_definition_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_check(capsys, "--workflows", "tests.unit.refused_workflow")

    assert code == 1
    assert out.splitlines() == [
        "error: tests.unit.refused_workflow: the definition is refused: refused.start: a deadline needs"
        " on_deadline=<state> [refused]",
        "checked 0 workflows: 1 error, 0 warnings",
    ]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--workflows", "json"], "orchestrator: no workflows found in 'json'\n"),
        (["--no-such-option"], "unrecognized arguments: --no-such-option"),
    ],
)
def test_a_bad_invocation_exits_2(capsys: pytest.CaptureFixture[str], args: list[str], says: str) -> None:
    code, out, err = run_check(capsys, *args)

    assert code == 2 and out == ""
    assert says in err


@dataclass(frozen=True)
class Charge(Command):
    TYPE = "bank.Charge"
    id: str


@dataclass(frozen=True)
class Shipped(Event):
    TYPE = "warehouse.Shipped"  # answers the bank's command: another service's prefix
    id: str


@dataclass(frozen=True)
class Charged(Event):
    TYPE = "bank.Charged"
    id: str


class CrossedRepliesSaga(Saga, starts_on=Started, key="id", name="crossed_replies"):
    """The bank's charge answered by a warehouse event: the bank may not publish it."""

    @step(done=Shipped, failed=Charged)
    def charge(self, start: Started) -> Charge:
        return Charge(start.id)


def test_a_reply_with_another_service_s_prefix_is_a_warning() -> None:
    """Issue 27: with one broker user per service, a service may publish only its own types."""
    found = [f for f in check(CrossedRepliesSaga.workflow) if f.code == "reply_from_another_service"]

    assert codes(found) == [("warning", "reply_from_another_service", "charge", "warehouse.Shipped")]
    assert "goes to service bank" in found[0].message
    assert not [f for w in WORKFLOWS for f in check(w) if f.code == "reply_from_another_service"]
