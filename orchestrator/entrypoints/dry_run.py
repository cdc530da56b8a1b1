"""``orchestrator check --journals``'s run: the journals read and compared in several processes.

Deciding a journal again is pure Python, about a quarter of a millisecond a saga, so 100,000
sagas in flight keep one core busy for half a minute: the run is split into ``jobs`` processes,
each reading its own part of the sagas (a hash of the id, ``read_journals``'s ``partition``) in
one streamed query and comparing as it reads; their results are merged into one report. The
processes are forked after the workflows are loaded, so each has the same definitions without
loading them again.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

from orchestrator.core.dry_run import DefinitionFor, DryRun, compare
from orchestrator.entrypoints.settings import mask_url

__all__ = ["JournalsUnreadable", "default_jobs", "run"]

#: the definitions the forked processes compare by: set before they fork, inherited, never pickled
_DEFINITION_FOR: DefinitionFor | None = None


class JournalsUnreadable(Exception):
    """The database could not be reached or read; the message says which and why."""


def default_jobs() -> int:
    """One process per CPU, at most 4: the database serves them all and needs a share too."""
    return max(1, min(os.cpu_count() or 1, 4))


def run(url: str, definition_for: DefinitionFor, finished_sample: int = 0, jobs: int = 1) -> DryRun:
    """Every saga in flight and the ``finished_sample`` most recently finished ones compared
    (:func:`~orchestrator.core.dry_run.compare`) in ``jobs`` processes; raises JournalsUnreadable.
    Call it with no event loop running: the processes are forked."""
    if jobs <= 1:
        return asyncio.run(_part(url, definition_for, finished_sample, (0, 1)))
    global _DEFINITION_FOR
    _DEFINITION_FOR = definition_for
    try:
        # an executor, not a Pool: a process that dies makes it raise (BrokenProcessPool), not hang
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            parts = list(
                pool.map(_worker, [url] * jobs, [finished_sample] * jobs, [(k, jobs) for k in range(jobs)])
            )
    finally:
        _DEFINITION_FOR = None
    for part in parts:
        if isinstance(part, str):
            raise JournalsUnreadable(part)
    return DryRun.merged(p for p in parts if isinstance(p, DryRun))


def _worker(url: str, finished_sample: int, partition: tuple[int, int]) -> DryRun | str:
    """One process's part; the error as text, which crosses back whatever the driver raised."""
    assert _DEFINITION_FOR is not None, "forked before the definitions were set"
    try:
        return asyncio.run(_part(url, _DEFINITION_FOR, finished_sample, partition))
    except JournalsUnreadable as error:
        return str(error)


async def _part(
    url: str, definition_for: DefinitionFor, finished_sample: int, partition: tuple[int, int]
) -> DryRun:
    import asyncpg

    from orchestrator.adapters.postgres.journals import read_journals

    done = DryRun()
    # Hundreds of thousands of journal entries become millions of short-lived dicts, and the
    # cyclic collector, run every few hundred allocations, rescans the chunk in hand each time:
    # with it, reading took three times as long (docs/benchmark.md). Nothing here makes cycles
    # that reference counting would not free.
    gc.disable()
    try:
        async for journal in read_journals(url, finished_sample=finished_sample, partition=partition):
            done.add(compare(journal, definition_for))
    except (OSError, TimeoutError) as error:
        raise JournalsUnreadable(f"cannot reach PostgreSQL at {mask_url(url)}: {error}") from None
    except asyncpg.PostgresError as error:
        raise JournalsUnreadable(f"cannot read the journals at {mask_url(url)}: {error}") from None
    finally:
        gc.enable()
    return done
