"""Time, injected: the domain never calls `time` itself, so tests control it."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Protocol


def iso(wall_ms: int) -> str:
    """A wall-clock instant as people read it in messages."""
    return datetime.fromtimestamp(wall_ms / 1000, tz=UTC).isoformat(timespec="seconds")


class Clock(Protocol):
    def wall_ms(self) -> int:
        """Milliseconds since the Unix epoch; for promotion windows, never for leases."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; for leases and rates."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Returns once `seconds` passed on this clock."""
        ...


class SystemClock:
    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, wall_ms: int = 1_700_000_000_000, monotonic: float = 1000.0) -> None:
        self._wall_ms = wall_ms
        self._monotonic = monotonic

    def wall_ms(self) -> int:
        return self._wall_ms

    def monotonic(self) -> float:
        return self._monotonic

    async def sleep(self, seconds: float) -> None:
        """Moves the clock on at once: nothing else would while the caller waits."""
        self.advance(seconds)
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        self._monotonic += seconds
        self._wall_ms += round(seconds * 1000)
