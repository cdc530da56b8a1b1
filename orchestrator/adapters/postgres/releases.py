"""The release book in PostgreSQL: fingerprints per (workflow, release), and the sagas in flight
on each, for the gate ``orchestrator run`` passes before it consumes anything
(:mod:`orchestrator.service.releases`)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.adapters.postgres.schema import sagas, workflow_releases
from orchestrator.core.definitions import Status
from orchestrator.core.migration import DROPPED

__all__ = ["DROPPED", "PostgresReleaseBook"]


_IN_FLIGHT = (str(Status.RUNNING), str(Status.COMPENSATING))

#: One statement: the sagas failed, each with a journal entry that says why, and their timers gone
#: (a failed saga waits for an operator, not for a deadline).
_FAIL = text(
    """
WITH failed AS (
    UPDATE sagas SET status = 'failed', last_error = :reason, version = version + 1, updated_at = :now
    WHERE workflow = :workflow AND release = :release AND status IN ('running', 'compensating')
    RETURNING id, version, state
), journaled AS (
    INSERT INTO journal (saga_id, seq, kind, message_type, message_id, message, decision, actor, recorded_at)
    SELECT id, version, 'operator', :type, :type || ':' || id || ':' || version,
           jsonb_set(CAST(:message AS jsonb), '{message_id}', to_jsonb(:type || ':' || id || ':' || version)),
           jsonb_set(jsonb_set(CAST(:decision AS jsonb), '{from}', to_jsonb(state)), '{to}', to_jsonb(state)),
           :actor, :now
    FROM failed
    RETURNING 1
), cancelled AS (
    DELETE FROM deadlines WHERE saga_id IN (SELECT id FROM failed) RETURNING 1
)
SELECT count(*) FROM failed
"""
)


class PostgresReleaseBook:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def fingerprints(self) -> dict[tuple[str, str], tuple[str, datetime]]:
        table = workflow_releases.c
        query = select(table.workflow, table.release, table.fingerprint, table.first_run_at)
        async with self.engine.connect() as connection:
            return {(w, r): (f, at) for w, r, f, at in await connection.execute(query)}

    async def record(self, fingerprints: Mapping[tuple[str, str], str], now: datetime) -> None:
        rows = [
            {"workflow": w, "release": r, "fingerprint": f, "first_run_at": now}
            for (w, r), f in fingerprints.items()
        ]
        statement = insert(workflow_releases).values(rows)
        statement = statement.on_conflict_do_update(
            constraint="workflow_releases_pk", set_={"fingerprint": statement.excluded.fingerprint}
        )
        async with self.engine.begin() as connection:
            await connection.execute(statement)

    async def in_flight(self, workflows: list[str]) -> dict[tuple[str, str], int]:
        """Read through the partial index ``sagas_in_flight``: finished sagas are never read."""
        query = (
            select(sagas.c.workflow, sagas.c.release, func.count())
            .where(sagas.c.workflow.in_(workflows), sagas.c.status.in_(_IN_FLIGHT))
            .group_by(sagas.c.workflow, sagas.c.release)
        )
        async with self.engine.connect() as connection:
            return {(w, r): n for w, r, n in await connection.execute(query)}

    async def fail_in_flight(self, workflow: str, release: str, reason: str, now: datetime) -> int:
        actor = "orchestrator run --fail-dropped-releases"
        payload = {"release": release, "reason": reason}
        message = {"type": DROPPED, "payload": payload, "kind": "operator", "actor": actor}
        decision: dict[str, Any] = {
            "outcome": "failed",
            "status": str(Status.FAILED),
            "commands": [],
            "deadline": None,
            "retry": None,
            "reason": reason,
            "applied_parked": [],
            "dropped_parked": [],
            "merged": [],
            "operators": 3,
        }
        async with self.engine.begin() as connection:
            result = await connection.execute(
                _FAIL,
                {
                    "reason": reason,
                    "now": now,
                    "workflow": workflow,
                    "release": release,
                    "type": DROPPED,
                    "message": orjson.dumps(message).decode(),
                    "decision": orjson.dumps(decision).decode(),
                    "actor": actor,
                },
            )
            return int(result.scalar_one())
