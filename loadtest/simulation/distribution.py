"""The distribution model in the simulator: the servers' own code, on virtual time.

A `World` (a real `Center`, real agents, the network between them) runs on a `VirtualTimeLoop`; each
order of the scenario reaches its region's agent at its time, and the order service hears the answer one
in-region round trip later. The agents run their production defaults (`AgentSettings`, `CenterSettings`):
refills, waits, renewals, pulls, the push stream, openings and leases are theirs, not a model of them.
The scenario's partitions and lost messages act on the network, its crashes on the agents. Every
`CHECK_INTERVAL_S`, and at the end, the invariants are judged; a run that breaks one raises.

Everything that could differ between two runs of a seed is pinned: the loop's time and the clocks are
virtual, the network draws from the seeded generator, the agents' jitter from the `random` module,
seeded for the run (and restored after it). Ids the servers draw at random (grants, requests) never
decide an order of events, and no figure shows them; incarnations carry the real time their ledger
began, which only orders one region's lives, the same way in every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import Iterator
from typing import TypeGuard

from loadtest.simulation.engine import SETUP_S, Crash, Network, Tally
from loadtest.simulation.invariants import InvariantBroken, Invariants
from loadtest.simulation.scenarios import Order, Scenario
from loadtest.simulation.world import World
from quota_common.errors import QuotaError, Rejected, Unavailable
from quota_common.model import Kind, Promotion
from quota_testing.virtual_time import EPOCH_MS, VirtualClock, VirtualTimeLoop
from region_agent.agent import AgentSettings
from region_agent.ledger.base import DeductOutcome, Line

CHECK_INTERVAL_S = 5.0
_FOREVER_MS = 86_400_000
"""A promotion without pacing runs a day: longer than any scenario."""
_SERVERS = ("quota_center", "region_agent")


def run_distribution(scenario: Scenario, net: Network, seed: int) -> Tally:
    tally, _ = simulate_world(scenario, net, seed)
    return tally


def simulate_world(scenario: Scenario, net: Network, seed: int) -> tuple[Tally, World]:
    """The sale, and the world as it ended (its loop closed: read, do not run it)."""
    saved = random.getstate()
    random.seed(seed)
    try:
        with _quiet_servers(), asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(-SETUP_S)) as runner:
            return runner.run(_sale(scenario, net))
    finally:
        random.setstate(saved)


@contextlib.contextmanager
def _quiet_servers() -> Iterator[None]:
    """The servers' warnings (a lost center, a failed renewal) are the scenario's faults, thousands of them;
    errors still show."""
    loggers = [logging.getLogger(name) for name in _SERVERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _promotions(scenario: Scenario) -> list[Promotion]:
    """The scenario's promotions as budget owners create them: each starts with the sale (virtual time 0)."""
    window_ms = round(scenario.window_s * 1000) or _FOREVER_MS
    return [
        Promotion(
            str(number),
            Kind.COUNT,
            "",
            budget,
            EPOCH_MS,
            EPOCH_MS + window_ms,
            tuple(scenario.regions[region] for region in allowed),
            pacing=scenario.pacing,
        )
        for number, (budget, allowed) in enumerate(zip(scenario.budgets, scenario.allowed, strict=True))
    ]


async def _sale(scenario: Scenario, net: Network) -> tuple[Tally, World]:
    loop = asyncio.get_running_loop()
    world = World(scenario.regions, VirtualClock(loop), net, AgentSettings(""))
    await world.start(_promotions(scenario))
    checks, broken = Invariants(world), list[str]()
    background = [loop.create_task(_crash(world, crash)) for crash in scenario.crashes]
    background.append(loop.create_task(_check_every(checks, broken)))
    tally = Tally(scenario)
    answers = []
    for number, order in enumerate(scenario.orders):
        if order.time_s > loop.time():
            await asyncio.sleep(order.time_s - loop.time())
        answer = world.order(order.region, f"order-{number}", (Line(str(order.promotion), order.amount),))
        answer.add_done_callback(functools.partial(_answered, tally, net, order, loop.time()))
        answers.append(answer)
    if answers:
        await asyncio.wait(answers)
    for answer in answers:
        if not answer.cancelled() and _unexpected(result := answer.result()):
            raise result  # the simulated order services make no mistake: the agent has a bug
    for task in background:
        if task.done():
            task.result()  # a restart or a check that failed is a bug too
        task.cancel()
    broken += await checks.violations()
    if broken:
        raise InvariantBroken(f"{scenario.name}: " + "; ".join(broken[:5]))
    tally.metrics.center_calls = world.center_calls
    tally.metrics.renewal_entries = world.renewal_entries
    return tally, world


def _answered(
    tally: Tally, net: Network, order: Order, arrived_s: float, answer: asyncio.Future[DeductOutcome | QuotaError]
) -> None:
    """Counts the order's answer, once the agent gave it; one whose agent died before answering is refused."""
    if not answer.cancelled() and _unexpected(answer.result()):
        return  # raised by `_sale`
    now = asyncio.get_running_loop().time()
    issued = not answer.cancelled() and isinstance(answer.result(), DeductOutcome)
    tally.record(order, now - arrived_s + net.in_region(), now, issued, waited=now > arrived_s)


def _unexpected(result: DeductOutcome | QuotaError) -> TypeGuard[QuotaError]:
    """An error other than a refusal (the promotion spent, the lease run out, no refill in time)."""
    return isinstance(result, QuotaError) and not isinstance(result, Rejected | Unavailable)


async def _crash(world: World, crash: Crash) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(crash.at_s - loop.time())
    world.crash(crash.region)
    await asyncio.sleep(crash.down_s)
    await world.boot(crash.region)


async def _check_every(checks: Invariants, broken: list[str]) -> None:
    while True:
        await asyncio.sleep(CHECK_INTERVAL_S)
        broken += await checks.violations()
