"""``orchestrator reconcile``: after a restore from backup, ask again what sagas wait on, and list
what the participants did that the restored database cannot know (service/reconcile.py says which
is which; docs/operations.md, "Backup and restore", says when to run it).

Exit status: 0 when every command the participants' inboxes hold is one the database knows or will
decide again; 1 when some belong to sagas it does not know (listed, one line each); 2 for bad usage
or a database that cannot be reached.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from orchestrator.core.ingress import printable
from orchestrator.entrypoints.cli_dead_letters import CommandError
from orchestrator.entrypoints.settings import Settings, mask_url
from orchestrator.settings import value

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "reconcile",
        help="after a restore from backup: ask again what sagas wait on; list what participants did"
        " for sagas the database does not know",
    )
    parser.add_argument(
        "--participant-database",
        metavar="URL",
        action="append",
        default=[],
        help="a database holding participants' kit inboxes (any number; default PARTICIPANT_DATABASE_URL)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="list, but do not ask the awaited commands again",
    )


async def run(args: argparse.Namespace, settings: Settings) -> int:
    import asyncpg

    from orchestrator.adapters.postgres import reconcile as database
    from orchestrator.adapters.postgres.store import driver_dsn
    from orchestrator.entrypoints.cli import ensure_database_reachable
    from orchestrator.service.reconcile import reconcile

    urls: list[str] = list(args.participant_database)
    if not urls and (default := value(os.environ, "PARTICIPANT_DATABASE_URL")):
        urls = [default]
    await ensure_database_reachable(settings.database_url)
    try:
        connection = await asyncpg.connect(driver_dsn(settings.database_url), timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        raise CommandError(f"cannot reach PostgreSQL at {mask_url(settings.database_url)}: {error}") from None
    lost = 0
    try:
        if not args.report_only:
            commands, sagas = await database.ask_again(connection)
            print(
                f"asked again: {commands} commands that {sagas} sagas wait on, with their own ids"
                " (a participant answers a command it did from its inbox)"
            )
        for url in urls:
            try:
                inbox = await asyncpg.connect(driver_dsn(url), timeout=10)
            except (OSError, asyncpg.PostgresError, TimeoutError) as error:
                raise CommandError(
                    f"cannot reach the participants' database at {mask_url(url)}: {error}"
                ) from None
            try:
                handled = await database.handled_commands(inbox)
            finally:
                await inbox.close()
            sagas_known, commands_known = await database.known(connection, handled)
            found = reconcile(handled, sagas_known, commands_known)
            lost += len(found.lost)
            print(
                f"{mask_url(url)}: {len(handled)} commands handled; {len(found.known)} in the journal,"
                f" {len(found.decided_again)} decided after the restore point (decided again with the"
                f" same ids as their sagas move on), {len(found.lost)} for sagas this database does"
                f" not know ({len(found.lost_sagas)} sagas)"
            )
            for command in found.lost:
                print(
                    f"lost {command.service} {printable(command.command_type)} {command.message_id}"
                    f" saga {command.saga_id} handled {command.handled_at.isoformat()}"
                )
    finally:
        await connection.close()
    if lost:
        print(
            f"{lost} commands were carried out for sagas started after the restore point:"
            ' settle them by hand (docs/operations.md, "Backup and restore")',
            file=sys.stderr,
        )
    return 1 if lost else 0
