"""``orchestrator dead-letters list | show | replay | purge``: the dead-letter table for operators.

The queries and the replay are :mod:`orchestrator.service.dead_letters`, which the REST API uses too; this
is only how they look on a terminal. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from datetime import UTC, datetime
from typing import Any

from orchestrator.core.ingress import Reason, clip, printable
from orchestrator.entrypoints.settings import Settings, mask_url
from orchestrator.service.dead_letters import (
    SOURCES,
    DeadLetterFilter,
    DeadLetterRow,
    ReplayRoutes,
    pages,
    replay,
    replay_target,
)
from orchestrator.service.ports import DeadLetterRepository

__all__ = ["CommandError", "add_parser", "run"]

REASONS = [str(r) for r in Reason]


class CommandError(Exception):
    """What the command cannot do, in one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def _when(text: str) -> datetime:
    """An ISO 8601 time; one without a zone is UTC."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a dead-letter id: {text!r}") from None
    if not 1 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"not a dead-letter id: {text!r}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= value <= 100_000:
        raise argparse.ArgumentTypeError("must be between 1 and 100000")
    return value


def add_parser(sub: Any) -> None:
    """``dead-letters`` and its commands, under the main parser's subparsers ``sub``."""
    parser = sub.add_parser(
        "dead-letters", help="list, show, replay and purge the dead letters (docs/protocol.md, 9)"
    )
    commands = parser.add_subparsers(dest="dead_letters_command", required=True)
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument(
        "--reason", choices=REASONS, metavar="REASON", help=f"only this reason code: {', '.join(REASONS)}"
    )
    filters.add_argument("--since", type=_when, help="only those dead at or after this time (ISO 8601)")

    listing = commands.add_parser("list", parents=[filters], help="dead letters, newest first")
    listing.add_argument("--source", choices=SOURCES, help="who set them aside: orchestrator or broker")
    listing.add_argument("--until", type=_when, help="only those dead before this time (ISO 8601)")
    listing.add_argument("--limit", type=_positive, default=50, help="at most this many (default 50)")
    listing.add_argument("--json", action="store_true", help="a JSON array instead of a table")

    show = commands.add_parser("show", help="one dead letter, everything about it")
    show.add_argument("id", type=_id)
    show.add_argument("--json", action="store_true", help="as JSON (the body as body_text or body_base64)")

    again = commands.add_parser(
        "replay",
        parents=[filters],
        help="publish dead letters again to where they were sent, and mark them replayed",
    )
    again.add_argument("ids", nargs="*", type=_id, metavar="ID")
    again.add_argument("--limit", type=_positive, default=1000, help="with --reason: at most this many")
    again.add_argument("--again", action="store_true", help="replay those replayed before too")
    again.add_argument("--actor", help="who replays, kept on the row (default: the user name)")

    purge = commands.add_parser("purge", help="delete dead letters")
    purge.add_argument("ids", nargs="*", type=_id, metavar="ID")
    purge.add_argument("--reason", choices=REASONS, metavar="REASON", help="those with this reason code")
    purge.add_argument("--before", type=_when, help="those dead before this time (ISO 8601)")
    purge.add_argument("--all", action="store_true", help="every dead letter")
    purge.add_argument("--yes", action="store_true", help="do not ask")


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """The command ``args`` names; its exit status."""
    from orchestrator.entrypoints.bootstrap import dead_letters_of, registry_of, replay_routes
    from orchestrator.entrypoints.cli import ensure_database_reachable

    routes = replay_routes(settings, registry_of(settings))
    await ensure_database_reachable(settings.database_url)
    table = dead_letters_of(settings)
    try:
        command = args.dead_letters_command
        if command == "list":
            return await _list(table, args)
        if command == "show":
            return await _show(table, args.id, args.json, routes)
        if command == "replay":
            return await _replay(table, args, settings, routes)
        return await _purge(table, args)
    except CommandError:
        raise
    except Exception as error:  # the database went away meanwhile, or refused
        text = printable(str(error).splitlines()[0] if str(error) else type(error).__name__)
        raise CommandError(f"cannot use PostgreSQL at {mask_url(settings.database_url)}: {text}") from None
    finally:
        await table.engine.dispose()


def _summary(row: DeadLetterRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "dead_at": row.dead_at.isoformat(),
        "source": row.source,
        "reason": row.reason,
        "detail": row.detail,
        "message_id": row.message_id,
        "message_type": row.message_type,
        "correlation_id": row.correlation_id,
        "exchange": row.exchange,
        "routing_key": row.routing_key,
        "body_size": row.body_size,
        "body_stored": row.body_stored,
        "replayed_at": row.replayed_at.isoformat() if row.replayed_at else None,
        "replayed_by": row.replayed_by,
    }


async def _list(table: DeadLetterRepository, args: argparse.Namespace) -> int:
    found = DeadLetterFilter(reason=args.reason, source=args.source, since=args.since, until=args.until)
    page = await table.page(found, args.limit)
    if args.json:
        print(json.dumps([_summary(r) for r in page.items], indent=2))
        return 0
    header = ("ID", "DEAD AT (UTC)", "SOURCE", "REASON", "TYPE", "MESSAGE ID", "REPLAYED", "DETAIL")
    lines = [
        (
            str(r.id),
            r.dead_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            r.source,
            r.reason,
            clip(printable(r.message_type or "-"), 40),
            clip(printable(r.message_id or "-"), 36),
            "yes" if r.replayed_at else "no",
            clip(printable(r.detail), 80),
        )
        for r in page.items
    ]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header) - 1)]
    for line in [header, *lines]:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        print("  ".join([*cells, line[-1]]))
    more = " (more: raise --limit or narrow it)" if page.next_cursor else ""
    print(f"{len(lines)} dead letters{more}")
    return 0


def _body_lines(text: str) -> str:
    """The body as text, each line made safe for a terminal (no escape sequences pass)."""
    return "\n".join(printable(line) for line in text.split("\n"))


async def _show(table: DeadLetterRepository, letter_id: int, as_json: bool, routes: ReplayRoutes) -> int:
    row = await table.get(letter_id)
    if row is None:
        raise CommandError(f"no dead letter {letter_id}", 1)
    target = await replay_target(row, routes, table)
    why = target if isinstance(target, str) else None
    if as_json:
        text = row.body_text
        print(
            json.dumps(
                {
                    **_summary(row),
                    "properties": row.properties,
                    "body_text": text,
                    "body_base64": row.body_base64 if text is None else None,
                    "replayable": why is None,
                    "not_replayable_because": why,
                },
                indent=2,
            )
        )
        return 0
    stored = "all stored" if row.body_stored >= row.body_size else f"only {row.body_stored} stored: cut"
    replayed = f"at {row.replayed_at.isoformat()} by {row.replayed_by}" if row.replayed_at else "no"
    fields = [
        ("id", str(row.id)),
        ("dead at", row.dead_at.isoformat()),
        ("source", row.source),
        ("reason", row.reason),
        ("detail", row.detail),
        ("message id", row.message_id or "-"),
        ("type", row.message_type or "-"),
        ("correlation id", row.correlation_id or "-"),
        ("sent to", f"exchange {row.exchange!r} with routing key {row.routing_key!r}"),
        ("body", f"{row.body_size} bytes, {stored}"),
        ("replayed", replayed),
        ("replayable", "yes" if why is None else f"no: {why}"),
    ]
    for name, value in fields:
        print(f"{name + ':':<16}{printable(value)}")
    print("properties:")
    print(_body_lines(json.dumps(row.properties, indent=2, ensure_ascii=False)))
    text = row.body_text
    if text is not None:
        print("body (text):")
        print(_body_lines(text))
    else:
        print("body (base64, not UTF-8):")
        print(row.body_base64 or "")
    return 0


async def _replay(
    table: DeadLetterRepository, args: argparse.Namespace, settings: Settings, routes: ReplayRoutes
) -> int:
    import aiormq

    from orchestrator.adapters.amqp.broker import Republisher
    from orchestrator.adapters.amqp.nodes import NodeRing

    if bool(args.ids) == bool(args.reason):
        raise CommandError("replay: give the ids of dead letters, or --reason (not both)")
    if args.ids and args.since is not None:
        raise CommandError("replay: --since goes with --reason, not with ids")
    actor = args.actor or _user()
    if args.ids:
        ids = list(dict.fromkeys(args.ids))
        selected, limit = DeadLetterFilter(ids=tuple(ids)), len(ids)
    else:
        unreplayed = None if args.again else False
        selected = DeadLetterFilter(reason=args.reason, since=args.since, replayed=unreplayed)
        limit, ids = args.limit, []
    if not await table.count(selected):
        for letter_id in ids:
            print(f"orchestrator: no dead letter {letter_id}", file=sys.stderr)
        if not ids:
            print("no dead letters to replay")
        return 1 if ids else 0
    try:
        connection = await NodeRing(settings.amqp_url).connect_aiormq(
            client_properties={"connection_name": "orchestrator-dead-letters-replay"}
        )
    except Exception as error:
        said = printable(error) or type(error).__name__
        raise CommandError(f"cannot reach RabbitMQ at {mask_url(settings.amqp_url)}: {said}") from None

    async def connected() -> aiormq.abc.AbstractConnection:
        return connection

    republisher = Republisher(connected)
    try:
        rows = pages(table, selected, limit)
        outcome = await replay(table, rows, republisher.publish, actor, routes, again=args.again)
    finally:
        await republisher.close()
        await connection.close()
    seen = {r.id for r in outcome.replayed} | {i for i, _ in outcome.refused}
    missing = [i for i in ids if i not in seen]
    for letter_id in missing:
        print(f"orchestrator: no dead letter {letter_id}", file=sys.stderr)
    for done in outcome.replayed:
        target = done.target
        print(
            f"replayed {done.id} ({done.reason}) as {target.kind} to {target.exchange!r}"
            f" with routing key {target.routing_key!r}"
        )
    for letter_id, why in outcome.refused:
        print(f"orchestrator: cannot replay {letter_id}: {why}", file=sys.stderr)
    return 1 if outcome.refused or missing else 0


async def _purge(table: DeadLetterRepository, args: argparse.Namespace) -> int:
    chosen = [bool(args.ids), args.reason is not None or args.before is not None, args.all]
    if sum(chosen) != 1:
        raise CommandError("purge: give ids, or --reason and/or --before, or --all (one of them)")
    if args.ids:
        ids = tuple(dict.fromkeys(args.ids))
        selected = DeadLetterFilter(ids=ids)
    else:
        selected = DeadLetterFilter(reason=args.reason, until=args.before)
    count = await table.count(selected)
    if count and not args.yes:
        _confirm(count)
    purged = await table.purge(selected) if count else 0
    print(f"purged {purged} dead letters")
    if args.ids and purged < len(ids):
        print(f"orchestrator: {len(ids) - purged} of the ids named no dead letter", file=sys.stderr)
        return 1
    return 0


def _confirm(count: int) -> None:
    if not sys.stdin.isatty():
        raise CommandError(f"purge: pass --yes to delete {count} dead letters without a prompt")
    answer = input(f"delete {count} dead letters? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        raise CommandError("purge: nothing deleted", 1)


def _user() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:
        return "cli"
