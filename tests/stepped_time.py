"""Time that passes only when a test moves it: a ``sleep`` and a ``monotonic`` to hand to a part
that takes them, so that a test of what happens after seconds takes none."""

from __future__ import annotations

import asyncio
import time


class SteppedTime:
    """Starting at the real monotonic clock's reading, so that it agrees with parts that read the
    real one (when a batch last committed) until the test moves it."""

    def __init__(self) -> None:
        self.now = time.monotonic()
        self._moved = asyncio.Condition()

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        until = self.now + seconds
        async with self._moved:
            await self._moved.wait_for(lambda: self.now >= until)

    async def advance(self, seconds: float, step: float = 0.05) -> None:
        """Move time forward in small steps, letting every sleeper that falls due run between
        them, as real time would."""
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + step)
            async with self._moved:
                self._moved.notify_all()
            for _ in range(10):
                await asyncio.sleep(0)
