"""Whose fault a failed write is, and the one policy for what to do about it.

The kinds: the database's (wait for it), a race (try again), a message's (find it and set it
aside), or unknown. The store adapter says which an error is (``Store.classify``; PostgreSQL's
SQLSTATEs in :mod:`orchestrator.adapters.postgres.faults`), so nothing here knows a driver.

:func:`attempt` is the one retry loop. Every write the service makes on its own (a batch, a
deadline sweep, a dead letter's record, marking commands sent) runs through it with a
:class:`FaultPolicy` that says how often each kind is tried and how long to wait between tries; a
kind absent from ``tries`` is tried until it passes (the database's outage, for a batch that holds
its messages unacked meanwhile). Requests (REST, the shell) are not retried: they answer 503 and
the caller decides.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = [
    "BARE",
    "BATCH",
    "DATABASE_BACKOFF",
    "DEADLINES",
    "DEAD_LETTERS",
    "MARK_SENT",
    "SPLIT",
    "Fault",
    "FaultPolicy",
    "GaveUp",
    "attempt",
]

T = TypeVar("T")


class Fault(enum.Enum):
    #: the database is unreachable or refusing service: retry, without a bound, unready meanwhile
    UNAVAILABLE = "unavailable"
    #: another transaction got there first: retry, and the retry sees the duplicate
    CONFLICT = "conflict"
    #: a value a message carried cannot be stored: split the batch until that message is found
    MESSAGE = "message"
    #: anything else: a few tries, then split and set the failing message aside
    OTHER = "other"


def _database_backoff(tries: int) -> float:
    """0.1 s, doubling, at most 5 s: quick after a blip, gentle on a database that is down."""
    return min(0.1 * 2.0 ** (tries - 1), 5.0)


DATABASE_BACKOFF = _database_backoff


def _no_pause(fault: Fault, tries: int) -> float:
    return 0.0


@dataclass(frozen=True)
class FaultPolicy:
    """How often a write is tried, by the kind of its failure, and how long between tries."""

    #: tries in all before giving up, per kind; a kind absent is tried until it passes
    tries: Mapping[Fault, int]
    #: seconds before the next try, given the kind and how many tries of that kind failed so far
    pause: Callable[[Fault, int], float] = field(default=_no_pause)

    def gives_up(self, fault: Fault, failed: int) -> bool:
        limit = self.tries.get(fault)
        return limit is not None and failed >= limit


class GaveUp(Exception):
    """The policy's tries for this kind of failure are spent; ``error`` is the last one."""

    def __init__(self, fault: Fault, error: BaseException) -> None:
        super().__init__(f"{fault.value}: {error}")
        self.fault = fault
        self.error = error


#: what a caller is told of each failed try: the kind, the error, and the pause before the next
#: (None: no next, the policy gave up)
OnFailure = Callable[[Fault, BaseException, float | None], None]


def _quiet(fault: Fault, error: BaseException, pause: float | None) -> None:
    """No word of a failed try: the caller reports what it gives up on."""


async def attempt(
    operation: Callable[[], Awaitable[T]],
    classify: Callable[[BaseException], Fault],
    policy: FaultPolicy,
    on_failure: OnFailure = _quiet,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """``operation()`` until it passes, or :class:`GaveUp` once the policy says so. Tries are
    counted per kind: an outage between two conflicts does not use up the conflicts' tries."""
    failed: dict[Fault, int] = {}
    while True:
        try:
            return await operation()
        except Exception as error:
            fault = classify(error)
            failed[fault] = failed.get(fault, 0) + 1
            if policy.gives_up(fault, failed[fault]):
                on_failure(fault, error, None)
                raise GaveUp(fault, error) from error
            pause = policy.pause(fault, failed[fault])
            on_failure(fault, error, pause)
            await sleep(pause)


# The policies, one per kind of write --------------------------------------------------------
def _batch_pause(fault: Fault, failed: int) -> float:
    """The database's outage backs off to 5 s; a failure of unknown kind gets a few seconds on the
    whole batch (0.25, 1, 4 s), in case it passes; a race is tried again at once."""
    if fault is Fault.UNAVAILABLE:
        return DATABASE_BACKOFF(failed)
    return 0.25 * 4 ** (failed - 1) if fault is Fault.OTHER else 0.05


def _split_pause(fault: Fault, failed: int) -> float:
    return DATABASE_BACKOFF(failed) if fault is Fault.UNAVAILABLE else 0.05


#: a whole batch: held unacked while the database is away; then split by whose fault it is
BATCH = FaultPolicy({Fault.CONFLICT: 5, Fault.OTHER: 4, Fault.MESSAGE: 1}, _batch_pause)
#: a part of a batch being split: its parts are not waited on again
SPLIT = FaultPolicy({Fault.CONFLICT: 5, Fault.OTHER: 2, Fault.MESSAGE: 1}, _split_pause)
#: a round of the deadline sweep: a race again at once a few times; anything else waits for the
#: alarm's backoff (the timers are rows: nothing is lost meanwhile)
DEADLINES = FaultPolicy(
    {Fault.CONFLICT: 5, Fault.OTHER: 1, Fault.MESSAGE: 1, Fault.UNAVAILABLE: 1},
    lambda fault, failed: 0.05 * failed,
)
#: a dead letter's record: held unacked while the database is away; refused: recorded otherwise
DEAD_LETTERS = FaultPolicy(
    {Fault.CONFLICT: 1, Fault.OTHER: 1, Fault.MESSAGE: 1}, lambda fault, failed: DATABASE_BACKOFF(failed)
)
#: commands confirmed, their outbox rows deleted: a few tries; failing, sent twice at worst
#: (participants dedupe)
MARK_SENT = FaultPolicy(dict.fromkeys(Fault, 5), lambda fault, failed: 0.5 * failed)


#: a dead letter's bare record: tried until the database takes it (every failure is its)
BARE = FaultPolicy({}, _split_pause)
