"""The arguments of ``orchestrator sagas``: its verbs, their flags as the REST bodies name them, and
the exit statuses its help promises (kept here, beside that text; README "From a shell" too).

The main parser builds these for every verb of ``orchestrator``: this module imports nothing
heavy, so that ``orchestrator run`` does not pay for the REST API's reads to parse its arguments."""

from __future__ import annotations

import argparse
import json
import re
import uuid
from typing import Any

__all__ = ["ACTIONS", "EPILOG", "add_parser"]

#: Exit statuses of the read and action verbs (2 is argparse's, and bad input's, as elsewhere).
DONE, REFUSED, NOT_FOUND, DATABASE_DOWN, NOT_SENT = 0, 3, 4, 5, 6
#: how long an action waits for the broker to confirm its commands
CONFIRM_SECONDS = 10.0
ACTIONS = ("cancel", "retry", "resume", "skip", "fire-deadline")

EPILOG = """\
exit status:
  0  done
  1  the configuration cannot be used (a setting, a workflow module)
  2  bad usage or input (a name the workflow lacks, data that does not fit)
  3  refused: the action does not fit the saga as it stands (REST: 409)
  4  no such saga (REST: 404)
  5  PostgreSQL unreachable, not migrated, or failed during the command
  6  the action is done and journaled, but the broker did not confirm its commands within
     10 s: they wait in the outbox, and the running service's outbox sweep sends them
Timers an action sets are rows in the database: the running service's deadline alarm
takes them up at its next safety sweep (within 15 s)."""

#: what REST's X-Actor allows: printable ASCII, no spaces at either end
_ACTOR = re.compile(r"[!-~]([ -~]*[!-~])?")


def _saga_id(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a saga id: {text!r}") from None


def _between(low: int, high: int) -> Any:
    def number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}")
        return value

    return number


def _actor(text: str) -> str:
    if len(text) > 200 or not _ACTOR.fullmatch(text):
        raise argparse.ArgumentTypeError("printable ASCII, at most 200 characters, no spaces at either end")
    return text


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _mapping(text: str) -> tuple[str, str]:
    old, sep, new = text.partition("=")
    if not sep or not old or not new:
        raise argparse.ArgumentTypeError(f"{text!r}: give a state mapping as OLD=NEW")
    return old, new


def add_parser(sub: Any) -> None:
    from orchestrator.core.definitions import Status

    formatter = argparse.RawDescriptionHelpFormatter
    parser = sub.add_parser(
        "sagas",
        help="read sagas and act on them, as the REST API does; migrate them to another release",
        epilog=EPILOG,
        formatter_class=formatter,
    )
    commands = parser.add_subparsers(dest="sagas_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print what the REST API answers, as JSON")
    common.add_argument(
        "--workflows",
        help="module(s) defining the workflows, as for run (ORCHESTRATOR_WORKFLOWS; default: the examples)",
    )
    one = argparse.ArgumentParser(add_help=False, parents=[common])
    one.add_argument("saga", nargs="?", type=_saga_id, metavar="SAGA", help="the saga's id")
    one.add_argument("--workflow", help="with --key, instead of SAGA: the saga of this workflow ...")
    one.add_argument("--key", help="... and business key")

    def verb(name: str, parents: list[argparse.ArgumentParser], text: str) -> argparse.ArgumentParser:
        made: argparse.ArgumentParser = commands.add_parser(
            name, parents=parents, help=text, epilog=EPILOG, formatter_class=formatter
        )
        return made

    listing = verb("list", [common], "sagas, newest first, a page at a time (GET /sagas)")
    listing.add_argument("--workflow", help="only this workflow's")
    listing.add_argument("--status", choices=[str(s) for s in Status], help="only those with this status")
    listing.add_argument("--state", help="only those in this state")
    listing.add_argument("--key", help="only those with this business key")
    listing.add_argument(
        "--stuck", action="store_true", help="only unfinished ones with no timer and no progress for a while"
    )
    listing.add_argument("--limit", type=_between(1, 500), default=50, help="at most this many (default 50)")
    listing.add_argument("--cursor", help="the next cursor the page before printed")
    verb("show", [one], "a saga: where it stands, its data, its timers, what it waits for")
    history = verb("history", [one], "a saga's journal, oldest first (GET /sagas/{id}/history)")
    history.add_argument("--after", type=_between(0, 2**31 - 1), default=0, help="entries after this seq")
    history.add_argument(
        "--limit", type=_between(1, 1000), default=100, help="at most this many (default 100)"
    )
    acting = argparse.ArgumentParser(add_help=False, parents=[one])
    acting.add_argument("--reason", help="why, for the journal")
    acting.add_argument("--actor", type=_actor, help="who acts, for the journal (default: cli:$USER)")
    verb("cancel", [acting], "give up on the saga: compensate what was done, now")
    fire = verb("fire-deadline", [acting], "fire the pending deadline now, as if its time had come")
    retry = verb("retry", [acting], "send the current step's commands again now")
    resume = verb("resume", [acting], "take a failed saga up again from a step (default: where it failed)")
    resume.add_argument("--step", help="the state to resume from")
    for fresh in (retry, resume):
        fresh.add_argument(
            "--new-attempt", action="store_true", help="new message ids: a new attempt, not a duplicate"
        )
    skip = verb(
        "skip", [acting], "take an event as the current step's outcome, as if its participant sent it"
    )
    skip.add_argument("--outcome", required=True, help="the event type to take as the step's outcome")
    skip.add_argument("--data", type=_json_object, default={}, help="that event's fields, a JSON object")
    for branched in (fire, retry, skip):
        branched.add_argument("--branch", help="the branch of a parallel group it is about: <group>.<step>")
    _add_migrate(commands)


def _add_migrate(commands: Any) -> None:
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
