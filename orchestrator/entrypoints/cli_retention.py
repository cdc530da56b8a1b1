"""``orchestrator archive | prune`` and ``orchestrator verify --archive``: history that is done with.

The work is :mod:`orchestrator.adapters.postgres.retention` and the file format
:mod:`orchestrator.adapters.archive`; this is how it looks on a terminal (docs/retention.md).
Errors are one line on stderr, never a traceback; the exit status is 1 for what could not be done
as asked (an archive file that exists already, one that differs or cannot be read), 2 for bad
usage or an unreachable database.
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from orchestrator.core.ingress import printable
from orchestrator.entrypoints.cli_dead_letters import CommandError
from orchestrator.entrypoints.settings import Settings, mask_url

__all__ = ["add_parser", "run", "verify_archive"]


def _when(text: str) -> datetime:
    """An ISO 8601 date or time; one without a zone is UTC."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date or time: {text!r}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= value <= 10_000_000:
        raise argparse.ArgumentTypeError("must be between 1 and 10000000")
    return value


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    if not 0 < value <= 36525:
        raise argparse.ArgumentTypeError("must be a positive number of days, at most 36525")
    return value


def add_parser(sub: Any) -> None:
    """``archive`` and ``prune``, under the main parser's subparsers ``sub``."""
    archiving = sub.add_parser(
        "archive",
        help="export finished sagas with their journals to a file, then delete them (a tombstone each)",
    )
    archiving.add_argument(
        "--finished-before",
        type=_when,
        required=True,
        metavar="DATE",
        help="sagas that finished before this date or time (ISO 8601; UTC without a zone)",
    )
    archiving.add_argument(
        "--to",
        type=Path,
        required=True,
        metavar="FILE",
        help="the archive to write (gzip JSON lines); must not exist",
    )
    archiving.add_argument(
        "--include-failed",
        action="store_true",
        help="archive failed sagas too (by default they wait for an operator)",
    )
    archiving.add_argument("--batch-size", type=_count, default=500, help="sagas per transaction (500)")
    archiving.add_argument("--limit", type=_count, help="archive at most this many sagas")
    pruning = sub.add_parser(
        "prune",
        help="delete inbox rows of sagas finished long ago, old dead letters and old tombstones",
    )
    pruning.add_argument(
        "--inbox-days",
        type=_days,
        help="inbox rows of sagas finished this long ago (ORCHESTRATOR_INBOX_RETENTION_DAYS, 7)",
    )
    pruning.add_argument(
        "--dead-letter-days",
        type=_days,
        help="dead letters this old, replayed or not (ORCHESTRATOR_DEAD_LETTER_RETENTION_DAYS, 30)",
    )
    pruning.add_argument(
        "--tombstone-days",
        type=_days,
        help="tombstones of sagas archived this long ago (ORCHESTRATOR_TOMBSTONE_RETENTION_DAYS, 400)",
    )


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """``archive`` or ``prune``; the exit status."""
    from orchestrator.adapters.archive import ArchiveWriteError
    from orchestrator.entrypoints.bootstrap import store_of
    from orchestrator.entrypoints.cli import ensure_database_reachable

    await ensure_database_reachable(settings.database_url)
    store = store_of(settings, pool_size=2)
    try:
        if args.command == "archive":
            return await _archive(store, args)
        return await _prune(store, args, settings)
    except CommandError:
        raise
    except ArchiveWriteError as error:  # the file: disk full, permissions; nothing more was deleted
        raise CommandError(f"archive: {error}", 1) from None
    except Exception as error:  # the database went away meanwhile, or refused
        text = printable(str(error).splitlines()[0] if str(error) else type(error).__name__)
        raise CommandError(f"cannot use PostgreSQL at {mask_url(settings.database_url)}: {text}") from None
    finally:
        await store.close()


async def _archive(store: Any, args: argparse.Namespace) -> int:
    from orchestrator.adapters.archive import ArchiveWriter
    from orchestrator.adapters.postgres.retention import ARCHIVED_BY_DEFAULT, archive

    statuses = (*ARCHIVED_BY_DEFAULT, "failed") if args.include_failed else ARCHIVED_BY_DEFAULT
    path: Path = args.to
    header = {
        "finished_before": args.finished_before.isoformat(),
        "statuses": list(statuses),
        "written_at": datetime.now(UTC).isoformat(),
    }
    try:
        writer = ArchiveWriter(path, header)
    except FileExistsError:
        raise CommandError(f"archive: {path} exists already; an archive is never overwritten", 1) from None
    except OSError as error:
        raise CommandError(f"archive: cannot write {path}: {error.strerror or error}", 1) from None
    try:
        report = await archive(
            await store.pool(),
            writer,
            args.finished_before,
            statuses=statuses,
            batch_size=args.batch_size,
            limit=args.limit,
        )
    except BaseException:
        writer.abandon()
        raise
    writer.close({"sagas": report.sagas, "journal_entries": report.journal_entries})
    rate = report.sagas / report.seconds if report.seconds > 0 else 0.0
    by_status = ", ".join(f"{n} {s}" for s, n in sorted(report.by_status.items())) or "none"
    print(
        f"archived {report.sagas} sagas ({by_status}) with {report.journal_entries} journal entries"
        f" to {path} in {report.seconds:.1f}s ({rate:.0f} sagas/s)"
    )
    return 0


async def _prune(store: Any, args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.adapters.postgres.retention import prune

    inbox = args.inbox_days if args.inbox_days is not None else settings.inbox_retention_days
    dead = args.dead_letter_days if args.dead_letter_days is not None else settings.dead_letter_retention_days
    tombs = args.tombstone_days if args.tombstone_days is not None else settings.tombstone_retention_days
    report = await prune(
        await store.pool(),
        datetime.now(UTC),
        inbox_after=timedelta(days=inbox),
        dead_letters_after=timedelta(days=dead),
        tombstones_after=timedelta(days=tombs),
    )
    print(
        f"pruned {report.inbox} inbox rows of sagas finished over {inbox:g} days ago,"
        f" {report.dead_letters} dead letters over {dead:g} days old,"
        f" {report.tombstones} tombstones over {tombs:g} days old, in {report.seconds:.1f}s"
    )
    return 0


async def _id_key_if_reachable(settings: Settings) -> bytes | None:
    """The id key from the settings' database, None where it does not answer within seconds."""
    from orchestrator.entrypoints.bootstrap import store_of

    store = store_of(settings, pool_size=1)
    try:
        return await asyncio.wait_for(store.id_key(), 10)
    except Exception:  # unreachable, not migrated, no key: the archive is verified without it
        return None
    finally:
        await store.close()


def verify_archive(settings: Settings, path: Path) -> int:
    """Replay every saga of an archive through the loaded workflows, as ``verify`` replays the
    database: exit 1 if a saga differs from its journal or a line cannot be read, else 3 if some
    were not verified (their workflow is not loaded, or their journal is keyed and the id key
    could not be read), else 0. The database is asked for the id key only (``core/ids.py``):
    without it, an archive written before keyed ids verifies all the same."""
    from orchestrator.adapters.archive import ArchivedSaga, Unreadable, read_archive
    from orchestrator.core.ids import KEYED
    from orchestrator.core.replay import verify
    from orchestrator.entrypoints.bootstrap import registry_of

    registry = registry_of(settings)
    if not path.is_file():
        raise CommandError(f"verify: no archive {path}", 1)
    key = asyncio.run(_id_key_if_reachable(settings))
    if key is not None:
        registry.use_id_key(key)
    bad = checked = 0
    unloaded: dict[str, int] = {}
    ended = False
    try:
        for item in read_archive(path):
            if isinstance(item, Unreadable):
                bad += 1
                print(f"line {item.line}: {item.problem}")
            elif isinstance(item, ArchivedSaga):
                saga = item.saga
                compiled = registry.for_saga(saga)
                if compiled is None:
                    print(f"{saga.id}: not verified: workflow {saga.workflow!r} is not loaded")
                    unloaded[saga.workflow] = unloaded.get(saga.workflow, 0) + 1
                    continue
                if key is None and any(e.decision.get("ids") == KEYED for e in item.records.journal):
                    where = mask_url(settings.database_url)
                    print(f"{saga.id}: not verified: its journal is keyed, and {where} gave no id key")
                    unloaded["(keyed, no id key)"] = unloaded.get("(keyed, no id key)", 0) + 1
                    continue
                try:
                    found = verify(compiled, item.records, registry.releases_of(saga.workflow))
                except Exception as error:  # a journal this definition cannot replay at all
                    found = [f"cannot be replayed: {error}"]
                checked += 1
                if found:
                    bad += 1
                    print(f"{saga.id} ({saga.workflow} {saga.key}), line {item.line}:")
                    for line in found:
                        print(f"  {line}")
            elif item.get("end"):
                ended = True
    except OSError as error:  # not gzip at all, or unreadable
        raise CommandError(f"verify: cannot read {path}: {error}", 1) from None
    if not ended:
        bad += 1
        print(f"{path}: no end record: the archive run that wrote it did not finish")
    print(f"verified {checked} archived sagas: {bad} differ from their journal or cannot be read")
    if unloaded:
        names = ", ".join(f"{name} ({count})" for name, count in sorted(unloaded.items()))
        print(
            f"not verified {sum(unloaded.values())} sagas whose workflow is not loaded: {names};"
            f" load it with --workflows or ORCHESTRATOR_WORKFLOWS (now {settings.workflows!r})"
        )
    return 1 if bad else 3 if unloaded else 0
