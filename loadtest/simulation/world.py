"""The distribution model as the servers run it: one real `Center` on the in-memory store and, per region,
a real `Agent` on an in-process ledger reaching the center through its region's `Link`, all on one event
loop and one clock. The simulator drives it with a scenario's orders and faults; the property tests
with whatever hypothesis picks.

An agent process is a `Life`: every task it starts, and every task those start, belongs to it (a task
factory follows a context variable), so a crash cancels them all at once, mid-call, and the ledger is
gone with them; what was already on the wire still arrives. A restart is a new `Life` on a new ledger,
hence a new incarnation.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
from collections.abc import Coroutine, Generator, Iterable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from loadtest.simulation.engine import Network
from loadtest.simulation.network import Link
from loadtest.simulation.witness import WitnessLedger, WitnessStore
from quota_center.center import Center
from quota_common.clock import Clock
from quota_common.errors import QuotaError, RegionHeld, Unavailable
from quota_common.model import Promotion
from quota_testing.direct_center import DirectCenter
from region_agent.agent import Agent, AgentSettings
from region_agent.ledger.base import DeductOutcome, Joined, Line, RefundOutcome

T = TypeVar("T")


_LIFE: contextvars.ContextVar[Life | None] = contextvars.ContextVar("simulated_agent_process", default=None)


def _owned_task(
    loop: asyncio.AbstractEventLoop,
    coro: Generator[Any, None, T] | Coroutine[Any, Any, T],
    /,
    context: contextvars.Context | None = None,
) -> asyncio.Task[T]:
    """Every task, registered with the agent process it was started in, if any."""
    task = asyncio.Task(coro, loop=loop, context=context)
    life = _LIFE.get() if context is None else context.get(_LIFE)
    if life is not None:
        life.tasks[task] = None
        task.add_done_callback(life.tasks.pop)
    return task


class Life:
    """One process of a region's agent."""

    def __init__(self, region: str, agent: Agent, ledger: WitnessLedger) -> None:
        self.region = region
        self.agent = agent
        self.ledger = ledger
        self.incarnation = ""
        self.tasks: dict[asyncio.Task[Any], None] = {}
        """Its tasks still running, in the order they started: a crash cancels them in that order, the same
        in every run (a set's order would follow memory addresses)."""
        self.net: collections.Counter[str] = collections.Counter()
        """Per promotion, units acknowledged to order services by this process, less what it refunded."""
        self._context = contextvars.copy_context()
        self._context.run(_LIFE.set, self)

    def spawn(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Runs `work` as this process: it dies with it."""
        return asyncio.get_running_loop().create_task(work, context=self._context.copy())

    def kill(self) -> None:
        for task in list(self.tasks):
            task.cancel()


class Region:
    def __init__(self, name: str, link: Link) -> None:
        self.name = name
        self.link = link
        self.live: Life | None = None
        """The agent process serving orders; None while it is down (or starting)."""
        self.lives: list[Life] = []


class World:
    def __init__(self, regions: Sequence[str], clock: Clock, net: Network, settings: AgentSettings) -> None:
        """`settings`: every agent's, its region aside."""
        self.store = WitnessStore()
        self.center = Center(self.store, clock)
        self._clock = clock
        self._settings = settings
        # The center dates the incarnations it issues by its clock, and DirectCenter checks them against its
        # host clock as the edge does: both are the world's.
        self.regions = [
            Region(name, Link(DirectCenter(self.center, name, clock), n, net)) for n, name in enumerate(regions)
        ]

    async def start(self, promotions: Iterable[Promotion]) -> None:
        """The center, then the promotions, then one agent per region; call it on the loop the world runs on."""
        asyncio.get_running_loop().set_task_factory(_owned_task)
        await self.center.start()
        for promotion in promotions:
            await self.center.create_promotion(promotion)
        # Each region's agent starts on its own, as they do in production, not one after another.
        await asyncio.gather(*(self.boot(region) for region in range(len(self.regions))))

    async def boot(self, region: int) -> None:
        """Starts a new agent process for the region, on a new ledger; it serves once started."""
        place = self.regions[region]
        ledger = WitnessLedger(self._clock)
        agent = Agent(replace(self._settings, region=place.name), ledger, place.link, self._clock)
        life = Life(place.name, agent, ledger)
        life.incarnation = await ledger.incarnation(functools.partial(self._join, place.name))
        place.lives.append(life)
        started = life.spawn(agent.start())
        await asyncio.wait([started])
        if not started.cancelled():
            started.result()
            place.live = life

    async def _join(self, region: str, replaces: str) -> Joined:
        """The new ledger's life, issued by the center as Join issues it (not over the network: the process
        is starting, and the checks judge what it does once it serves), once the lease of the process it
        restarts ran out, as an agent process waits for it."""
        while True:
            try:
                return Joined(self.center.join(region, replaces), self.center.had_life(region))
            except RegionHeld as held:
                await asyncio.sleep(held.retry_after_s)

    def crash(self, region: int) -> None:
        """Kills the region's agent process: its tasks stop where they are and its ledger is lost."""
        place = self.regions[region]
        for life in place.lives:  # the live one, or one still starting
            life.kill()
        place.live = None

    def order(self, region: int, key: str, lines: tuple[Line, ...]) -> asyncio.Future[DeductOutcome | QuotaError]:
        """An order service's deduction at the region's agent: its outcome, or the error it answered; cancelled
        if the agent died before answering."""
        life = self.regions[region].live
        if life is None:
            down: asyncio.Future[DeductOutcome | QuotaError] = asyncio.get_running_loop().create_future()
            down.set_result(Unavailable(f"no agent of region {self.regions[region].name} is running"))
            return down
        return life.spawn(self._deduct(life, key, lines))

    async def _deduct(self, life: Life, key: str, lines: tuple[Line, ...]) -> DeductOutcome | QuotaError:
        try:
            outcome = await life.agent.deduct(key, life.region, lines)
        except QuotaError as error:
            return error
        if not outcome.replayed:
            for line in outcome.lines:
                life.net[line.promotion_id] += line.amount
        return outcome

    async def refund(self, region: int, key: str, refund_id: str, lines: tuple[Line, ...]) -> RefundOutcome:
        life = self.regions[region].live
        if life is None:
            raise Unavailable(f"region {self.regions[region].name} has no agent running")
        outcome = await life.spawn(life.agent.refund(key, refund_id, lines))
        if not outcome.replayed:
            for line in outcome.lines:
                life.net[line.promotion_id] -= line.amount
        return outcome

    @property
    def center_calls(self) -> int:
        return sum(region.link.calls for region in self.regions)

    @property
    def renewal_entries(self) -> int:
        return sum(region.link.entries for region in self.regions)
