"""The virtual-time loop: asyncio's timers, sleeps and timeouts follow virtual time, which jumps to the next
timer at once; the clock reads it; a run that can never go on says so instead of hanging."""

from __future__ import annotations

import asyncio
import time

import pytest

from quota_testing.virtual_time import EPOCH_MS, Stalled, VirtualClock, VirtualTimeLoop


def test_an_hour_of_sleeps_and_timeouts_passes_at_once_and_in_order() -> None:
    seen: list[tuple[str, float, int]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        clock = VirtualClock(loop)

        async def after(name: str, delay_s: float) -> None:
            await asyncio.sleep(delay_s)
            seen.append((name, clock.monotonic(), clock.wall_ms()))

        async with asyncio.TaskGroup() as group:
            group.create_task(after("hour", 3600))
            group.create_task(after("second", 1))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(10), 2)
        seen.append(("timeout", clock.monotonic(), clock.wall_ms()))

    started = time.monotonic()
    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(-1.0)) as runner:
        runner.run(main())

    assert time.monotonic() - started < 1
    assert seen == [
        ("second", 0.0, EPOCH_MS),
        ("hour", 3599.0, EPOCH_MS + 3_599_000),
        ("timeout", 3601.0, EPOCH_MS + 3_601_000),
    ]


def test_a_run_that_waits_on_nothing_stalls() -> None:
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner, pytest.raises(Stalled):
        runner.run(asyncio.Event().wait())
