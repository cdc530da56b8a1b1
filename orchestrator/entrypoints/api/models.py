"""The REST API's request and response bodies, so that its OpenAPI schema says exactly what it sends.

Every string that reaches PostgreSQL is checked here first, by the rules AMQP messages obey too
(orchestrator.core.ingress): a NUL character or a lone surrogate cannot be stored in ``text`` or
``jsonb``, and an integer beyond 64 bits cannot be encoded, so each is refused as bad input (422)
instead of failing deep in a transaction (500).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Self
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from orchestrator.core.definitions import Status
from orchestrator.core.ingress import MAX_KEY_LENGTH, Reason, check_json, check_text

__all__ = [
    "ActionRequest",
    "Command",
    "DeadLetterDetail",
    "DeadLetterPage",
    "DeadLetterPurgeRequest",
    "DeadLetterPurgeResult",
    "DeadLetterReplayRequest",
    "DeadLetterReplayResult",
    "DeadLetterSummary",
    "Health",
    "HistoryEntry",
    "HistoryPage",
    "Incoming",
    "Problem",
    "Ready",
    "ResumeRequest",
    "SagaAt",
    "SagaDetail",
    "SagaPage",
    "SagaSummary",
    "SagaWritten",
    "SkipRequest",
    "StartRequest",
    "Status",
    "Timer",
    "WorkflowDetail",
    "WorkflowSummary",
]


def storable_text(value: str) -> str:
    """The ingress rule for text (orchestrator.core.ingress): the same for REST as for AMQP."""
    return check_text(value)


def storable_json(value: dict[str, Any]) -> dict[str, Any]:
    check_json(value, "data")
    return value


Text = Annotated[str, AfterValidator(storable_text)]
JsonObject = Annotated[dict[str, Any], AfterValidator(storable_json)]


class Problem(BaseModel):
    """Every 4xx (and the rare 5xx) answer: what was wrong, in one sentence."""

    detail: str
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="for bad input: each field that was wrong, as pydantic reports it"
    )


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str = Field(description="ready or unready")
    checks: dict[str, str] = Field(description="per dependency: ok, or what is wrong")


class Caller(BaseModel):
    name: str = Field(description="the token's owner, journaled as the actor of what it does")
    role: Literal["read", "operate", "admin"] = Field(
        description="read: reads; operate: also starts, operator actions, replays; admin: everything"
    )


# Reads ------------------------------------------------------------------------------------------
class _Model(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class _SagaFields(_Model):
    """What every view of a saga shows: who it is and where it stands."""

    id: str
    workflow: str
    release: str = Field(description="the release of its workflow the saga is decided by")
    key: str
    state: str
    status: Status
    version: int
    last_error: str | None


class SagaSummary(_SagaFields):
    created_at: datetime
    updated_at: datetime


class SagaPage(BaseModel):
    items: list[SagaSummary]
    next_cursor: str | None = Field(
        description="pass as ?cursor= for the next (older) page; null on the last"
    )


class Timer(_Model):
    kind: str = Field(
        description="deadline: the state's deadline; retry: when its commands are sent again;"
        " deadline:<branch>, retry:<branch>: a branch's"
    )
    state: str
    due_at: datetime
    version: int


class Command(BaseModel):
    type: str
    message_id: str


class SentCommand(Command):
    payload: dict[str, Any] | None = Field(
        description="the command's payload as sent; null in entries journaled before payloads were recorded"
    )


class ParkedEvent(BaseModel):
    type: str
    message_id: str


class Branch(BaseModel):
    name: str = Field(
        description="<group>.<step>: a step of a parallel group; undo:<step>:<command id>: the undo of"
        " that step's success that came after the saga gave up on it"
    )
    phase: str | None = Field(
        None,
        description="a group's step: running, done, failed, timed_out; while the group is compensated"
        " undoing, undone, undo_failed",
    )
    awaiting: list[Command] = Field(description="the commands it sent and waits on")
    attempt: int = Field(description="resends of those commands so far")
    given_up: bool = Field(description="its deadline passed unconfirmed: the saga failed, for an operator")


class ChildLink(BaseModel):
    saga_id: str = Field(description="the child saga: GET /sagas/{saga_id}")
    workflow: str
    step: str = Field(description="the parent's step that started it")


class SagaState(_SagaFields):
    """The saga as its row holds it; one rebuilt from its journal alone may lack the row's times."""

    data: dict[str, Any]
    created_at: datetime | None
    updated_at: datetime | None
    parked: list[ParkedEvent] = Field(description="events kept until the saga reaches a state they fit")
    awaiting: list[Command] = Field(description="the commands the current state sent and waits on")
    attempt: int = Field(description="resends of those commands so far")
    timed_out: list[str] = Field(
        description="steps given up on by a deadline (a late success is undone), and the compensation"
        " a failed saga gave up on (its late confirmation carries the saga on)"
    )
    waiting_for: list[str] = Field(description="event types that move the saga on from its state")
    branches: list[Branch] = Field(
        default_factory=list,
        description="what it waits on besides its state's commands: the undo of a step's late success",
    )
    parent: str | None = Field(
        None, description="the saga that started this one as a child step, whose outcome it reports to"
    )
    children: list[ChildLink] = Field(
        default_factory=list, description="the child sagas its steps started, oldest first"
    )


class SagaDetail(SagaState):
    timers: list[Timer] = Field(description="pending deadline and retry, soonest first")


class SagaWritten(SagaState):
    """A saga as a start or an operator action committed it. The commit is the answer: once it went
    through, a failure to read more for the answer is a ``note``, never an error."""

    timers: list[Timer] | None = Field(
        description=(
            "pending deadline and retry, soonest first; for a saga this request started, those its"
            " commit set; null when they could not be read after the commit (see note)"
        )
    )
    note: str | None = Field(
        default=None, description="what the answer lacks, and why, when the commit went through"
    )


class SagaAt(SagaState):
    at: datetime = Field(description="the moment asked for")
    seq: int = Field(description="the last journal entry applied")


class Incoming(BaseModel):
    type: str
    message_id: str
    payload: dict[str, Any]
    schema_version: int = Field(
        default=1, description="the schema version payload is written in, as it came (docs/protocol.md)"
    )


class HistoryEntry(BaseModel):
    seq: int
    recorded_at: datetime
    kind: str = Field(description="event, deadline, retry or operator")
    actor: str | None = Field(description="who asked, for an operator's action or start")
    message: Incoming = Field(description="what came in")
    outcome: str | None = Field(description="what was decided: started, moved, parked, ignored, failed, ...")
    from_state: str | None
    to_state: str | None
    status: str | None
    reason: str | None
    commands: list[SentCommand] = Field(description="what was sent, with each payload")
    decision: dict[str, Any] = Field(description="the decision as the journal keeps it")


class HistoryPage(BaseModel):
    items: list[HistoryEntry]
    next_after: int | None = Field(description="pass as ?after= for the next page; null on the last")


class RetrySpec(_Model):
    every_seconds: float
    backoff: float
    max_every_seconds: float | None


class StateSpec(_Model):
    name: str
    status: Status
    final: bool
    initial: bool
    deadline_seconds: float | None
    on_deadline: str | None
    retry: RetrySpec | None
    sends: list[str]
    until: str | None = Field(
        None,
        description="the field of the saga's data whose time the deadline falls due at"
        " (else after deadline_seconds)",
    )
    wait: bool = Field(False, description="the deadline is the way on (a wait), not a failure")
    sagas: int = Field(description="sagas in this state now")


class RuleSpec(_Model):
    event: str
    source: str
    dest: str | None
    policy: str | None
    sends: list[str]


class WorkflowSummary(BaseModel):
    name: str
    description: str
    starts_on: str
    key: str
    sagas: dict[str, int] = Field(description="sagas per status now")


class ReleaseSpec(_Model):
    release: str
    current: bool = Field(description="new sagas start on it")
    loaded: bool = Field(description="this process decides its sagas; False: only sagas in flight need it")
    fingerprint: str | None = Field(description="of its structure, as kept when it first ran")
    first_run_at: datetime | None
    in_flight: int = Field(description="sagas running or compensating on it now")
    states: dict[str, int] = Field(description="those sagas per state")


class WorkflowActivity(_Model):
    window_seconds: int = Field(description="how far back started and finished count")
    started: int = Field(description="sagas started in the window")
    finished: dict[str, int] = Field(
        description="sagas that came to completed, compensated or failed in the window, per status"
    )
    stuck: int = Field(description="sagas stuck now: unfinished, no pending timer, no progress for a while")


class WorkflowDetail(WorkflowSummary):
    releases: list[ReleaseSpec] = Field(
        description="the releases loaded, and those sagas in flight are on; the definition below"
        " is the current one's"
    )
    initial: str
    unexpected: str = Field(description="what an event no rule names does: ignore, park or fail")
    events: list[str]
    groups: dict[str, list[str]] = Field(
        default_factory=dict,
        description="parallel groups: the state a saga waits in while the group runs -> its branches",
    )
    cancel_on: list[str] = Field(
        default_factory=list, description="events that cancel a saga wherever it is, as an operator's cancel"
    )
    children: dict[str, str] = Field(
        default_factory=dict,
        description="child steps: the state a saga waits in for its child saga -> the child's workflow",
    )
    states: list[StateSpec]
    rules: list[RuleSpec]
    mermaid: str = Field(description="a stateDiagram-v2 of the workflow")
    activity: WorkflowActivity = Field(description="its throughput over the window, and its stuck sagas")


# Writes -----------------------------------------------------------------------------------------
class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StartRequest(_Request):
    workflow: Text = Field(max_length=200)
    key: Text = Field(
        min_length=1, max_length=MAX_KEY_LENGTH, description="the business key, e.g. the order id"
    )
    data: JsonObject = Field(
        default_factory=dict, description="the starting event's fields; the key field may be left out"
    )
    schema_version: int = Field(
        default=1,
        ge=1,
        le=2**31 - 1,
        strict=True,
        description="the schema version data is written in, as the header x-schema-version says it"
        " of an event (docs/protocol.md, section 5): upcast to the starting event's schema before"
        " it is read. Absent: 1, as from a client that predates schema versions",
    )


class ActionRequest(_Request):
    reason: Text | None = Field(default=None, max_length=2000, description="why, for the journal")


class BranchRequest(ActionRequest):
    branch: Text | None = Field(
        default=None,
        max_length=400,
        description="the branch of a parallel group it is about, <group>.<step> (GET /sagas/{id} lists them)",
    )


class RetryRequest(BranchRequest):
    new_attempt: bool = Field(
        default=False,
        description="send the commands with new message ids, as a new attempt (default: the same ids)",
    )


class ResumeRequest(ActionRequest):
    new_attempt: bool = Field(
        default=False,
        description="send the commands with new message ids, as a new attempt (default: the same ids)",
    )
    step: Text | None = Field(
        default=None, max_length=200, description="the state to resume from (default: where it failed)"
    )


class SkipRequest(BranchRequest):
    outcome: Text = Field(max_length=200, description="the event type to take as the step's outcome")
    data: JsonObject = Field(default_factory=dict, description="that event's fields")


# Dead letters -----------------------------------------------------------------------------------
#: a dead letter's id
DeadLetterId = Annotated[int, Field(ge=1, le=2**63 - 1)]
Source = Literal["orchestrator", "broker"]


class DeadLetterSummary(_Model):
    id: int
    dead_at: datetime
    source: Source = Field(description="orchestrator: it refused it; broker: taken from {ns}.dead-letter")
    reason: str = Field(description="a reason code (docs/protocol.md, section 9)")
    detail: str = Field(description="why, in a sentence; never the payload")
    message_id: str | None
    message_type: str | None
    correlation_id: str | None
    exchange: str = Field(
        description="where it says it was sent (its headers): a replay goes where its saga or its type says"
    )
    routing_key: str
    body_size: int = Field(description="the body's size as received, in bytes")
    body_stored: int = Field(description="how much of it is stored: less when it was cut at the size cap")
    replayed_at: datetime | None
    replayed_by: str | None


class DeadLetterPage(BaseModel):
    items: list[DeadLetterSummary]
    next_cursor: str | None = Field(
        description="pass as ?cursor= for the next (older) page; null on the last"
    )


class DeadLetterDetail(DeadLetterSummary):
    properties: dict[str, Any] = Field(description="every property as received, headers under headers")
    body_text: str | None = Field(description="the stored body, when it is UTF-8")
    body_base64: str | None = Field(description="the stored body in base64, when it is not UTF-8")
    replayable: bool
    not_replayable_because: str | None


class DeadLetterReplayRequest(_Request):
    """Which dead letters to replay: ``ids``, or those with ``reason`` (and dead ``since``)."""

    ids: list[DeadLetterId] | None = Field(default=None, min_length=1, max_length=1000)
    reason: Reason | None = None
    since: datetime | None = Field(default=None, description="with reason: dead at or after this time")
    again: bool = Field(default=False, description="replay those replayed before too")
    limit: int = Field(default=1000, ge=1, le=10000, description="with reason: at most this many")

    @model_validator(mode="after")
    def _one_way(self) -> Self:
        if (self.ids is None) == (self.reason is None):
            raise ValueError("give ids or reason (not both)")
        if self.ids is not None and self.since is not None:
            raise ValueError("since goes with reason, not with ids")
        return self


class ReplayRefusal(BaseModel):
    id: int
    detail: str = Field(description="why it was not replayed")


class DeadLetterReplayResult(BaseModel):
    replayed: list[int] = Field(description="the ids replayed, in the order they were sent")
    refused: list[ReplayRefusal] = Field(description="those not replayed, and why")


class DeadLetterPurgeRequest(_Request):
    """Which dead letters to delete: ``ids``, or those with ``reason`` and/or dead ``before``."""

    ids: list[DeadLetterId] | None = Field(default=None, min_length=1, max_length=1000)
    reason: Reason | None = None
    before: datetime | None = Field(default=None, description="dead before this time")

    @model_validator(mode="after")
    def _one_way(self) -> Self:
        filtered = self.reason is not None or self.before is not None
        if (self.ids is not None) == filtered:
            raise ValueError("give ids, or reason and/or before (not both)")
        return self


class DeadLetterPurgeResult(BaseModel):
    purged: int = Field(description="how many were deleted")


# Migrations between releases ----------------------------------------------------------------------
Release = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
StateName = Annotated[Text, Field(min_length=1, max_length=200)]


class MigrationRequest(_Request):
    from_release: Release = Field(description="the release the sagas are on")
    to_release: Release = Field(description="the release they move to; loaded by this process")
    states: dict[StateName, StateName] = Field(
        default_factory=dict,
        max_length=1000,
        description="state in from_release -> state in to_release; a state the target has keeps its name",
    )
    sagas: list[UUID] | None = Field(
        default=None, max_length=10_000, description="only these sagas (default: all in flight or failed)"
    )
    apply: bool = Field(default=False, description="false: a dry run, nothing is written nor locked")
    limit: int = Field(
        default=1000, ge=1, le=10_000, description="at most this many sagas (without sagas): a page"
    )
    after: UUID | None = Field(
        default=None, description="without sagas: those after this saga id (the last answer's next_after)"
    )


class MigratedSaga(_Model):
    saga_id: str
    key: str
    from_state: str
    to_state: str | None = Field(description="where it goes; null: it cannot move")
    status: str
    refused: str | None = Field(description="why it cannot move; the others go on")


class MigrationReport(_Model):
    applied: bool = Field(description="false: a dry run; nothing was written")
    moved: int = Field(description="sagas moved (or, in a dry run, that would move)")
    refused: int = Field(description="sagas that cannot move, each with its reason")
    sagas: list[MigratedSaga]
    next_after: str | None = Field(
        description="more sagas than limit: send again with after = this for the next page; null: all sent"
    )
