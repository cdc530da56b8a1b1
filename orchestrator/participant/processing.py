"""One command, exactly once: the inbox claim, the handler and the recorded reply in one
transaction, and what happens when the handler fails. No broker here, so that a participant's
handlers can be tested against their real database without one (:class:`CommandProcessor` is what
the tests and :mod:`orchestrator.participant.worker` both call)."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from orchestrator.participant.handlers import Context, Defer, InvalidCommand, Participant, reply_message_id
from orchestrator.participant.inbox import Inbox, Recorded, Reused, command_digest

__all__ = ["CommandProcessor", "DeadLetter", "Outcome", "TryAgain", "is_outage"]

MAX_BACKOFF = 30.0


class DeadLetter(Exception):
    """The command goes to the dead letters, with this as the reason."""


class TryAgain(Exception):
    """The command goes back to the queue after ``after`` seconds."""

    def __init__(self, reason: str, after: float) -> None:
        super().__init__(reason)
        self.after = after


@dataclass(frozen=True)
class Outcome:
    """The reply to publish, and whether it was recorded by an earlier delivery."""

    reply: Recorded
    repeat: bool


class CommandProcessor:
    """Runs commands through ``participant``'s handlers with the inbox of ``schema`` in ``engine``.

    :meth:`process` returns the reply to publish, or raises :class:`DeadLetter`,
    :class:`TryAgain` or :class:`~orchestrator.participant.handlers.Defer`."""

    def __init__(
        self,
        participant: Participant,
        engine: AsyncEngine,
        *,
        max_attempts: int = 5,
        retry_backoff: float = 0.5,
        scrub: Callable[[str], str] = lambda text: text,
    ) -> None:
        self.participant = participant
        self.engine = engine
        self.inbox = Inbox(engine, participant.schema)
        self.max_attempts = max_attempts
        self.retry_backoff = retry_backoff
        #: removes secrets from error texts before they are stored or logged
        self.scrub = scrub

    async def prepare(self) -> None:
        """Create the kit's tables and run the participant's setup functions, in one transaction."""
        async with self.engine.begin() as connection:
            await self.inbox.create(connection)
            for setup in self.participant.setups:
                await setup(connection)

    async def process(
        self,
        *,
        message_id: str,
        saga_id: str,
        command_type: str,
        body: Mapping[str, Any],
        headers: Mapping[str, Any] | None = None,
        redelivered: bool = False,
    ) -> Outcome:
        """Carry out one command, or return the reply recorded for its ``message_id``.

        A command dead-lettered before comes back in two ways: handed back by the broker
        (``redelivered``: the dead-lettering was cut short) it is dead-lettered again; sent anew
        (an operator's replay, the saga's resend) it gets a fresh count of tries and runs."""
        try:
            return await self._process(message_id, saga_id, command_type, body, headers, redelivered)
        except _Revive:
            await self.inbox.revive(message_id)
            return await self._process(message_id, saga_id, command_type, body, headers, redelivered)

    async def _process(
        self,
        message_id: str,
        saga_id: str,
        command_type: str,
        body: Mapping[str, Any],
        headers: Mapping[str, Any] | None,
        redelivered: bool,
    ) -> Outcome:
        command = self.participant.decode(command_type, body)  # InvalidCommand: dead-lettered
        headers = dict(headers or {})
        digest = command_digest(command_type, saga_id, body)
        try:
            async with self.engine.begin() as connection:
                claim = await self.inbox.claim(connection, message_id, digest)
                if claim.recorded is not None:
                    return Outcome(claim.recorded, repeat=True)
                failed, dead = claim.failed, claim.dead
                if dead and not redelivered:
                    raise _Revive()
                if dead or failed >= self.max_attempts:
                    raise DeadLetter(f"dead-lettered before, after {failed} failed tries")
                session = AsyncSession(bind=connection, expire_on_commit=False)
                workflow = headers.get("x-workflow")
                context = Context(
                    session=session,
                    connection=connection,
                    message_id=message_id,
                    saga_id=saga_id,
                    workflow=workflow if isinstance(workflow, str) else None,
                    attempt=failed + 1,
                    headers=headers,
                )
                try:
                    reply = await self.participant.handle(command_type, command, context)
                    await session.flush()
                except (Defer, InvalidCommand, DeadLetter):
                    raise
                except Exception as error:
                    if not from_database(error):  # the handler's own I/O: its failure, counted
                        raise _HandlerFailed(error) from error
                    raise
                finally:
                    await session.close()
                recorded = Recorded(
                    reply.type, orjson.dumps(reply.body), reply_message_id(message_id, reply.type), digest
                )
                await self.inbox.record(
                    connection,
                    message_id=message_id,
                    command_type=command_type,
                    saga_id=saga_id,
                    reply_type=recorded.reply_type,
                    reply_body=recorded.reply_body,
                    reply_message_id=recorded.reply_message_id,
                    digest=digest,
                )
            return Outcome(recorded, repeat=False)
        except (DeadLetter, Defer, _Revive):
            raise
        except Reused as reused:  # no retry makes the id mean one command
            raise DeadLetter(f"invalid command: {reused}") from None
        except InvalidCommand as error:  # raised by the handler: no retry makes it valid
            raise DeadLetter(f"invalid command: {error}") from None
        except _HandlerFailed as failed:
            raise await self._failed(message_id, command_type, failed.error) from None
        except Exception as error:
            if is_outage(error):
                # Not this command's fault: it waits for the database without a try counted.
                raise TryAgain(f"database unavailable: {self.scrub(str(error))}", self.backoff(1)) from None
            raise await self._failed(message_id, command_type, error) from None

    async def _failed(self, message_id: str, command_type: str, error: Exception) -> Exception:
        """Count the failed try durably; the outcome to raise."""
        detail = self.scrub("".join(traceback.format_exception_only(error)).strip())
        full = self.scrub("".join(traceback.format_exception(error)))
        try:
            count = await self.inbox.count_failure(message_id, command_type, full, limit=self.max_attempts)
        except Exception as counting:
            reason = f"{detail}; the try could not be counted: {self.scrub(str(counting))}"
            return TryAgain(reason, self.backoff(1))
        if count >= self.max_attempts:
            return DeadLetter(f"the handler failed {count} times, last: {detail}")
        return TryAgain(
            f"the handler failed (try {count} of {self.max_attempts}):\n{full}", self.backoff(count)
        )

    def backoff(self, tries: int) -> float:
        return min(self.retry_backoff * 2.0 ** (tries - 1), MAX_BACKOFF)


_OUTAGES = {
    "ConnectionDoesNotExistError",
    "CannotConnectNowError",
    "ConnectionFailureError",
    "AdminShutdownError",
    "TooManyConnectionsError",
}
"""asyncpg's errors that say the server or the connection is away (by name: the kit does not
import asyncpg itself, SQLAlchemy wraps its errors)."""


class _Revive(Exception):
    """A command dead-lettered before, sent anew: its tries are counted afresh, outside the
    transaction that found it (which rolls back)."""


class _HandlerFailed(Exception):
    """The handler failed on something other than its database: a network call that timed out
    is the handler's failure, counted toward the dead-letter limit, never an outage to wait out."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and what it wraps: the driver's error under SQLAlchemy's (``orig``), else its
    cause or context; each once."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else (current.__cause__ or current.__context__)


def from_database(error: BaseException) -> bool:
    """Whether ``error`` came through the database layer (SQLAlchemy or the driver)."""
    return any(
        isinstance(e, sa_exc.SQLAlchemyError) or type(e).__module__.startswith("asyncpg")
        for e in _chain(error)
    )


def is_outage(error: BaseException) -> bool:
    """Whether ``error`` says the database is away rather than that the handler failed: such a
    try is not counted, since no handler fix would make it pass."""
    return any(
        (isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated)
        or isinstance(e, sa_exc.TimeoutError | sa_exc.InterfaceError | OSError)
        or type(e).__name__ in _OUTAGES
        for e in _chain(error)
    )
