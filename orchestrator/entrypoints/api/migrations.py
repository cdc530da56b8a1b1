"""``POST /workflows/{name}/migrations``: move sagas between releases of their workflow, a dry run
unless ``apply`` (:mod:`orchestrator.service.migrations`)."""

from typing import Annotated

from fastapi import APIRouter, Path

from orchestrator.entrypoints.api import models as m
from orchestrator.entrypoints.api.auth import Guard, Role
from orchestrator.entrypoints.api.context import ApiContext, answers


def migrations_router(ctx: ApiContext, guard: Guard) -> APIRouter:
    router = APIRouter(
        prefix="/workflows",
        tags=["workflows"],
        dependencies=guard.needs(Role.ADMIN),
        responses=answers(400, *guard.errors(Role.ADMIN), 413, 422),
    )
    Actor = Annotated[str, guard.actor()]

    @router.post("/{name}/migrations", operation_id="migrate_sagas", response_model=m.MigrationReport)
    async def migrate(
        name: Annotated[str, Path(max_length=200)], body: m.MigrationRequest, actor: Actor
    ) -> m.MigrationReport:
        """Move sagas from one release of the workflow to another with a state mapping: a dry run
        (nothing written) unless ``apply``. Each saga moved is journaled (``operator.migrate``)
        and ``verify`` replays it; one that cannot move is listed with the reason and left as it
        is. Nothing is sent: the saga keeps waiting for what it sent; its new state's deadline runs
        from now. A bad plan (unknown release or state, a final state as target) is a 422. At most
        ``limit`` sagas a call, in id order: ``next_after`` says where the next page starts; a dry
        run reads them without a lock."""
        report = await ctx.way_in.migrate(
            name,
            body.from_release,
            body.to_release,
            body.states,
            actor=actor,
            apply=body.apply,
            saga_ids=None if body.sagas is None else [str(s) for s in body.sagas],
            after=None if body.after is None else str(body.after),
            limit=body.limit,
        )
        return m.MigrationReport(
            applied=report.applied,
            moved=report.moved,
            refused=report.refused,
            sagas=[m.MigratedSaga.model_validate(s) for s in report.sagas],
            next_after=report.next_after,
        )

    return router
