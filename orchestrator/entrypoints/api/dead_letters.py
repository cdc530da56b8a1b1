"""``/dead-letters``: list, show, replay and purge the dead letters, as ``orchestrator dead-letters``
does (both go through :mod:`orchestrator.service.dead_letters`).

Nothing here is journaled (a dead letter belongs to no saga); who replayed a row is kept on it,
and every replay and purge logs a line with the actor. A replay publishes over the running
service's publishing connection, on a channel of its own.
"""

import logging
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Response

from orchestrator.adapters.postgres.dead_letters import PostgresDeadLetters
from orchestrator.core.ingress import Reason
from orchestrator.entrypoints.api import models as m
from orchestrator.entrypoints.api.auth import Guard, Role
from orchestrator.entrypoints.api.context import ApiContext, answers, utc
from orchestrator.entrypoints.bootstrap import replay_routes
from orchestrator.service.dead_letters import (
    DeadLetterFilter,
    DeadLetterRow,
    Publish,
    ReplayOutcome,
    pages,
    replay,
    replay_target,
    why_not_replayable,
)

__all__ = ["dead_letters_router"]

log = logging.getLogger("orchestrator.entrypoints.api.app")

LetterId = Annotated[int, Path(ge=1, le=2**63 - 1, description="the dead letter's id")]


def summary(row: DeadLetterRow) -> m.DeadLetterSummary:
    return m.DeadLetterSummary.model_validate(row)


def detail(row: DeadLetterRow, why: str | None) -> m.DeadLetterDetail:
    text = row.body_text
    return m.DeadLetterDetail(
        **summary(row).model_dump(),
        properties=row.properties,
        body_text=text,
        body_base64=row.body_base64 if text is None else None,
        replayable=why is None,
        not_replayable_because=why,
    )


def dead_letters_router(ctx: ApiContext, guard: Guard) -> APIRouter:
    reads, read_auth = guard.reads, guard.read_errors
    Actor = Annotated[str, guard.actor()]
    admin = guard.needs(Role.ADMIN)
    table = PostgresDeadLetters(ctx.queries.engine)
    routes = replay_routes(ctx.settings, ctx.registry)
    router = APIRouter()

    async def shown(row: DeadLetterRow) -> m.DeadLetterDetail:
        target = await replay_target(row, routes, table)
        return detail(row, target if isinstance(target, str) else None)

    viewing = APIRouter(
        prefix="/dead-letters", tags=["dead letters"], dependencies=reads, responses=answers(*read_auth, 422)
    )
    acting = APIRouter(
        prefix="/dead-letters",
        tags=["dead letters"],
        dependencies=guard.needs(Role.OPERATE),
        responses=answers(400, *guard.errors(Role.OPERATE), 413, 422),
    )

    def publisher() -> Publish:
        if ctx.republish is None:
            raise HTTPException(503, "this process has no broker connection to replay over")
        return ctx.republish

    def unavailable(outcome: ReplayOutcome) -> None:
        if outcome.unavailable and not outcome.replayed:
            why = outcome.refused[0][1] if outcome.refused else "the broker is unavailable"
            raise HTTPException(503, f"{why}; try again", headers={"Retry-After": "5"})

    @viewing.get("", operation_id="list_dead_letters", response_model=m.DeadLetterPage)
    async def list_dead_letters(
        reason: Reason | None = None,
        source: m.Source | None = None,
        since: Annotated[datetime | None, Query(description="dead at or after this time")] = None,
        until: Annotated[datetime | None, Query(description="dead before this time")] = None,
        replayed: Annotated[
            bool | None, Query(description="only those replayed (true) or not (false)")
        ] = None,
        cursor: Annotated[
            str | None, Query(max_length=1000, description="next_cursor of the page before")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> m.DeadLetterPage:
        """Dead letters, newest first, a page at a time, without their bodies. A time without a
        zone is taken as UTC."""
        found = DeadLetterFilter(
            reason=str(reason) if reason is not None else None,
            source=source,
            since=utc(since, "since"),
            until=utc(until, "until"),
            replayed=replayed,
        )
        page = await table.page(found, limit, cursor)
        return m.DeadLetterPage(items=[summary(r) for r in page.items], next_cursor=page.next_cursor)

    @viewing.get(
        "/{letter_id}",
        operation_id="get_dead_letter",
        response_model=m.DeadLetterDetail,
        responses=answers(404),
    )
    async def get_dead_letter(letter_id: LetterId) -> m.DeadLetterDetail:
        """One dead letter: why, what it carried (properties, headers, body) and whether it can be
        replayed."""
        row = await table.get(letter_id)
        if row is None:
            raise HTTPException(404, f"no dead letter {letter_id}")
        return await shown(row)

    @acting.post(
        "/{letter_id}/replay",
        operation_id="replay_dead_letter",
        response_model=m.DeadLetterDetail,
        responses=answers(404, 409),
    )
    async def replay_one(
        letter_id: LetterId,
        actor: Actor,
        again: Annotated[bool, Query(description="replay it even if it was replayed before")] = False,
    ) -> m.DeadLetterDetail:
        """Mark it replayed and publish it again, with its body and properties (not the headers
        of its death): a command its saga's journal proves to ``{ns}.commands``, anything else
        not claiming to be a command to the orchestrator's own inbound path, where it goes
        through the same checks as any message (still bad, it becomes a new dead letter). What
        cannot be proven is refused (409) with the reason; ``not_replayable_because`` says it."""
        row = await table.get(letter_id)
        if row is None:
            raise HTTPException(404, f"no dead letter {letter_id}")
        why = why_not_replayable(row, again)
        if why is not None:
            raise HTTPException(409, f"dead letter {letter_id} cannot be replayed: {why}")
        outcome = await replay(table, [row], publisher(), actor, routes, again=again)
        unavailable(outcome)
        if outcome.refused:
            raise HTTPException(409, f"dead letter {letter_id} was not replayed: {outcome.refused[0][1]}")
        replayed = await table.get(letter_id)
        return detail(replayed or row, None)

    @acting.post("/replay", operation_id="replay_dead_letters", response_model=m.DeadLetterReplayResult)
    async def replay_many(body: m.DeadLetterReplayRequest, actor: Actor) -> m.DeadLetterReplayResult:
        """Replay the dead letters given by id, or those with a reason (not those replayed before,
        unless ``again``), oldest first. Each that cannot be replayed is listed with why."""
        if body.ids is not None:
            ids = list(dict.fromkeys(body.ids))
            selected, limit = DeadLetterFilter(ids=tuple(ids)), len(ids)
        else:
            selected = DeadLetterFilter(
                reason=str(body.reason),
                since=utc(body.since, "since"),
                replayed=None if body.again else False,
            )
            limit, ids = body.limit, []
        outcome = (
            await replay(table, pages(table, selected, limit), publisher(), actor, routes, again=body.again)
            if limit
            else ReplayOutcome([], [])
        )
        unavailable(outcome)
        seen = {r.id for r in outcome.replayed} | {i for i, _ in outcome.refused}
        missing = [(i, "no such dead letter") for i in ids if i not in seen]
        refused = [m.ReplayRefusal(id=i, detail=d) for i, d in [*missing, *outcome.refused]]
        return m.DeadLetterReplayResult(replayed=[r.id for r in outcome.replayed], refused=refused)

    @acting.delete(
        "/{letter_id}",
        operation_id="delete_dead_letter",
        status_code=204,
        dependencies=admin,
        responses=answers(404),
    )
    async def delete_dead_letter(letter_id: LetterId, actor: Actor) -> Response:
        """Delete one dead letter."""
        if not await table.purge(DeadLetterFilter(ids=(letter_id,))):
            raise HTTPException(404, f"no dead letter {letter_id}")
        log.info("%s deleted dead letter %d", actor, letter_id, extra={"actor": actor})
        return Response(status_code=204)

    @acting.post(
        "/purge",
        operation_id="purge_dead_letters",
        dependencies=admin,
        response_model=m.DeadLetterPurgeResult,
    )
    async def purge(body: m.DeadLetterPurgeRequest, actor: Actor) -> m.DeadLetterPurgeResult:
        """Delete the dead letters given by id, or those with a reason and/or dead before a time."""
        if body.ids is not None:
            selected = DeadLetterFilter(ids=tuple(dict.fromkeys(body.ids)))
        else:
            selected = DeadLetterFilter(
                reason=str(body.reason) if body.reason is not None else None,
                until=utc(body.before, "before"),
            )
        purged = await table.purge(selected)
        log.info(
            "%s purged %d dead letters (%s)", actor, purged, _described(selected), extra={"actor": actor}
        )
        return m.DeadLetterPurgeResult(purged=purged)

    router.include_router(viewing)
    router.include_router(acting)
    return router


def _described(f: DeadLetterFilter) -> str:
    if f.ids is not None:
        shown = ", ".join(str(i) for i in f.ids[:20])
        return f"ids {shown}" + (f" and {len(f.ids) - 20} more" if len(f.ids) > 20 else "")
    said = [f"reason {f.reason}"] if f.reason else []
    if f.until is not None:
        said.append(f"dead before {f.until.isoformat()}")
    return ", ".join(said)
