"""An asyncio event loop on virtual time, and the `Clock` that reads it.

The loop's time moves only when nothing is ready to run: it then jumps to its next timer instead of
waiting for it. So `asyncio.sleep`, `wait_for`, `asyncio.timeout` and every `Clock` reading in the code
under test follow virtual time, a minute of it passes in however long the work takes, and, with no real
I/O in play, the order of events depends only on the code and its inputs: a run replays exactly.

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        runner.run(main())          # main() may sleep for an hour; it returns at once

A run that waits on nothing at all (no task ready, no timer set) can never go on; the loop raises
`Stalled` rather than hang.
"""

from __future__ import annotations

import asyncio
import selectors

EPOCH_MS = 1_700_000_000_000
"""The wall clock at virtual time 0 unless told otherwise: a fixed instant, so runs replay exactly."""


class Stalled(RuntimeError):
    """Nothing is ready, no timer is set, no I/O is awaited: every task waits on another."""


class _JumpingSelector(selectors.DefaultSelector):
    """Polls real I/O without blocking (the loop's own wake-up pipe is all there is); where the loop would
    block until its next timer, moves virtual time there instead."""

    def __init__(self, start_s: float) -> None:
        super().__init__()
        self.now = start_s

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = super().select(0)
        if events:
            return events
        if timeout is None:
            raise Stalled("virtual time: no task is ready and no timer is set, so nothing can ever happen")
        self.now += timeout
        return events


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self, start_s: float = 0.0) -> None:
        self._jumps = _JumpingSelector(start_s)
        super().__init__(self._jumps)

    def time(self) -> float:
        return self._jumps.now


class VirtualClock:
    """The `Clock` of code running on a loop: monotonic time is the loop's, the wall clock `epoch_ms` plus it.
    Read it only while the loop runs, from the loop's thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, epoch_ms: int = EPOCH_MS) -> None:
        self._loop = loop
        self._epoch_ms = epoch_ms

    def wall_ms(self) -> int:
        return self._epoch_ms + round(self._loop.time() * 1000)

    def monotonic(self) -> float:
        return self._loop.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
