"""Periodic work only the leading center does (settling promotions, say): started when this replica wins the
election and has rebuilt its state, stopped when it loses it, so two replicas never run a job at once for
long, and a job's writes are fenced by leadership like every other write.

    LeaderJobs([Job(name, every_s, run), ...])
      .start()    each job runs every `every_s` seconds, the first time at once
      .stop()     cancels them and waits until they have stopped
    in_slices(items)   a sweep's items, letting the event loop run between slices of SLICE
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from quota_common.errors import QuotaError

log = logging.getLogger(__name__)
T = TypeVar("T")

SLICE = 200
"""Items a sweep over every promotion handles before it lets the event loop run: a sweep over 10,000
promotions of 10 regions takes about a second of CPU, and the loop must answer calls and keep the election's
lease alive meanwhile (a 200-promotion slice takes a few tens of milliseconds)."""


async def in_slices(items: Iterable[T], size: int = SLICE) -> AsyncIterator[T]:
    """`items` one by one, yielding to the event loop after every `size` of them: a periodic sweep over every
    promotion never holds the loop for long. What it reads between slices may have changed meanwhile."""
    for count, item in enumerate(items, 1):
        yield item
        if count % size == 0:
            await asyncio.sleep(0)


@dataclass(frozen=True)
class Job:
    name: str
    every_s: float
    run: Callable[[], Awaitable[object]]


class LeaderJobs:
    def __init__(self, jobs: Sequence[Job]) -> None:
        self._jobs = jobs
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(_every(job), name=job.name) for job in self._jobs]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _every(job: Job) -> None:
    """Runs the job, then waits; a failed run is logged and the next one tries again (a lost write, a
    leadership change on its way)."""
    while True:
        try:
            await job.run()
        except QuotaError as error:
            log.warning("%s: %s; retrying in %g s", job.name, error.message, job.every_s)
        except Exception:
            log.exception("%s failed unexpectedly; retrying in %g s", job.name, job.every_s)
        await asyncio.sleep(job.every_s)
