"""The step-sequence way to write a workflow: each step a command, its replies, its compensation.

    class OrderSaga(Saga, starts_on=OrderPlaced, key="order_id"):
        @step(done=StockReserved, failed=OutOfStock, deadline=timedelta(seconds=30))
        def reserve(self, order: OrderPlaced) -> ReserveStock: ...

        @reserve.compensate(done=StockReleased)
        def release(self, order: OrderPlaced) -> ReleaseStock: ...

compiles to a :class:`~orchestrator.core.definitions.Workflow`: a waiting state per step, a
``compensating_<step>`` state per compensation that waits for a reply, and the final states
``completed``, ``compensated`` and ``failed``. When a step fails or its deadline passes, the
completed steps are compensated newest first, one at a time.

Between steps a saga may wait: ``hold = wait(days=3)`` (or ``wait(until="release_at")``) is a
state whose deadline moves it on, and ``approve = wait_for(Approved, failed=Rejected,
deadline=...)`` a state that sends nothing and waits for an event from outside. ``Saga``'s
``cancel_on=`` names events that cancel the saga from outside, wherever it is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, ClassVar, get_type_hints, overload

from orchestrator.core.children import CancelChild, ChildCompensated, ChildCompleted, ChildFailed
from orchestrator.core.definitions import (
    CANCEL,
    BranchSpec,
    DefinitionError,
    Policy,
    Retry,
    Rule,
    SagaView,
    Status,
    Undo,
    Workflow,
)
from orchestrator.core.ids import saga_id_for
from orchestrator.core.ingress import MAX_KEY_LENGTH
from orchestrator.core.messages import Command, Event, Message, dump, load

__all__ = [
    "ChildStep",
    "Parallel",
    "Saga",
    "Step",
    "Wait",
    "WaitFor",
    "child",
    "parallel",
    "step",
    "wait",
    "wait_for",
]

StepMethod = Callable[[Any, Any], Command]
#: a child step's method: it returns the child workflow's start event
ChildMethod = Callable[[Any, Any], Event]


@dataclass
class Compensation:
    method: StepMethod | ChildMethod
    done: type[Event] | None
    failed: type[Event] | None
    deadline: timedelta | None
    retry: Retry | None = None


class Step:
    """A step of a step saga; also the decorator ``@<step>.compensate`` for its undo."""

    def __init__(
        self,
        method: StepMethod | ChildMethod,
        done: type[Event],
        failed: type[Event] | None,
        deadline: timedelta | None,
        retry: Retry | None = None,
        updates: tuple[str, ...] = (),
    ) -> None:
        self.name = method.__name__
        self.retry = retry
        self.updates = updates
        self.method = method
        self.done = done
        self.failed = failed
        self.deadline = deadline
        self.compensation: Compensation | None = None

    @overload
    def compensate(self, method: StepMethod) -> Compensation: ...

    @overload
    def compensate(
        self,
        method: None = None,
        *,
        done: type[Event] | None = None,
        failed: type[Event] | None = None,
        deadline: timedelta | None = None,
        retry: Retry | None = None,
    ) -> Callable[[StepMethod], Compensation]: ...

    def compensate(
        self,
        method: StepMethod | None = None,
        *,
        done: type[Event] | None = None,
        failed: type[Event] | None = None,
        deadline: timedelta | None = None,
        retry: Retry | None = None,
    ) -> Compensation | Callable[[StepMethod], Compensation]:
        """Declare the command that undoes this step. Without ``done`` it is sent and not waited for."""

        def register(fn: StepMethod) -> Compensation:
            self.compensation = Compensation(fn, done, failed, deadline, retry)
            return self.compensation

        return register(method) if method is not None else register


def step(
    *,
    done: type[Event],
    failed: type[Event] | None = None,
    deadline: timedelta | None = None,
    retry: Retry | None = None,
    updates: tuple[str, ...] = (),
) -> Callable[[StepMethod], Step]:
    """Mark a method as a step: it returns the command to send; ``done``/``failed`` are its replies.

    With ``retry`` the command is sent again, same message id, until a reply or the deadline.
    ``updates`` names fields of the start event that ``done`` may change in the saga's data (the
    later steps then read the new values); without it a reply never changes them."""
    updates = (updates,) if isinstance(updates, str) else tuple(updates)

    def register(method: StepMethod) -> Step:
        return Step(method, done, failed, deadline, retry, updates)

    return register


class ChildStep(Step):
    """A step whose action is to start a saga of another workflow (:func:`child`)."""

    def __init__(
        self,
        method: ChildMethod,
        workflow: Workflow,
        deadline: timedelta | None,
        undo_deadline: timedelta | None,
    ) -> None:
        super().__init__(method, ChildCompleted, ChildCompensated, deadline)
        self.child = workflow
        self.undo_deadline = undo_deadline
        self.compensation = Compensation(method, ChildCompensated, ChildFailed, undo_deadline)


def child(
    workflow: type[Saga] | Workflow,
    *,
    deadline: timedelta | None = None,
    undo_deadline: timedelta | None = None,
) -> Callable[[ChildMethod], ChildStep]:
    """Mark a method as a child step: it returns the start event of ``workflow`` (a ``Saga``
    class or a ``Workflow``), built from the parent's data, and the step starts that saga (its
    key is the event's key field) and waits for its outcome: completed is the step's success,
    compensated or failed its failure. The child starts once, whatever crashes, on whichever
    replica takes it. When the parent compensates the step (a later failure, a cancel) the child
    is cancelled, or compensated from its end if it completed, and ``undo_deadline`` bounds the
    wait for that; ``deadline`` bounds the child's run, and at it the child is cancelled."""
    target = workflow if isinstance(workflow, Workflow) else workflow.workflow

    def register(method: ChildMethod) -> ChildStep:
        return ChildStep(method, target, deadline, undo_deadline)

    return register


class _Pause:
    """A step that sends nothing and undoes nothing: it only waits. Named by the attribute it is
    assigned to (``hold = wait(days=3)``)."""

    compensation: Compensation | None = None

    def __init__(self) -> None:
        self.name = ""

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self.name = name


class Wait(_Pause):
    """A holding period: the saga moves on to the next step when it ends (:func:`wait`)."""

    def __init__(self, duration: timedelta | None, until: str | None) -> None:
        super().__init__()
        self.duration = duration
        self.until = until


class WaitFor(_Pause):
    """A wait for an event from outside, a person's approval, with a deadline (:func:`wait_for`)."""

    def __init__(
        self, done: type[Event], failed: type[Event] | None, deadline: timedelta, updates: tuple[str, ...]
    ) -> None:
        super().__init__()
        self.done = done
        self.failed = failed
        self.deadline = deadline
        self.updates = updates


class Parallel(_Pause):
    """Steps run at once (:func:`parallel`)."""

    def __init__(self, steps: tuple[Step, ...], newest_first: bool) -> None:
        super().__init__()
        self.steps = steps
        self.newest_first = newest_first

    @property
    def compensated(self) -> bool:
        return any(s.compensation is not None for s in self.steps)


def parallel(*steps: Step, newest_first: bool = False) -> Parallel:
    """The given ``@step`` methods run at once, in the sequence's place where the group is assigned
    (``book = parallel(flight, room, car)``): their commands go out together, in one decision,
    and the saga moves on when every one is done. Each keeps its own deadline, retry and
    compensation. When one fails or times out (or the saga is cancelled), the steps done are
    compensated, all at once (each awaited), or one at a time, the latest done first, with
    ``newest_first=True``; each still in flight is waited for until its reply (a success then
    compensated too) or its deadline; then the steps before the group are compensated, as for a
    failed step. A step given here is not a step of the sequence by itself."""
    if not steps or not all(isinstance(s, Step) for s in steps):
        raise DefinitionError("parallel() takes the @step methods to run at once")
    if any(isinstance(s, ChildStep) for s in steps):
        raise DefinitionError(
            "a child step cannot run in a parallel() group (yet): make it a step of its own"
        )
    return Parallel(tuple(steps), newest_first)


def wait(
    duration: timedelta | None = None,
    *,
    days: float = 0,
    hours: float = 0,
    minutes: float = 0,
    seconds: float = 0,
    until: str | None = None,
) -> Wait:
    """A step that holds the saga for a duration (``wait(days=3)``), or until the time in a field
    of its data (``wait(until="release_at")``: ISO 8601, UTC without an offset; a time passed
    already ends the wait at once), then moves on to the next step. Durable as a deadline: it
    fires after a crash, once, on whichever replica holds the saga; an operator's
    ``fire-deadline`` ends it early, and a cancel compensates the steps before it."""
    given = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if duration is not None and given:
        raise DefinitionError("wait() takes a timedelta or days=/hours=/minutes=/seconds=, not both")
    duration = duration if duration is not None else (given or None)
    if (duration is None) == (until is None):
        raise DefinitionError("wait() needs exactly one of a duration and until=<field of the saga's data>")
    if duration is not None and duration <= timedelta(0):
        raise DefinitionError(f"wait() needs a duration > 0, not {duration}")
    return Wait(duration, until)


def wait_for(
    done: type[Event],
    *,
    deadline: timedelta,
    failed: type[Event] | None = None,
    updates: tuple[str, ...] = (),
) -> WaitFor:
    """A step that sends nothing and waits for an event from outside (a manager's ``Approved``):
    ``done`` moves the saga to the next step, ``failed`` (a ``Rejected``) or the deadline
    compensates the steps before it. The events answer no command, so they are taken without a
    section 6 reply id, from whoever may publish their type (docs/security.md). The deadline is
    required: nothing waits forever."""
    updates = (updates,) if isinstance(updates, str) else tuple(updates)
    return WaitFor(done, failed, deadline, updates)


def _builder(
    cls: type[Saga], method: StepMethod | ChildMethod, starts_on: type[Event]
) -> Callable[[SagaView], Message]:
    def build(view: SagaView) -> Message:
        instance = object.__new__(cls)
        instance.saga_id = view.saga_id
        instance.key = view.key
        instance.data = view.data
        start = load(starts_on, view.data)
        return method(instance, start)

    build.__qualname__ = f"{cls.__name__}.{method.__name__}"
    try:
        returns = get_type_hints(method).get("return")
    except Exception:  # an annotation that cannot be resolved only costs the queue declaration
        returns = None
    if isinstance(returns, type) and issubclass(returns, Message):
        build.message_type = returns.TYPE  # type: ignore[attr-defined]
        build.message_class = returns  # type: ignore[attr-defined]  # its body's schema, for the contract
    return build


def _child_builders(
    cls: type[Saga], s: ChildStep, starts_on: type[Event]
) -> tuple[Callable[[SagaView], Message], Callable[[SagaView], Message]]:
    """A child step's two commands: the child's start event (the step's method, checked to build
    the child workflow's start), and the cancel its compensation sends, addressed to the saga
    that start names."""
    build = _builder(cls, s.method, starts_on)
    workflow = s.child

    def start(view: SagaView) -> Message:
        """The start, checked as the child's ingress will check it: a start it would refuse
        (no key, a key too long, a body its schema refuses) fails the parent here, for an
        operator, instead of leaving it waiting for a child that never starts."""
        message = build(view)
        if not isinstance(message, workflow.starts_on):
            raise TypeError(
                f"{s.name} starts a {workflow.name} saga: it must return a {workflow.starts_on.__name__},"
                f" not a {type(message).__name__}"
            )
        key = getattr(message, workflow.key, None)
        if key is None or str(key) == "" or len(str(key)) > MAX_KEY_LENGTH:
            raise ValueError(
                f"{s.name} starts a {workflow.name} saga with {workflow.key}={str(key)[:40]!r}: a key"
                f" is 1 to {MAX_KEY_LENGTH} characters"
            )
        load(workflow.starts_on, dump(message))  # InvalidPayload: what its schema refuses
        return message

    def cancel(view: SagaView) -> Message:
        key = getattr(start(view), workflow.key)
        return CancelChild(saga_id=saga_id_for(workflow.name, str(key)), parent=view.saga_id)

    start.__qualname__ = f"{cls.__name__}.{s.name}"
    start.message_type = workflow.starts_on.TYPE  # type: ignore[attr-defined]
    start.child = workflow.name  # type: ignore[attr-defined]  # the outbox routes it to us
    start.child_key = workflow.key  # type: ignore[attr-defined]
    cancel.__qualname__ = f"{cls.__name__}.{s.name}.cancel"
    cancel.message_type = CancelChild.TYPE  # type: ignore[attr-defined]
    return start, cancel


def compile_steps(
    cls: type[Saga],
    starts_on: type[Event],
    key: str,
    name: str,
    unexpected: Policy = Policy.IGNORE,
    release: str = "1",
    current: bool = False,
    cancel_on: tuple[type[Event], ...] = (),
) -> Workflow:
    found = [value for value in vars(cls).values() if isinstance(value, Step | _Pause)]
    grouped = {id(s) for g in found if isinstance(g, Parallel) for s in g.steps}
    steps = [s for s in found if id(s) not in grouped]
    if not any(isinstance(s, Step | Parallel) for s in steps):
        raise DefinitionError(f"{cls.__name__} declares no @step")
    names = {s.name for s in steps}
    if names & {"completed", "compensated", "failed"}:
        raise DefinitionError(f"{cls.__name__}: a step cannot be called completed, compensated or failed")

    workflow = Workflow(
        name,
        starts_on=starts_on,
        key=key,
        unexpected=unexpected,
        description=(cls.__doc__ or "").strip(),
        release=release,
        current=current,
    )

    def undo_from(index: int) -> tuple[str, list[Callable[[SagaView], Message]]]:
        """Where a failure at step ``index`` leads: the fire-and-forget undos sent on the way, then
        the first compensation that waits for its reply, or ``compensated`` if none is left."""
        sends: list[Callable[[SagaView], Message]] = []
        for earlier in reversed(steps[:index]):
            if isinstance(earlier, Parallel):
                if earlier.compensated:
                    return f"compensating_{earlier.name}", sends
                continue
            comp = earlier.compensation
            if comp is None:
                continue
            if comp.done is None:
                sends.append(_builder(cls, comp.method, starts_on))
                continue
            return f"compensating_{earlier.name}", sends
        return "compensated", sends

    cancels: dict[str, Callable[[SagaView], Message]] = {}
    for index, item in enumerate(steps):
        failure_dest, failure_sends = undo_from(index)
        following = steps[index + 1].name if index + 1 < len(steps) else "completed"
        if isinstance(item, Parallel):
            _group(workflow, cls, starts_on, item, following, failure_dest, failure_sends)
            continue
        if isinstance(item, _Pause):
            _pause(workflow, item, following, failure_dest, failure_sends)
            continue
        if isinstance(item, ChildStep):
            cancels[item.name] = _child(
                workflow, cls, starts_on, item, following, failure_dest, failure_sends
            )
            continue
        s = item
        workflow.state(
            s.name,
            deadline=s.deadline,
            on_deadline=failure_dest if s.deadline else None,
            send=_builder(cls, s.method, starts_on),
            retry=s.retry,
        )
        if s.compensation is not None:
            # A success that arrives after a deadline or a cancel gave up on this step is undone.
            undo = _builder(cls, s.compensation.method, starts_on)
            workflow.late_success[s.name] = (s.done.TYPE, (undo,))
            undoing = s.compensation
            if undoing.done is not None:
                workflow.late_undos[s.name] = Undo(
                    undo, undoing.done, undoing.failed, undoing.deadline, undoing.retry
                )
        if s.deadline is not None and failure_sends:
            # The deadline rule was added by state(); it must send the same undos as a failure.
            workflow.rules[-1] = replace(workflow.rules[-1], send=tuple(failure_sends))
        # An operator's cancel undoes what was done, as a failure of this step would.
        workflow.rules.append(Rule(CANCEL, s.name, failure_dest, tuple(failure_sends)))
        workflow.on(s.done, source=s.name, dest=following, updates=s.updates)
        if s.failed is not None:
            workflow.on(s.failed, source=s.name, dest=failure_dest, send=failure_sends)

    for index, item in enumerate(steps):
        comp = item.compensation
        if comp is None or comp.done is None or not isinstance(item, Step):
            continue
        s = item
        state = f"compensating_{s.name}"
        next_dest, next_sends = undo_from(index)
        workflow.state(
            state,
            status=Status.COMPENSATING,
            deadline=comp.deadline,
            on_deadline="failed" if comp.deadline else None,
            send=cancels.get(s.name) or _builder(cls, comp.method, starts_on),
            retry=comp.retry,
        )
        workflow.on(comp.done, source=state, dest=next_dest, send=next_sends)
        if comp.failed is not None:
            workflow.on(comp.failed, source=state, dest="failed")

    _no_reply_from_outside(cls, steps, [s for g in found if isinstance(g, Parallel) for s in g.steps])
    workflow.state("completed", final=True)
    workflow.state("compensated", final=True, status=Status.COMPENSATED)
    workflow.state("failed", final=True, status=Status.FAILED)
    workflow.cancelled_by(*cancel_on)
    # a completed saga compensated by its parent starts over from its end (derived: not fingerprinted)
    reopen_dest, reopen_sends = undo_from(len(steps))
    workflow.reopen = (reopen_dest, tuple(reopen_sends))
    return workflow.check()


def _child(
    workflow: Workflow,
    cls: type[Saga],
    starts_on: type[Event],
    s: ChildStep,
    following: str,
    failure_dest: str,
    failure_sends: list[Callable[[SagaView], Message]],
) -> Callable[[SagaView], Message]:
    """A child step's state: it starts the child and waits for its outcome. Its deadline, a
    cancel and a failed child (which an operator may still resume) cancel the child on the way
    to compensating the steps before; a child that completes after that is compensated, as any
    step's late success is undone. Returns the cancel, which its compensating state sends."""
    start, cancel = _child_builders(cls, s, starts_on)
    stop = (cancel, *failure_sends)
    workflow.state(s.name, deadline=s.deadline, on_deadline=failure_dest if s.deadline else None, send=start)
    if s.deadline is not None:
        workflow.rules[-1] = replace(workflow.rules[-1], send=stop)
    workflow.children[s.name] = s.child.name
    workflow.late_success[s.name] = (ChildCompleted.TYPE, (cancel,))
    workflow.late_undos[s.name] = Undo(cancel, ChildCompensated, ChildFailed, s.undo_deadline, None)
    workflow.rules.append(Rule(CANCEL, s.name, failure_dest, stop))
    workflow.on(ChildCompleted, source=s.name, dest=following)
    workflow.on(ChildCompensated, source=s.name, dest=failure_dest, send=failure_sends)
    workflow.on(ChildFailed, source=s.name, dest=failure_dest, send=stop)
    return cancel


def _no_reply_from_outside(cls: type[Saga], items: list[Step | _Pause], grouped: list[Step]) -> None:
    """A ``wait_for`` event is taken from whoever may publish it, without a reply id: it cannot
    also be a step's or a compensation's reply, which is taken only as the reply to its command."""
    outside = {t for p in items if isinstance(p, WaitFor) for t in (p.done, p.failed) if t is not None}
    for s in [*(i for i in items if isinstance(i, Step)), *grouped]:
        comp = s.compensation
        replies = {s.done, s.failed, *((comp.done, comp.failed) if comp is not None else ())}
        for event in sorted(outside & {r for r in replies if r is not None}, key=lambda e: e.TYPE):
            raise DefinitionError(
                f"{cls.__name__}: {event.TYPE} is what a wait_for waits for from outside; it cannot"
                f" also be a reply of {s.name}"
            )


def _group(
    workflow: Workflow,
    cls: type[Saga],
    starts_on: type[Event],
    group: Parallel,
    following: str,
    failure_dest: str,
    failure_sends: list[Callable[[SagaView], Message]],
) -> None:
    """A parallel group's two states (``Workflow.group``), its steps as branches; a step's success
    that comes after the group gave up on it is undone as any step's is."""
    branches = []
    for s in group.steps:
        comp = s.compensation
        undo = _builder(cls, comp.method, starts_on) if comp is not None else None
        awaited = None
        if comp is not None and undo is not None:
            workflow.late_success[s.name] = (s.done.TYPE, (undo,))
            if comp.done is not None:
                awaited = Undo(undo, comp.done, comp.failed, comp.deadline, comp.retry)
                workflow.late_undos[s.name] = awaited
        branches.append(
            BranchSpec(
                s.name,
                _builder(cls, s.method, starts_on),
                s.done,
                s.failed,
                s.deadline,
                s.retry,
                awaited,
                undo if awaited is None else None,
            )
        )
        workflow.allow_updates(s.done, s.updates)
    workflow.group(
        group.name,
        branches,
        then=following,
        on_failure=failure_dest,
        failure_sends=failure_sends,
        newest_first=group.newest_first,
    )


def _pause(
    workflow: Workflow,
    pause: _Pause,
    following: str,
    failure_dest: str,
    failure_sends: list[Callable[[SagaView], Message]],
) -> None:
    """A wait's state: its deadline is the way on (``wait``), or its event is (``wait_for``, whose
    deadline and ``failed`` compensate as a failing step does). A cancel compensates either."""
    sends = tuple(failure_sends)
    if isinstance(pause, Wait):
        workflow.state(
            pause.name, deadline=pause.duration, until=pause.until, on_deadline=following, wait=True
        )
    elif isinstance(pause, WaitFor):
        workflow.state(pause.name, deadline=pause.deadline, on_deadline=failure_dest)
        workflow.rules[-1] = replace(workflow.rules[-1], send=sends)
        workflow.on(pause.done, source=pause.name, dest=following, updates=pause.updates, signal=True)
        if pause.failed is not None:
            workflow.on(pause.failed, source=pause.name, dest=failure_dest, send=sends, signal=True)
    workflow.rules.append(Rule(CANCEL, pause.name, failure_dest, sends))


class Saga:
    """The base of a step saga: its subclass's ``@step`` methods are compiled into ``workflow``
    when the class is defined, from the keywords it is declared with::

        class OrderSaga(Saga, starts_on=OrderPlaced, key="order_id", name="order"): ...

    A base class rather than a decorator so that ``OrderSaga.workflow`` and, in a step method,
    ``self.data`` are attributes a type checker knows: user code needs no ``# type: ignore``.

    A step method is called on an instance made for the one saga whose command it builds: its
    argument is the start event, read from the saga's data (with the fields the workflow lets
    replies update), and ``self.data`` is all of that data, so a compensation reads there what a
    later reply brought (``self.data["charge_id"]``). The instance is made without ``__init__``
    and lives for one call: keep nothing on it.
    """

    #: the compiled workflow: what ``WorkflowTestKit`` and ``orchestrator run`` take
    workflow: ClassVar[Workflow]
    #: the saga the command is built for: its id, its key (the start event's ``key`` field)
    saga_id: str
    key: str
    #: the saga's data: the start event's fields, and the declared fields of every reply taken
    data: Mapping[str, Any]

    def __init_subclass__(
        cls,
        *,
        starts_on: type[Event],
        key: str,
        name: str | None = None,
        unexpected: Policy = Policy.IGNORE,
        release: str = "1",
        current: bool = False,
        cancel_on: type[Event] | Sequence[type[Event]] = (),
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        workflow_name = name or cls.__name__.removesuffix("Saga").lower() or cls.__name__.lower()
        cancels = (cancel_on,) if isinstance(cancel_on, type) else tuple(cancel_on)
        cls.workflow = compile_steps(
            cls, starts_on, key, workflow_name, unexpected, release, current, cancels
        )
