"""``/sagas``: read sagas and their journals, start sagas, and the operator actions.

Reads go straight to the saga rows and journal; starts and actions go through
:mod:`orchestrator.service.operations`, which decides them with the engine and journals them with who
asked and why, and their commands and timers are then handed to the running service.
"""

import logging
from datetime import datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Body, HTTPException, Path, Query, Request, Response

from orchestrator.adapters.postgres.faults import from_database
from orchestrator.adapters.postgres.queries import HistoryRow, SagaFilter
from orchestrator.adapters.tracing import request_span
from orchestrator.core.children import children_of, is_link, parent_of
from orchestrator.core.engine import SagaSnapshot
from orchestrator.core.ingress import MAX_KEY_LENGTH
from orchestrator.core.replay import replay
from orchestrator.entrypoints.api import models as m
from orchestrator.entrypoints.api.auth import Guard, Role
from orchestrator.entrypoints.api.context import ApiContext, answers, storable, utc
from orchestrator.service.operations import Applied, OperatorAction

__all__ = ["sagas_router"]

log = logging.getLogger("orchestrator.entrypoints.api.app")

SagaId = Annotated[UUID, Path(description="the saga's id")]
OptionalAction = Annotated[m.ActionRequest | None, Body()]

#: From a started saga to what can be done with it (OpenAPI links: clients and fuzzers follow them).
_LINKS = {
    name: {"operationId": operation, "parameters": {"saga_id": "$response.body#/id"}}
    for name, operation in (
        ("get", "get_saga"),
        ("history", "saga_history"),
        ("retry", "retry_saga"),
        ("cancel", "cancel_saga"),
        ("resume", "resume_saga"),
        ("fire-deadline", "fire_deadline"),
        ("skip", "skip_step"),
    )
}


def state_fields(ctx: ApiContext, saga: SagaSnapshot) -> dict[str, Any]:
    waiting = [] if saga.finished else ctx.waiting.get((saga.workflow, saga.release), {}).get(saga.state, [])
    return {
        "id": saga.id,
        "workflow": saga.workflow,
        "release": saga.release,
        "key": saga.key,
        "state": saga.state,
        "status": saga.status,
        "version": saga.version,
        "data": dict(saga.data),
        "last_error": saga.last_error,
        "created_at": saga.created_at,
        "updated_at": saga.updated_at,
        "parked": [m.ParkedEvent(type=p["type"], message_id=p["message_id"]) for p in saga.parked],
        "awaiting": [m.Command(type=c["type"], message_id=c["message_id"]) for c in saga.awaiting],
        "attempt": saga.attempt,
        "timed_out": list(saga.timed_out),
        "waiting_for": list(waiting),
        "branches": [
            m.Branch(
                name=b["name"],
                phase=b.get("phase"),
                awaiting=[m.Command(type=c["type"], message_id=c["message_id"]) for c in b["awaiting"]],
                attempt=int(b.get("attempt", 0)),
                given_up=bool(b.get("given_up")),
            )
            for b in saga.branches
            if not is_link(b)
        ],
        "parent": link["saga_id"] if (link := parent_of(saga.branches)) is not None else None,
        "children": [
            m.ChildLink(saga_id=c["saga_id"], workflow=c["workflow"], step=c["step"])
            for c in children_of(saga.branches)
        ],
    }


async def detail(ctx: ApiContext, saga: SagaSnapshot) -> m.SagaDetail:
    timers = [m.Timer.model_validate(t) for t in await ctx.queries.timers(saga.id)]
    return m.SagaDetail(**state_fields(ctx, saga), timers=timers)


def saga_filter(
    ctx: ApiContext,
    *,
    workflow: str | None = None,
    status: m.Status | None = None,
    state: str | None = None,
    key: str | None = None,
    started_after: datetime | None = None,
    started_before: datetime | None = None,
    updated_after: datetime | None = None,
    updated_before: datetime | None = None,
    stuck: bool = False,
) -> SagaFilter:
    """The filter of ``GET /sagas`` (and ``orchestrator sagas list``), checked against the loaded
    workflows: a name no workflow has is an HTTP 422, not an empty page that looks like an answer."""
    if workflow is not None and workflow not in ctx.registry.workflows:
        known = ", ".join(sorted(ctx.registry.workflows))
        raise HTTPException(422, f"workflow: unknown {workflow!r}; known: {known}")
    if state is not None:
        states = {
            s
            for (w, _), c in ctx.registry.releases.items()
            if workflow is None or w == workflow
            for s in c.workflow.states
        }
        if state not in states:
            raise HTTPException(422, f"state: no state {state!r}" + (f" in {workflow}" if workflow else ""))
    storable(key, "key")
    stuck_since = ctx.clock() - timedelta(seconds=ctx.settings.stuck_after_seconds) if stuck else None
    return SagaFilter(
        workflow=workflow,
        status=str(status) if status is not None else None,
        state=state,
        key=key,
        started_after=utc(started_after, "started_after"),
        started_before=utc(started_before, "started_before"),
        updated_after=utc(updated_after, "updated_after"),
        updated_before=utc(updated_before, "updated_before"),
        stuck_since=stuck_since,
    )


async def saga_page(ctx: ApiContext, found: SagaFilter, limit: int, cursor: str | None) -> m.SagaPage:
    page = await ctx.queries.sagas(found, limit, cursor)
    return m.SagaPage(
        items=[m.SagaSummary.model_validate(r) for r in page.items], next_cursor=page.next_cursor
    )


async def history_page(ctx: ApiContext, saga_id: str, after: int, limit: int) -> m.HistoryPage | None:
    """A page of the saga's journal; None when there is no such saga."""
    rows = await ctx.queries.history(saga_id, after, limit + 1)  # one more: is there a next page?
    if not rows and not await ctx.queries.exists(saga_id):
        return None
    page = rows[:limit]
    next_after = page[-1].seq if len(rows) > limit else None
    return m.HistoryPage(items=[history_entry(r) for r in page], next_after=next_after)


def timers_set_by(applied: Applied) -> list[m.Timer]:
    """The timers a start's commit wrote: all that a saga it created has."""
    found: dict[str, m.Timer] = {}
    for decision in applied.decisions:
        version = decision.saga.version
        for kind, changed, timer in (
            ("deadline", decision.deadline_changed, decision.deadline),
            ("retry", decision.retry_changed, decision.retry),
        ):
            if changed:
                found.pop(kind, None)
                if timer is not None:
                    found[kind] = m.Timer(kind=kind, state=timer.state, due_at=timer.due_at, version=version)
    return sorted(found.values(), key=lambda t: t.due_at)


async def written(ctx: ApiContext, applied: Applied) -> m.SagaWritten:
    """The answer to a start or an action whose transaction committed: the saga as the commit left
    it. A saga the request created has the timers its commit set; otherwise they are read, and if
    the database fails now, the answer says so instead of turning a done write into an error."""
    saga = applied.saga
    fields = state_fields(ctx, saga)
    if applied.created:
        return m.SagaWritten(**fields, timers=timers_set_by(applied))
    try:
        timers = [m.Timer.model_validate(t) for t in await ctx.queries.timers(saga.id)]
    except Exception as error:
        if from_database(error) is None:
            raise
        log.warning("saga %s committed, but its timers could not be read for the answer: %r", saga.id, error)
        note = (
            "committed; its timers could not be read afterwards (the database failed):"
            f" GET /sagas/{saga.id} shows them"
        )
        return m.SagaWritten(**fields, timers=None, note=note)
    return m.SagaWritten(**fields, timers=timers)


def history_entry(row: HistoryRow) -> m.HistoryEntry:
    message, decision = row.message, row.decision
    return m.HistoryEntry(
        seq=row.seq,
        recorded_at=row.recorded_at,
        kind=row.kind,
        actor=row.actor,
        message=m.Incoming(
            type=str(message.get("type", "")),
            message_id=str(message.get("message_id", "")),
            payload=dict(message.get("payload") or {}),
            schema_version=int(message.get("schema") or 1),
        ),
        outcome=decision.get("outcome"),
        from_state=decision.get("from"),
        to_state=decision.get("to"),
        status=decision.get("status"),
        reason=decision.get("reason"),
        commands=[
            m.SentCommand(type=c["type"], message_id=c["message_id"], payload=c.get("payload"))
            for c in decision.get("commands") or []
        ],
        decision=decision,
    )


def sagas_router(ctx: ApiContext, guard: Guard) -> APIRouter:
    """The routes, with the token checks the settings ask for (maybe none)."""
    reads, read_auth = guard.reads, guard.read_errors
    Actor = Annotated[str, guard.actor()]
    workflow_names = sorted(ctx.registry.workflows)
    all_states = sorted({s for c in ctx.registry.releases.values() for s in c.workflow.states})
    router = APIRouter()
    viewing = APIRouter(
        prefix="/sagas", tags=["sagas"], dependencies=reads, responses=answers(*read_auth, 422)
    )
    acting = APIRouter(
        prefix="/sagas",
        tags=["operator actions"],
        dependencies=guard.needs(Role.OPERATE),
        responses=answers(400, *guard.errors(Role.OPERATE), 404, 409, 413, 422),
    )

    @viewing.get("", operation_id="list_sagas", response_model=m.SagaPage)
    async def list_sagas(
        workflow: Annotated[
            str | None, Query(max_length=200, json_schema_extra={"enum": workflow_names})
        ] = None,
        status: m.Status | None = None,
        state: Annotated[str | None, Query(max_length=200, json_schema_extra={"enum": all_states})] = None,
        key: Annotated[str | None, Query(max_length=MAX_KEY_LENGTH)] = None,
        started_after: datetime | None = None,
        started_before: datetime | None = None,
        updated_after: datetime | None = None,
        updated_before: datetime | None = None,
        stuck: Annotated[
            bool, Query(description="only unfinished sagas with no pending timer and no progress for a while")
        ] = False,
        cursor: Annotated[
            str | None, Query(max_length=1000, description="next_cursor of the page before")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> m.SagaPage:
        """Sagas, newest first, a page at a time. A time without a zone is taken as UTC."""
        found = saga_filter(
            ctx,
            workflow=workflow,
            status=status,
            state=state,
            key=key,
            started_after=started_after,
            started_before=started_before,
            updated_after=updated_after,
            updated_before=updated_before,
            stuck=stuck,
        )
        return await saga_page(ctx, found, limit, cursor)

    @viewing.get("/{saga_id}", operation_id="get_saga", response_model=m.SagaDetail, responses=answers(404))
    async def get_saga(saga_id: SagaId) -> m.SagaDetail:
        """A saga: where it stands, its data, its pending timers and the events it waits for."""
        saga = await ctx.store.get_saga(str(saga_id))
        if saga is None:
            raise HTTPException(404, f"no saga {saga_id}")
        return await detail(ctx, saga)

    @viewing.get(
        "/{saga_id}/history",
        operation_id="saga_history",
        response_model=m.HistoryPage,
        responses=answers(404),
    )
    async def history(
        saga_id: SagaId,
        after: Annotated[int, Query(ge=0, le=2**31 - 1, description="entries after this seq")] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> m.HistoryPage:
        """The saga's journal: what came in, what was decided, what was sent, when, and who asked."""
        page = await history_page(ctx, str(saga_id), after, limit)
        if page is None:
            raise HTTPException(404, f"no saga {saga_id}")
        return page

    @viewing.get(
        "/{saga_id}/state", operation_id="saga_state_at", response_model=m.SagaAt, responses=answers(404, 409)
    )
    async def state_at(
        saga_id: SagaId, at: Annotated[datetime, Query(description="a time; without a zone, UTC")]
    ) -> m.SagaAt:
        """The saga as it stood at ``at``, rebuilt from its journal through its workflow."""
        when = utc(at, "at")
        assert when is not None
        row, entries = await ctx.store.snapshot(str(saga_id))
        if row is None:
            raise HTTPException(404, f"no saga {saga_id}")
        compiled = ctx.registry.for_saga(row)
        if compiled is None:
            raise HTTPException(
                409,
                f"release {row.release} of workflow {row.workflow!r} is not loaded: its journal"
                " cannot be replayed",
            )
        upto = [e for e in entries if e.recorded_at <= when]
        if not upto:
            raise HTTPException(404, f"saga {saga_id} did not exist yet at {when.isoformat()}")
        try:
            rebuilt = replay(compiled, upto, ctx.registry.releases_of(row.workflow))
        except Exception as error:  # a journal the loaded definition cannot replay: say so, not 500
            raise HTTPException(409, f"the journal cannot be replayed by this definition: {error}") from None
        assert rebuilt is not None
        return m.SagaAt(**state_fields(ctx, rebuilt), at=when, seq=upto[-1].seq)

    @acting.post(
        "",
        operation_id="start_saga",
        status_code=201,
        response_model=m.SagaWritten,
        responses={
            200: {"model": m.SagaWritten, "description": "the saga this key had already", "links": _LINKS},
            201: {"description": "the saga, started", "links": _LINKS},
        },
    )
    async def start(
        body: m.StartRequest, request: Request, response: Response, actor: Actor
    ) -> m.SagaWritten:
        """Start a saga as its starting event would; the same workflow and key again is the same saga.

        Once the start committed the answer is 201 (or 200), whatever fails after; a 503 means it
        did not commit, or its commit was cut off: the same start again answers 200 if it did."""
        # tracing (docs/tracing.md): the request's traceparent is the saga's trace
        with request_span("POST /sagas", request.headers, {"orchestrator.workflow": body.workflow}) as trace:
            applied = await ctx.way_in.start(
                body.workflow, body.key, body.data, actor, schema_version=body.schema_version, trace=trace
            )
        saga = applied.saga
        response.status_code = 201 if applied.created else 200
        response.headers["Location"] = f"/sagas/{saga.id}"
        if applied.created:
            log.info(
                "%s started %s saga %s (key %s)",
                actor,
                saga.workflow,
                saga.id,
                saga.key,
                extra=_extra(applied, actor),
            )
        if applied.archived is not None:  # nothing to read: its row, timers and journal are gone
            note = (
                f"archived at {applied.archived.archived_at.isoformat()}: the saga finished"
                f" {applied.archived.status} and its data and journal are in the archive, not here"
            )
            return m.SagaWritten(**state_fields(ctx, saga), timers=[], note=note)
        return await written(ctx, applied)

    async def act(saga_id: UUID, action: OperatorAction) -> m.SagaWritten:
        applied = await ctx.way_in.act(str(saga_id), action)
        saga = applied.saga
        log.info(
            "%s applied %s to saga %s: now %s (%s); reason: %r",
            action.actor,
            action.name,
            saga.id,
            saga.state,
            saga.status,
            action.reason,
            extra=_extra(applied, action.actor),
        )
        return await written(ctx, applied)

    @acting.post("/{saga_id}/retry", operation_id="retry_saga", response_model=m.SagaWritten)
    async def retry(
        saga_id: SagaId, actor: Actor, body: Annotated[m.RetryRequest | None, Body()] = None
    ) -> m.SagaWritten:
        """Send the current step's commands again now, with the same message ids (new ones for
        ``new_attempt``)."""
        reason, fresh, branch = (body.reason, body.new_attempt, body.branch) if body else (None, False, None)
        return await act(saga_id, OperatorAction("retry", actor, reason, new_attempt=fresh, branch=branch))

    @acting.post("/{saga_id}/cancel", operation_id="cancel_saga", response_model=m.SagaWritten)
    async def cancel(saga_id: SagaId, actor: Actor, body: OptionalAction = None) -> m.SagaWritten:
        """Give up on the saga: compensate what was done, now."""
        reason = body.reason if body else None
        return await act(saga_id, OperatorAction("cancel", actor, reason))

    @acting.post("/{saga_id}/resume", operation_id="resume_saga", response_model=m.SagaWritten)
    async def resume(
        saga_id: SagaId, actor: Actor, body: Annotated[m.ResumeRequest | None, Body()] = None
    ) -> m.SagaWritten:
        """Take a failed saga up again from a step (default: the one it failed in)."""
        reason, step, fresh = (body.reason, body.step, body.new_attempt) if body else (None, None, False)
        action = OperatorAction("resume", actor, reason, step=step, new_attempt=fresh)
        return await act(saga_id, action)

    @acting.post("/{saga_id}/fire-deadline", operation_id="fire_deadline", response_model=m.SagaWritten)
    async def fire_deadline(
        saga_id: SagaId, actor: Actor, body: Annotated[m.BranchRequest | None, Body()] = None
    ) -> m.SagaWritten:
        """Fire the pending deadline now (a branch's, with ``branch``), as if its time had come."""
        reason, branch = (body.reason, body.branch) if body else (None, None)
        return await act(saga_id, OperatorAction("fire-deadline", actor, reason, branch=branch))

    @acting.post("/{saga_id}/skip", operation_id="skip_step", response_model=m.SagaWritten)
    async def skip(saga_id: SagaId, body: m.SkipRequest, actor: Actor) -> m.SagaWritten:
        """Take the given event as the current step's outcome, as if its participant had sent it."""
        action = OperatorAction(
            "skip", actor, body.reason, outcome=body.outcome, data=body.data, branch=body.branch
        )
        return await act(saga_id, action)

    router.include_router(viewing)
    router.include_router(acting)
    return router


def _extra(applied: Applied, actor: str) -> dict[str, Any]:
    return {"saga_id": applied.saga.id, "message_id": applied.message_id, "actor": actor}
