"""``orchestrator reconcile``'s reads and its one write, on PostgreSQL (service/reconcile.py says
why): the commands in-flight sagas wait on, asked again through the outbox; the participants' kit
inboxes; and which of their sagas and commands the restored database knows."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from orchestrator.service.store import HandledCommand

__all__ = ["ask_again", "handled_commands", "known"]

#: how many ids one lookup carries
PAGE = 5000

#: every command a running or compensating saga waits on: its state's, and its live branches'
#: (orchestrator/core/branches.py ``live``: a group's branch running or being undone, an awaited
#: undo not given up on; never a ``late`` record, a child's link or a branch given up on, whose
#: commands it no longer waits for), except those to another saga (same database: restored
#: alike, and a saga's inbox answers no duplicate)
_AWAITED = """
WITH waiting AS (
    SELECT s.id, s.workflow, c FROM sagas s CROSS JOIN LATERAL jsonb_array_elements(s.awaiting) c
    WHERE s.status IN ('running', 'compensating')
    UNION ALL
    SELECT s.id, s.workflow, c
    FROM sagas s CROSS JOIN LATERAL jsonb_array_elements(s.branches) b
    CROSS JOIN LATERAL jsonb_array_elements(CASE WHEN jsonb_typeof(b->'awaiting') = 'array'
                                                 THEN b->'awaiting' ELSE '[]'::jsonb END) c
    WHERE s.status IN ('running', 'compensating')
      AND NOT b ? 'link'
      AND CASE WHEN b ? 'group' THEN b->>'phase' IN ('running', 'undoing')
               ELSE coalesce(b->'given_up', 'false') = 'false' AND coalesce(b->'late', 'false') = 'false'
          END
)
INSERT INTO outbox (message_id, saga_id, workflow, message_type, payload, created_at)
SELECT c->>'message_id', id, workflow, c->>'type', c->'payload', clock_timestamp()
FROM waiting WHERE c->>'route' IS NULL
ON CONFLICT (message_id) DO NOTHING
RETURNING saga_id
"""

_KNOWN_SAGAS = """
SELECT id FROM sagas WHERE id = ANY($1::text[])
UNION SELECT saga_id FROM tombstones WHERE saga_id = ANY($1::text[])
"""

_KNOWN_COMMANDS = """
SELECT c->>'message_id' AS id
FROM journal j CROSS JOIN LATERAL jsonb_array_elements(j.decision->'commands') c
WHERE j.saga_id = ANY($1::text[]) AND jsonb_typeof(j.decision->'commands') = 'array'
  AND c->>'message_id' = ANY($2::text[])
UNION SELECT message_id FROM outbox WHERE message_id = ANY($2::text[])
"""


async def ask_again(connection: asyncpg.Connection) -> tuple[int, int]:
    """Queue every awaited command again with its own id (the relay sends it; a sent row is gone,
    so nothing is queued twice): (commands, sagas)."""
    rows = await connection.fetch(_AWAITED)
    return len(rows), len({r["saga_id"] for r in rows})


async def handled_commands(connection: asyncpg.Connection) -> list[HandledCommand]:
    """Every command a kit inbox in this database answered, whatever the service's schema."""
    schemas = await connection.fetch(
        "SELECT table_schema FROM information_schema.tables WHERE table_name = 'participant_inbox'"
        " ORDER BY table_schema"
    )
    found = []
    for row in schemas:
        schema = row["table_schema"]
        records = await connection.fetch(
            f'SELECT message_id, command_type, saga_id, handled_at FROM "{schema}".participant_inbox'
            " WHERE reply_type <> '' ORDER BY handled_at, message_id"
        )
        found += [
            HandledCommand(schema, r["message_id"], r["command_type"], r["saga_id"], r["handled_at"])
            for r in records
        ]
    return found


async def known(
    connection: asyncpg.Connection, commands: Sequence[HandledCommand]
) -> tuple[set[str], set[str]]:
    """Of these commands' sagas and ids, those the database knows: (saga ids, command ids)."""
    sagas: set[str] = set()
    ids: set[str] = set()
    for start in range(0, len(commands), PAGE):
        page = commands[start : start + PAGE]
        saga_ids = sorted({c.saga_id for c in page})
        sagas |= {r["id"] for r in await connection.fetch(_KNOWN_SAGAS, saga_ids)}
        ids |= {
            r["id"] for r in await connection.fetch(_KNOWN_COMMANDS, saga_ids, [c.message_id for c in page])
        }
    return sagas, ids
