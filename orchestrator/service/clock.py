""" "Now", as the database has it: every replica reads the time for its decisions and deadlines
from one clock, so hosts whose clocks differ neither fire a deadline early nor late.

The offset between this host's clock and the database's is measured over a round trip (when the
process starts, then every minute) and added to the local clock; reading it costs nothing per
message. A host's clock may be minutes off: a deadline set by one replica is still due at the same
moment for every other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

__all__ = ["DatabaseClock"]

log = logging.getLogger("orchestrator.service.clock")

#: how often the offset is measured again
SYNC_SECONDS = 60.0


class DatabaseClock:
    def __init__(self, read: Callable[[], Awaitable[datetime]]) -> None:
        self.read = read
        #: the database's clock less this host's
        self.offset = timedelta(0)

    def now(self) -> datetime:
        """The database's time now (this host's clock, corrected)."""
        return datetime.now(UTC) + self.offset

    def local(self, when: datetime) -> datetime:
        """A database time as this host's clock shows it: when to wake up for it."""
        return when - self.offset

    async def sync(self) -> timedelta:
        """Measure the offset again: the database's time against the middle of the round trip."""
        before = datetime.now(UTC)
        theirs = await self.read()
        after = datetime.now(UTC)
        offset = theirs - (before + (after - before) / 2)
        if abs(offset - self.offset) > timedelta(seconds=1):
            log.warning("this host's clock is %.3fs behind the database's", offset.total_seconds())
        self.offset = offset
        return offset

    async def keep_in_sync(self) -> None:
        """The supervised task: measure every minute; a failed read keeps the last offset."""
        while True:
            await asyncio.sleep(SYNC_SECONDS)
            try:
                await self.sync()
            except Exception as error:
                log.warning("could not read the database's clock, keeping the last offset: %s", error)
