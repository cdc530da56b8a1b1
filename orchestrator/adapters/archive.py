"""The archive file that ``orchestrator archive`` writes and ``orchestrator verify --archive`` reads.

gzip-compressed JSON lines (docs/retention.md has the format). Each batch of sagas is written as
a gzip member of its own, flushed and fsynced before the transaction that deletes those sagas
commits: the file is a valid gzip stream after every batch, so a run cut short leaves a file
that holds every saga it deleted, and a reader sees where it stopped. Concatenated gzip members
are one stream to every gzip reader (``gzip -dc``, ``zcat``, Python's ``gzip.open``).
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import orjson

from orchestrator.core.definitions import Status
from orchestrator.core.engine import Incoming, SagaSnapshot
from orchestrator.core.journal import DueDeadline, JournalEntry, Records

__all__ = [
    "FORMAT",
    "VERSION",
    "ArchiveWriteError",
    "ArchiveWriter",
    "ArchivedSaga",
    "Unreadable",
    "read_archive",
    "records_of",
]


class ArchiveWriteError(Exception):
    """The archive file could not be written (disk full, permissions): told apart from a
    database's connection error, which is an ``OSError`` too."""


FORMAT = "orchestrator-archive"
VERSION = 1


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_UTC_Z) + b"\n"


class ArchiveWriter:
    """Appends records to a new archive file; :meth:`commit_point` makes what was written durable."""

    def __init__(self, path: Path, header: Mapping[str, Any]) -> None:
        # "x": never overwrite an archive, which may be the only copy of the sagas it holds
        self.path = path
        self._file: IO[bytes] = path.open("xb")
        self._pending: list[bytes] = []
        self.write({"format": FORMAT, "version": VERSION, **header})
        self.commit_point()
        _fsync_directory(path)

    def write(self, record: Mapping[str, Any]) -> None:
        self._pending.append(_dumps(record))

    def commit_point(self) -> None:
        """Everything written so far, as one complete gzip member, on disk (fsync) when this returns."""
        if not self._pending:
            return
        member = gzip.compress(b"".join(self._pending), compresslevel=6, mtime=0)
        self._pending.clear()
        try:
            self._file.write(member)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as error:
            raise ArchiveWriteError(f"cannot write {self.path}: {error.strerror or error}") from None

    def discard(self) -> None:
        """Forget what was written since the last commit point (its transaction failed)."""
        self._pending.clear()

    def close(self, footer: Mapping[str, Any]) -> None:
        self.write({"end": True, **footer})
        self.commit_point()
        self._file.close()

    def abandon(self) -> None:
        """Close without an end record (the run failed): what was committed stays readable."""
        self._pending.clear()
        self._file.close()


def _fsync_directory(path: Path) -> None:
    """The new file's directory entry on disk too, or a crash could lose the whole file."""
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def saga_record(
    saga: Mapping[str, Any], journal: Sequence[Mapping[str, Any]], timers: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """One archived saga: its row as stored, its journal entries in order, its timers (if any)."""
    return {"saga": dict(saga), "journal": [dict(e) for e in journal], "timers": [dict(t) for t in timers]}


@dataclass(frozen=True)
class ArchivedSaga:
    line: int
    saga: SagaSnapshot
    release: str
    records: Records


@dataclass(frozen=True)
class Unreadable:
    """A line of the archive that is not a saga record this version reads, or the file's end
    where the stream stops short."""

    line: int
    problem: str


def _when(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"not a time: {value!r}")
    return datetime.fromisoformat(value)


def records_of(record: Mapping[str, Any]) -> tuple[SagaSnapshot, str, Records]:
    """The saga, its release and its records as ``verify`` compares them, from one archive line."""
    row = record["saga"]
    saga = SagaSnapshot(
        id=row["id"],
        workflow=row["workflow"],
        key=row["key"],
        state=row["state"],
        status=Status(row["status"]),
        version=row["version"],
        data=row["data"],
        parked=tuple(row["parked"]),
        last_error=row["last_error"],
        created_at=_when(row["created_at"]),
        updated_at=_when(row["updated_at"]),
        awaiting=tuple(row["awaiting"]),
        attempt=row["attempt"],
        timed_out=tuple(row["timed_out"]),
        release=str(row.get("release", "1")),
        branches=tuple(row.get("branches", ())),  # archives from before branches have none
    )
    journal = [
        JournalEntry(
            saga.id, e["seq"], Incoming.from_json(e["message"]), e["decision"], _when(e["recorded_at"])
        )
        for e in record["journal"]
    ]
    timers = [
        DueDeadline(saga.id, t["state"], t["version"], _when(t["due_at"]), t["kind"])
        for t in record["timers"]
    ]
    return saga, str(row.get("release", "1")), Records(saga, journal, timers, [])


def read_archive(path: Path) -> Iterator[dict[str, Any] | ArchivedSaga | Unreadable]:
    """The archive's lines in order: its header and end records as dicts, each saga as an
    :class:`ArchivedSaga`, and whatever cannot be read as :class:`Unreadable` (reading goes on
    after a bad line; a stream cut short ends with one)."""
    number = 0
    with gzip.open(path, "rb") as stream:
        while True:
            try:
                raw = stream.readline()
            except (EOFError, OSError, zlib.error) as error:
                yield Unreadable(number + 1, f"the file ends early or is damaged: {error}")
                return
            if not raw:
                return
            number += 1
            try:
                record = orjson.loads(raw)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
                if "saga" not in record:
                    yield record
                    continue
                saga, release, records = records_of(record)
            except (orjson.JSONDecodeError, ValueError, KeyError, TypeError) as error:
                yield Unreadable(number, f"not a saga record: {type(error).__name__}: {error}")
                continue
            yield ArchivedSaga(number, saga, release, records)
