"""``orchestrator sagas migrate``: move sagas between releases of their workflow from the command
line, as ``POST /workflows/{name}/migrations`` does (:mod:`orchestrator.service.migrations`)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from orchestrator.entrypoints.cli_dead_letters import CommandError
from orchestrator.entrypoints.settings import Settings


def _mapping(text: str) -> tuple[str, str]:
    old, sep, new = text.partition("=")
    if not sep or not old or not new:
        raise argparse.ArgumentTypeError(f"{text!r}: give a state mapping as OLD=NEW")
    return old, new


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("sagas", help="act on many sagas at once: migrate them to another release")
    commands = parser.add_subparsers(dest="sagas_command", required=True)
    migrating = commands.add_parser(
        "migrate",
        help="move sagas in flight (or failed) from one release of their workflow to another;"
        " a dry run unless --apply",
    )
    migrating.add_argument("--workflow", required=True, help="the workflow's name")
    migrating.add_argument("--from", dest="from_release", required=True, help="the release the sagas are on")
    migrating.add_argument("--to", dest="to_release", required=True, help="the release they move to")
    migrating.add_argument(
        "--state",
        dest="states",
        action="append",
        type=_mapping,
        default=[],
        metavar="OLD=NEW",
        help="where a state of the old release goes (repeat; a state the new release has keeps its name)",
    )
    migrating.add_argument("--saga", dest="sagas", action="append", help="only this saga id (repeat)")
    migrating.add_argument("--apply", action="store_true", help="write it (default: a dry run)")
    migrating.add_argument("--actor", default="cli", help="who migrates, kept in the journal (default: cli)")
    migrating.add_argument(
        "--workflows",
        help="module(s) defining the workflows, as for run (both releases, or at least the target)",
    )


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Print each saga's move (or why it cannot move), then a summary; exit 1 if any cannot."""
    from orchestrator.adapters.postgres.store import PostgresStore
    from orchestrator.core.routing import Registry
    from orchestrator.entrypoints.bootstrap import load_workflows
    from orchestrator.entrypoints.cli import ensure_database_reachable
    from orchestrator.service.migrations import migrate_sagas
    from orchestrator.service.operations import BadRequest

    registry = Registry(load_workflows(settings.workflows), settings.max_parked)
    await ensure_database_reachable(settings.database_url)
    store = PostgresStore.from_url(settings.database_url, pool_size=1)
    try:
        report = await migrate_sagas(
            registry,
            store,
            args.workflow,
            args.from_release,
            args.to_release,
            dict(args.states),
            actor=args.actor,
            now=datetime.now(UTC),
            apply=args.apply,
            saga_ids=args.sagas,
        )
    except BadRequest as error:
        raise CommandError(str(error)) from None
    finally:
        await store.close()
    for saga in report.sagas:
        if saga.refused is None:
            print(f"{saga.saga_id} {saga.key}: {saga.from_state} -> {saga.to_state} ({saga.status})")
        else:
            print(f"{saga.saga_id} {saga.key}: {saga.from_state or '-'}: cannot move: {saga.refused}")
    verb = "moved" if report.applied else "would move"
    tail = "" if report.applied else "; a dry run: nothing written (--apply to write it)"
    print(
        f"{verb} {report.moved} sagas of {args.workflow} from release {args.from_release} to"
        f" {args.to_release}, {report.refused} cannot move{tail}"
    )
    return 1 if report.refused else 0
