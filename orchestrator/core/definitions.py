"""Workflow definitions: plain data that says what a saga does, compiled onto ``transitions`` later.

Two ways to write one, both ending in the same :class:`Workflow`:

* a free state machine, ``Workflow(...)`` with ``state()`` and ``on()`` (the escrow);
* a step sequence, a ``Saga`` subclass whose ``@step`` methods build commands (the order), which
  :mod:`orchestrator.core.steps` turns into states and rules.

Nothing here runs I/O or reads a clock: a definition is a value, so a journal replayed through it
gives the same saga every time.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from orchestrator.core.messages import Command, Event, Message, load

__all__ = [
    "CANCEL",
    "DEADLINE",
    "FAIL",
    "GROUP_DONE",
    "GROUP_FAILED",
    "GROUP_UNDONE",
    "IGNORE",
    "PARK",
    "RETRY",
    "BranchSpec",
    "CommandBuilder",
    "DefinitionError",
    "GroupSpec",
    "Policy",
    "Retry",
    "Rule",
    "SagaView",
    "StateSpec",
    "Status",
    "Undo",
    "Workflow",
]


class DefinitionError(ValueError):
    """A workflow definition contradicts itself; raised when it is written, never at run time."""


class Status(enum.StrEnum):
    RUNNING = "running"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    FAILED = "failed"  # an operator is needed


FINISHED = frozenset({Status.COMPLETED, Status.COMPENSATED, Status.FAILED})


class Policy(enum.StrEnum):
    """What an event does in a state where it moves nothing."""

    PARK = "park"  # keep it; apply it when the saga reaches a state where it fits
    IGNORE = "ignore"  # record it in the journal and change nothing
    FAIL = "fail"  # the saga fails: an operator must look


PARK = Policy.PARK
IGNORE = Policy.IGNORE
FAIL = Policy.FAIL

#: The trigger a fired deadline sends through the machine.
DEADLINE = "saga.DeadlineExpired"
#: The message a retry timer feeds through the engine: send the waiting state's commands again.
RETRY = "saga.RetryDue"
#: The trigger an operator's cancel sends through the machine: compensate from where the saga is.
#: A state that declares no ``on_cancel`` is cancelled the way its deadline would end it.
CANCEL = "saga.CancelRequested"
#: The triggers of a parallel group (``Workflow.group``): every branch done; a branch failed (or,
#: while the group is compensated, a branch's compensation); every branch settled while the group
#: was compensated.
GROUP_DONE = "saga.GroupDone"
GROUP_FAILED = "saga.GroupFailed"
GROUP_UNDONE = "saga.GroupUndone"


@dataclass(frozen=True)
class Retry:
    """Send a waiting state's commands again (same message ids) until a reply or the deadline.

    The n-th resend waits ``every * backoff**(n-1)``, at most ``max_every``.
    """

    every: timedelta
    backoff: float = 2.0
    max_every: timedelta | None = None

    def __post_init__(self) -> None:
        if self.every <= timedelta(0) or self.backoff < 1:
            raise DefinitionError("Retry needs every > 0 and backoff >= 1")

    def delay(self, attempt: int) -> timedelta:
        """The wait before resend number ``attempt + 1`` (attempt 0: the first resend)."""
        wait = self.every * (self.backoff**attempt)
        return min(wait, self.max_every) if self.max_every is not None else wait


@dataclass(frozen=True)
class SagaView:
    """What a command builder may read: the saga's identity and data, never the clock."""

    saga_id: str
    workflow: str
    key: str
    data: Mapping[str, Any]


CommandBuilder = Callable[[SagaView], Message]


def builder_for(send: type[Message] | CommandBuilder) -> CommandBuilder:
    """A message class becomes a builder that fills its fields from the saga's data by name."""
    if isinstance(send, type) and issubclass(send, Message):
        cls = send
        names = [f.name for f in fields(cls)]  # type: ignore[arg-type]

        def build(view: SagaView) -> Message:
            return load(cls, {name: view.data.get(name) for name in names})

        build.__qualname__ = f"build_{cls.__name__}"
        build.message_type = cls.TYPE  # type: ignore[attr-defined]
        build.message_class = cls  # type: ignore[attr-defined]  # its body's schema, for the contract
        return build
    return cast(CommandBuilder, send)


@dataclass(frozen=True)
class Undo:
    """A command a final state sends that waits for its reply, with a deadline and a retry like
    any compensation: ``state("expired", final=True, compensate=[Undo(ReturnFunds,
    done=FundsReturned, deadline=..., retry=...)])``.

    A fire-and-forget undo is lost when its participant is down, and its reply has nothing to
    confirm; an ``Undo`` is re-sent until confirmed, and the saga ends failed (an operator is
    needed) when it is refused (``failed``) or its deadline passes."""

    send: type[Command] | CommandBuilder
    done: type[Event]
    failed: type[Event] | None = None
    deadline: timedelta | None = None
    retry: Retry | None = None


@dataclass(frozen=True)
class BranchSpec:
    """A branch of a parallel group: a step's command, its replies, deadline and retry, and its
    compensation, awaited (``undo``) or sent and not waited for (``undo_sent``)."""

    name: str
    send: CommandBuilder
    done: type[Event]
    failed: type[Event] | None = None
    deadline: timedelta | None = None
    retry: Retry | None = None
    undo: Undo | None = None
    undo_sent: CommandBuilder | None = None


@dataclass(frozen=True)
class GroupSpec:
    """A parallel group: its branches' commands go out together, in one decision, and the saga
    moves on when every branch is done. When one fails or times out, the group is compensated in
    ``compensating_<name>``: the branches done are undone (all at once, or one at a time newest
    first), each still in flight is waited for until its reply (a success then undone too) or
    its deadline."""

    name: str
    branches: tuple[BranchSpec, ...]
    newest_first: bool = False

    @property
    def undoing(self) -> str:
        """The state the group is compensated in."""
        return f"compensating_{self.name}"

    def branch(self, name: str) -> BranchSpec:
        return next(b for b in self.branches if b.name == name)


@dataclass(frozen=True)
class StateSpec:
    name: str
    status: Status = Status.RUNNING
    final: bool = False
    deadline: timedelta | None = None
    on_deadline: str | None = None
    on_enter: tuple[CommandBuilder, ...] = ()
    retry: Retry | None = None
    #: the deadline is a time read from the saga's data on entering, from this field, rather
    #: than ``deadline`` after entering: a wait until the saga's ``release_at``
    until: str | None = None
    #: the deadline is the way on, not a failure: a wait (``steps.wait``). A cancel here
    #: compensates, and the diagram draws the deadline as the wait it is.
    wait: bool = False

    @property
    def timed(self) -> bool:
        """Whether a deadline is set on entering it (a duration or a time from the data)."""
        return self.deadline is not None or self.until is not None

    def due(self, entered: datetime, data: Mapping[str, Any]) -> datetime | None:
        """When its deadline falls due for a saga that entered it at ``entered`` with ``data``.
        Raises ValueError where ``until`` names no time in the data: the saga fails, saying so."""
        if self.deadline is not None:
            return entered + self.deadline
        if self.until is None:
            return None
        return _time_in(data, self.until, self.name)


def _time_in(data: Mapping[str, Any], name: str, state: str) -> datetime:
    """``data[name]`` as an aware time: a datetime or ISO 8601 text; without an offset, UTC."""
    value = data.get(name)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{state} waits until {name}, and {value!r} is no ISO 8601 time") from None
    if not isinstance(value, datetime):
        said = "missing from" if value is None else f"{type(value).__name__}, not a time, in"
        raise ValueError(f"{state} waits until {name}, which is {said} the saga's data")
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Rule:
    """An event in a source state: move to ``dest`` sending ``send``, or apply a policy."""

    event: str
    source: str
    dest: str | None = None
    send: tuple[CommandBuilder, ...] = ()
    policy: Policy | None = None


_RELEASE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _undo_events(undo: Undo | None) -> tuple[type[Event] | None, ...]:
    return () if undo is None else (undo.done, undo.failed)


def _listify(send: Any) -> list[Any]:
    if send is None:
        return []
    if isinstance(send, list | tuple):
        return list(send)
    return [send]


@dataclass
class Workflow:
    """A workflow: states, the rules that move between them, and the event that starts it.

    ``key`` names the field of the starting event that identifies the business transaction
    (``order_id``): the same key always means the same saga.
    """

    name: str
    starts_on: type[Event]
    key: str
    initial: str | None = None
    unexpected: Policy = IGNORE
    description: str = ""
    states: dict[str, StateSpec] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)
    events: dict[str, type[Message]] = field(default_factory=dict)
    #: state -> (its success event, the undo to send if that success arrives after the deadline)
    late_success: dict[str, tuple[str, tuple[CommandBuilder, ...]]] = field(default_factory=dict)
    #: state -> its undo as a compensation that waits for its reply (a step saga's compensation
    #: declared with ``done=``): a late success's undo is then awaited, retried and bounded by its
    #: deadline like any compensation, on a branch of the saga. Derived from the compensating
    #: state, which the fingerprint covers: not fingerprinted itself.
    late_undos: dict[str, Undo] = field(default_factory=dict)
    #: event type -> the start event's fields that event may change in the saga's data
    #: (declared with ``on(..., updates=...)`` or ``@step(..., updates=...)``); no other does
    updates: dict[str, frozenset[str]] = field(default_factory=dict)
    #: final state -> the first of the compensating states that send its ``Undo`` commands: a
    #: move declared into that final state enters there instead
    entries: dict[str, str] = field(default_factory=dict)
    #: which release of the workflow this is: a saga is decided by the release it started on until
    #: it finishes, so a changed definition gets a new release and both are loaded while sagas of
    #: the old one are in flight (not ``version``: that is a saga's revision)
    release: str = "1"
    #: the release new sagas start on, where several releases of one workflow are loaded
    current: bool = False
    #: event types taken though they answer none of the saga's commands (``on(..., signal=True)``)
    signals: frozenset[str] = frozenset()
    #: event types that cancel a saga wherever it is, as an operator's cancel does (``cancelled_by``)
    cancel_events: frozenset[str] = frozenset()
    #: parallel groups by the state the saga waits in while their branches run (``group``)
    groups: dict[str, GroupSpec] = field(default_factory=dict)
    #: state -> the workflow of the child saga it starts and waits for (``steps.child``)
    children: dict[str, str] = field(default_factory=dict)
    #: where a completed saga goes when its parent compensates it (``saga.CancelChild``), and the
    #: fire-and-forget undos sent on the way: a step saga's compensation from its end. None: the
    #: workflow has no way back from completed. Derived from the states: not fingerprinted.
    reopen: tuple[str, tuple[CommandBuilder, ...]] | None = None

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in ".:@"):
            # a dot ends a type's service; ":" and "@" would break a child saga's start route
            raise DefinitionError(f"workflow name {self.name!r} must be non-empty, without '.', ':' or '@'")
        if not _RELEASE.fullmatch(self.release):
            raise DefinitionError(
                f"{self.name}: release {self.release!r} must be 1 to 64 letters, digits, '.', '_' or '-'"
            )
        if self.key not in {f.name for f in fields(self.starts_on)}:  # type: ignore[arg-type]
            raise DefinitionError(f"{self.starts_on.__name__} has no field {self.key!r} to key sagas by")
        self.events[self.starts_on.TYPE] = self.starts_on

    def state(
        self,
        name: str,
        *,
        deadline: timedelta | None = None,
        on_deadline: str | None = None,
        send: type[Command] | CommandBuilder | Sequence[type[Command] | CommandBuilder] | None = None,
        final: bool = False,
        status: Status | None = None,
        compensate: Sequence[type[Command] | CommandBuilder | Undo] | None = None,
        retry: Retry | None = None,
        on_cancel: str | None = None,
        until: str | None = None,
        wait: bool = False,
    ) -> Workflow:
        """Declare a state. ``send`` goes out on entering it; a final state with ``compensate``
        sends those commands, in order, and ends the saga ``compensated``. ``on_cancel`` is where
        an operator's cancel (or a ``cancelled_by`` event) leads (default: where the deadline
        leads, unless ``wait``).

        ``until`` names a field of the saga's data holding the time the deadline falls due (ISO
        8601; without an offset, UTC), instead of ``deadline`` after entering. ``wait``: the
        deadline is the way on (a holding period), not a failure; give such a state an
        ``on_cancel``, or a cancel would move it on as its deadline does.

        ``compensate`` of :class:`Undo` items waits for each reply in turn, in a compensating
        state of its own (``<name>_undo_1``, ...), before the saga ends in ``name``; a refused or
        timed-out one ends it in ``<name>_failed``."""
        if name in self.states:
            raise DefinitionError(f"{self.name}: state {name!r} declared twice")
        if deadline is not None and until is not None:
            raise DefinitionError(f"{self.name}.{name}: a deadline is a duration or a time, not both")
        if (deadline is not None or until is not None) and on_deadline is None:
            raise DefinitionError(f"{self.name}.{name}: a deadline needs on_deadline=<state>")
        if wait and deadline is None and until is None:
            raise DefinitionError(f"{self.name}.{name}: a wait needs a deadline= or until=")
        if final and (deadline is not None or until is not None or retry is not None):
            raise DefinitionError(
                f"{self.name}.{name}: a final state cannot wait for a deadline or retry; to give"
                " its compensating commands a deadline and a retry, declare them as"
                " compensate=[Undo(<command>, done=<reply>, deadline=..., retry=...)]"
            )
        undos = [c for c in _listify(compensate) if isinstance(c, Undo)]
        if undos:
            if not final or len(undos) != len(_listify(compensate)):
                raise DefinitionError(
                    f"{self.name}.{name}: Undo belongs in compensate= of a final state, and there"
                    " every command is an Undo or none is"
                )
            self._undo_chain(name, undos)
            compensate = None
            status = Status.COMPENSATED if status is None else status
        on_deadline = self.entries.get(on_deadline, on_deadline) if on_deadline is not None else None
        on_cancel = self.entries.get(on_cancel, on_cancel) if on_cancel is not None else None
        if status is None:
            status = (Status.COMPENSATED if compensate else Status.COMPLETED) if final else Status.RUNNING
        if final != (status in FINISHED):
            raise DefinitionError(f"{self.name}.{name}: status {status} does not fit final={final}")
        builders = [builder_for(s) for s in [*_listify(send), *_listify(compensate)]]
        self.states[name] = StateSpec(
            name, status, final, deadline, on_deadline, tuple(builders), retry, until, wait
        )
        if (deadline is not None or until is not None) and on_deadline is not None:
            self.rules.append(Rule(DEADLINE, name, on_deadline))
        if on_cancel is not None:
            if final:
                raise DefinitionError(f"{self.name}.{name}: a final state cannot be cancelled")
            self.rules.append(Rule(CANCEL, name, on_cancel))
        if self.initial is None and not final:
            self.initial = name
        return self

    def on(
        self,
        event: type[Event],
        *,
        source: str | Iterable[str],
        dest: str | None = None,
        send: type[Command] | CommandBuilder | Sequence[type[Command] | CommandBuilder] | None = None,
        then: Policy | None = None,
        updates: Iterable[str] = (),
        signal: bool = False,
    ) -> Workflow:
        """What ``event`` does in ``source``: move to ``dest`` (sending ``send``), or ``then`` a policy.

        ``updates`` names fields of the start event that ``event`` may change in the saga's data
        (wherever it is taken): by default the start event's fields are fixed once the saga has
        started, and only the fields the event declares that the start event does not enter it.

        ``signal``: the event answers none of the saga's commands (a warehouse's ``Packed``, a
        customer's cancellation), so it is taken without a section 6 reply id, from whoever may
        publish its type (the broker's topic permissions guard it, docs/security.md). Any other
        event is taken only as the reply to a command the saga sent (docs/protocol.md, section 8)."""
        if (dest is None) == (then is None):
            raise DefinitionError(f"{self.name}: {event.TYPE} needs exactly one of dest= or then=")
        self.events[event.TYPE] = event
        if signal:
            self.signals = self.signals | {event.TYPE}
        self.allow_updates(event, updates)
        dest = self.entries.get(dest, dest) if dest is not None else None
        sources = [source] if isinstance(source, str) else list(source)
        builders = tuple(builder_for(s) for s in _listify(send))
        for src in sources:
            self.rules.append(Rule(event.TYPE, src, dest, builders, then))
        return self

    def group(
        self,
        name: str,
        branches: Sequence[BranchSpec],
        *,
        then: str,
        on_failure: str,
        failure_sends: Sequence[CommandBuilder] = (),
        newest_first: bool = False,
    ) -> Workflow:
        """Declare a parallel group: a state ``name`` that sends every branch's command on
        entering and moves to ``then`` when every branch is done, and a state
        ``compensating_<name>`` entered when a branch fails, times out or the saga is cancelled,
        which undoes the branches done (and each in flight that still succeeds) and then moves to
        ``on_failure`` sending ``failure_sends``, or to ``failed`` when a branch's compensation is
        refused or not confirmed by its deadline. A branch's replies are told by their reply id
        (docs/protocol.md, section 6), so two branches may await the same type."""
        if len(branches) < 1:
            raise DefinitionError(f"{self.name}.{name}: a parallel group needs branches")
        names = [b.name for b in branches]
        if len(set(names)) != len(names):
            raise DefinitionError(f"{self.name}.{name}: two branches are called the same")
        spec = GroupSpec(name, tuple(branches), newest_first)
        self.state(name)
        self.state(spec.undoing, status=Status.COMPENSATING)
        self.groups[name] = spec
        for branch in branches:
            for event in (branch.done, branch.failed, *(_undo_events(branch.undo))):
                if event is not None:
                    self.events[event.TYPE] = event
        self.rules.append(Rule(GROUP_DONE, name, then))
        self.rules.append(Rule(GROUP_FAILED, name, spec.undoing))
        self.rules.append(Rule(CANCEL, name, spec.undoing))
        self.rules.append(Rule(GROUP_UNDONE, spec.undoing, on_failure, tuple(failure_sends)))
        self.rules.append(Rule(GROUP_FAILED, spec.undoing, "failed"))
        return self

    @property
    def grouped(self) -> frozenset[str]:
        """The steps that run as branches of a parallel group."""
        return (
            frozenset(b.name for g in self.groups.values() for b in g.branches)
            if self.groups
            else frozenset()
        )

    def group_sends(self) -> list[tuple[str, CommandBuilder]]:
        """Every command builder of the groups' branches, with the state it is sent in: a
        branch's own in the group's state, its compensation in ``compensating_<group>``."""
        found: list[tuple[str, CommandBuilder]] = []
        for group in self.groups.values():
            for branch in group.branches:
                found.append((group.name, branch.send))
                if branch.undo is not None:
                    found.append((group.undoing, builder_for(branch.undo.send)))
                if branch.undo_sent is not None:
                    found.append((group.undoing, branch.undo_sent))
        return found

    def group_of(self, state: str) -> GroupSpec | None:
        """The group whose branches run, or are compensated, in ``state``."""
        if not self.groups:
            return None
        found = self.groups.get(state)
        if found is None and state.startswith("compensating_"):
            found = self.groups.get(state.removeprefix("compensating_"))
        return found

    def cancelled_by(self, *events: type[Event]) -> Workflow:
        """Let each of ``events`` cancel a saga from outside (a customer's ``OrderCancelled``),
        in whatever state it is, exactly as an operator's ``cancel`` would: a state with a cancel
        route (``on_cancel``, or its deadline's) takes it there, what was done is compensated.

        Like a signal, it answers no command: it is taken without a section 6 reply id, from
        whoever may publish its type. For a saga that is compensating already, or in a state with
        no cancel route, it is journaled as ignored; for a saga that completed or was compensated
        it is acked and counted (``orchestrator_cancels_after_finish_total``), not journaled."""
        for event in events:
            if event.TYPE == self.starts_on.TYPE:
                raise DefinitionError(f"{self.name}: {event.TYPE} starts the saga; it cannot cancel it")
            self.events[event.TYPE] = event
            self.cancel_events = self.cancel_events | {event.TYPE}
        return self

    @property
    def unasked(self) -> frozenset[str]:
        """The event types taken without answering a command: signals and cancel events."""
        return self.signals | self.cancel_events if self.cancel_events else self.signals

    def _undo_chain(self, final: str, undos: list[Undo]) -> None:
        """A compensating state per ``Undo``, each moving to the next on its reply and the last to
        ``final``; moves already declared into ``final`` are pointed at the first."""
        names = [f"{final}_undo_{n}" for n in range(1, len(undos) + 1)]
        failed = f"{final}_failed"
        for taken in [*names, failed]:
            if taken in self.states:
                raise DefinitionError(
                    f"{self.name}: state {taken!r} is declared; {final}'s Undo needs the name"
                )
        self.entries[final] = names[0]
        initial = self.initial  # a chain declared first is still not where sagas start
        self.rules = [replace(rule, dest=names[0]) if rule.dest == final else rule for rule in self.rules]
        self.states = {
            n: replace(s, on_deadline=names[0]) if s.on_deadline == final else s
            for n, s in self.states.items()
        }
        for index, (state, undo) in enumerate(zip(names, undos, strict=True)):
            self.state(
                state,
                status=Status.COMPENSATING,
                send=undo.send,
                deadline=undo.deadline,
                on_deadline=failed if undo.deadline is not None else None,
                retry=undo.retry,
            )
            following = names[index + 1] if index + 1 < len(names) else final
            self.rules.append(Rule(undo.done.TYPE, state, following))
            self.events[undo.done.TYPE] = undo.done
            if undo.failed is not None:
                self.rules.append(Rule(undo.failed.TYPE, state, failed))
                self.events[undo.failed.TYPE] = undo.failed
        self.state(failed, final=True, status=Status.FAILED)
        self.initial = initial

    def allow_updates(self, event: type[Event], names: Iterable[str]) -> None:
        """Let ``event`` change the start event's fields ``names`` in the saga's data. Each must be
        a field of both events and not the key: a saga's key never changes."""
        names = [names] if isinstance(names, str) else list(names)
        if not names:
            return
        carried = {f.name for f in fields(event)}  # type: ignore[arg-type]
        started = {f.name for f in fields(self.starts_on)}  # type: ignore[arg-type]
        for name in names:
            if name == self.key:
                raise DefinitionError(f"{self.name}: {self.key!r} is the saga's key; no event updates it")
            if name not in carried:
                raise DefinitionError(f"{self.name}: {event.TYPE} has no field {name!r} to update")
            if name not in started:
                raise DefinitionError(
                    f"{self.name}: {name!r} is not a field of {self.starts_on.TYPE}:"
                    f" {event.TYPE} sets it without updates="
                )
        self.updates[event.TYPE] = self.updates.get(event.TYPE, frozenset()) | frozenset(names)

    def fixed_fields(self, event_type: str) -> frozenset[str]:
        """The fields of the saga's data that ``event_type`` may not change: the key and the start
        event's fields, less those the workflow lets this event update."""
        started = frozenset(f.name for f in fields(self.starts_on))  # type: ignore[arg-type]
        return (started | {self.key}) - self.updates.get(event_type, frozenset())

    def with_deadlines(self, name: str, deadline: timedelta) -> Workflow:
        """The same workflow under another name, every deadline set to ``deadline``: to run a
        bundled saga on another clock (the benchmark parks sagas for an hour) without a copy of
        its definition that could drift from it."""
        states = {
            n: replace(s, deadline=deadline if s.deadline is not None else None)
            for n, s in self.states.items()
        }
        return replace(
            self,
            name=name,
            states=states,
            rules=list(self.rules),
            events=dict(self.events),
            late_success=dict(self.late_success),
            late_undos={
                s: replace(u, deadline=deadline if u.deadline is not None else None)
                for s, u in self.late_undos.items()
            },
            updates=dict(self.updates),
            entries=dict(self.entries),
            groups=dict(self.groups),
            children=dict(self.children),
        )

    def fingerprint(self) -> str:
        """A digest of the definition's structure: its states, rules, timers, events and their
        fields, and the command types it sends. Kept with the release the first time it runs, so
        that the same release over a changed structure is caught before it decides a saga. What a
        command builder computes inside is code, not structure: it is not covered."""

        def builders(sends: Iterable[CommandBuilder]) -> list[str]:
            return [str(getattr(b, "message_type", None) or getattr(b, "__qualname__", "?")) for b in sends]

        def seconds(delay: timedelta | None) -> float | None:
            return None if delay is None else delay.total_seconds()

        structure: dict[str, Any] = {
            "name": self.name,
            "starts_on": self.starts_on.TYPE,
            "key": self.key,
            "initial": self.initial,
            "unexpected": str(self.unexpected),
            "states": [
                [
                    s.name,
                    str(s.status),
                    s.final,
                    seconds(s.deadline),
                    s.on_deadline,
                    builders(s.on_enter),
                    None
                    if s.retry is None
                    else [seconds(s.retry.every), s.retry.backoff, seconds(s.retry.max_every)],
                    # only where set: the fingerprints of definitions without waits stay
                    *([{"until": s.until, "wait": s.wait}] if s.until is not None or s.wait else []),
                ]
                for s in sorted(self.states.values(), key=lambda spec: spec.name)
            ],
            "rules": sorted(
                [r.event, r.source, r.dest, builders(r.send), None if r.policy is None else str(r.policy)]
                for r in self.rules
            ),
            "events": {
                type_name: sorted(f.name for f in fields(cls))  # type: ignore[arg-type]
                for type_name, cls in sorted(self.events.items())
            },
            "late_success": {
                s: [event, builders(undo)] for s, (event, undo) in sorted(self.late_success.items())
            },
            "updates": {event: sorted(names) for event, names in sorted(self.updates.items())},
            "entries": dict(sorted(self.entries.items())),
        }
        if self.signals:  # only where declared: the fingerprints of releases from before stay
            structure["signals"] = sorted(self.signals)
        if self.cancel_events:
            structure["cancel_on"] = sorted(self.cancel_events)
        if self.children:
            structure["children"] = dict(sorted(self.children.items()))
        if self.groups:
            structure["groups"] = [
                [
                    g.name,
                    g.newest_first,
                    [
                        [
                            b.name,
                            builders([b.send]),
                            b.done.TYPE,
                            b.failed.TYPE if b.failed else None,
                            seconds(b.deadline),
                            None if b.retry is None else [seconds(b.retry.every), b.retry.backoff],
                            None
                            if b.undo is None
                            else [
                                builders([builder_for(b.undo.send)]),
                                b.undo.done.TYPE,
                                seconds(b.undo.deadline),
                            ],
                            None if b.undo_sent is None else builders([b.undo_sent]),
                        ]
                        for b in g.branches
                    ],
                ]
                for g in sorted(self.groups.values(), key=lambda g: g.name)
            ]
        canonical = json.dumps(structure, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def rule_for(self, state: str, event_type: str) -> Rule | None:
        for rule in self.rules:
            if rule.source == state and rule.event == event_type:
                return rule
        return None

    def check(self) -> Workflow:
        """Refuse a definition that names states it never declared; called when it is compiled."""
        if self.initial is None:
            raise DefinitionError(f"{self.name}: no non-final state to start in")
        for rule in self.rules:
            for name in (rule.source, rule.dest):
                if name is not None and name not in self.states:
                    raise DefinitionError(f"{self.name}: {rule.event} names unknown state {name!r}")
        for spec in self.states.values():
            if spec.on_deadline is not None and spec.on_deadline not in self.states:
                raise DefinitionError(f"{self.name}.{spec.name}: on_deadline {spec.on_deadline!r} is unknown")
        for rule in self.rules:
            if rule.event in self.cancel_events:
                raise DefinitionError(
                    f"{self.name}: {rule.event} cancels the saga (cancelled_by); it cannot also be"
                    f" what {rule.source} takes"
                )
        replies = {e.TYPE for u in self.late_undos.values() for e in _undo_events(u) if e is not None}
        for group in self.groups.values():
            for b in group.branches:
                replies |= {e.TYPE for e in (b.done, b.failed, *_undo_events(b.undo)) if e is not None}
        for event_type in sorted(self.cancel_events & replies):
            raise DefinitionError(
                f"{self.name}: {event_type} cancels the saga (cancelled_by); it cannot also be a reply"
            )
        return self
