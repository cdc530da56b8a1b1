"""Which releases of each workflow a process may run, decided before it takes a message.

A saga is pinned to the release of its workflow it started on. Two things would break that
silently, and ``orchestrator run`` refuses both before it consumes anything:

* a release whose structure changed under the same name (its fingerprint, kept the first time the
  release ran, differs): sagas in flight on it would be decided by a definition that did not
  write their journals. The author gives the change a new release; or, knowing the change is
  compatible, the operator accepts the new fingerprint (``--accept-changed-releases``).
* a release that sagas in flight are pinned to and that this process no longer loads: nothing
  would ever decide them. The module keeps the old release beside the new until its sagas
  finish (``GET /workflows/{name}`` counts them); or the operator has those sagas fail, with the
  reason, for an operator to migrate them (``--fail-dropped-releases``). A release first run
  after every release this process loads is not dropped but ahead of it (an old process,
  restarted during a rolling deploy): it starts, and leaves those sagas' messages to the
  processes that load that release.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from orchestrator.core.routing import Registry

__all__ = ["ReleaseBook", "ReleaseRefused", "admit_releases"]


class ReleaseRefused(Exception):
    """The loaded workflows cannot run against this database; the message says why and what to do."""


class ReleaseBook(Protocol):
    """What the gate needs from the database (:mod:`orchestrator.adapters.postgres.releases`)."""

    async def fingerprints(self) -> dict[tuple[str, str], tuple[str, datetime]]:
        """The fingerprint each (workflow, release) had the first time a process ran it, and when."""

    async def record(self, fingerprints: Mapping[tuple[str, str], str], now: datetime) -> None:
        """Keep fingerprints: new releases are added, and those given replace those kept."""

    async def in_flight(self, workflows: list[str]) -> dict[tuple[str, str], int]:
        """Sagas running or compensating, per (workflow, release), of ``workflows``."""

    async def fail_in_flight(self, workflow: str, release: str, reason: str, now: datetime) -> int:
        """Fail every saga in flight on a release, journaled with ``reason``; how many."""


@dataclass(frozen=True)
class Admitted:
    """What the gate did: the releases first seen, the fingerprints accepted anew, and the sagas
    it failed per dropped release."""

    new: list[tuple[str, str]]
    accepted: list[tuple[str, str]]
    failed: dict[tuple[str, str], int]
    #: releases newer than any loaded here that sagas in flight are on: their messages are left
    ahead: dict[tuple[str, str], int]


async def admit_releases(
    book: ReleaseBook,
    registry: Registry,
    now: datetime,
    *,
    accept_changed: bool = False,
    fail_dropped: bool = False,
) -> Admitted:
    """Refuse (:class:`ReleaseRefused`) a changed release or a dropped one that sagas still need,
    unless told otherwise; then record the fingerprints of the releases loaded."""
    loaded = {pair: compiled.workflow.fingerprint() for pair, compiled in registry.releases.items()}
    book_rows = await book.fingerprints()
    kept = {pair: print_ for pair, (print_, _) in book_rows.items()}
    changed = [pair for pair, print_ in loaded.items() if pair in kept and kept[pair] != print_]
    if changed and not accept_changed:
        (name, release), *_ = changed
        raise ReleaseRefused(
            f"release {release} of workflow {name} has changed since it first ran (fingerprint"
            f" {kept[(name, release)]}, now {loaded[(name, release)]}): give the changed definition"
            " a new release (release=...) and keep this one loaded until its sagas finish, or run"
            " with --accept-changed-releases if the change cannot alter what in-flight sagas do"
            " (orchestrator check --journals shows what it would change)"
        )
    needed = await book.in_flight(sorted(registry.workflows))
    missing = {pair: count for pair, count in needed.items() if pair not in registry.releases and count}
    newest_here: dict[str, datetime] = {}
    for (workflow, release), (_, first_run) in book_rows.items():
        if (workflow, release) in registry.releases:
            newest_here[workflow] = max(first_run, newest_here.get(workflow, first_run))
    ahead = {
        pair: count
        for pair, count in missing.items()
        if pair in book_rows and pair[0] in newest_here and book_rows[pair][1] > newest_here[pair[0]]
    }
    dropped = {pair: count for pair, count in missing.items() if pair not in ahead}
    failed: dict[tuple[str, str], int] = {}
    if dropped and not fail_dropped:
        listed = ", ".join(f"release {r} of {w} ({n} sagas)" for (w, r), n in sorted(dropped.items()))
        raise ReleaseRefused(
            f"sagas in flight need {listed}, which the loaded workflows do not include: load it"
            " beside the new release until they finish, or run with --fail-dropped-releases to"
            " fail them (an operator can then migrate them to a loaded release)"
        )
    for (workflow, release), _count in sorted(dropped.items()):
        current = registry.workflows[workflow].workflow.release
        reason = (
            f"release {release} of {workflow} was dropped (orchestrator run --fail-dropped-releases);"
            f" migrate the saga to a loaded release (current: {current})"
        )
        failed[(workflow, release)] = await book.fail_in_flight(workflow, release, reason, now)
    record = {pair: print_ for pair, print_ in loaded.items() if pair not in kept or pair in changed}
    if record:
        await book.record(record, now)
    return Admitted(
        new=sorted(pair for pair in loaded if pair not in kept),
        accepted=sorted(changed),
        failed=failed,
        ahead=ahead,
    )
