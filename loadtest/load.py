"""The benchmark's load generator: the same generated demand, driven the same way into every strategy.

Demand is a seeded stream of one-line orders: most spend one of a few promotions whose budgets
never run out, a tenth spend a flash promotion whose small budget does, so every strategy meets
exhaustion and its over-issue can be counted. Closed-loop clients each take the next order, send
it, wait for the answer and take the next, for a set time. Targets compared by the ratio of their
rates take turns (`in_turn`), so a machine whose speed drifts moves them alike.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

STEADY_PROMOTIONS = 4
STEADY_BUDGET = 2**40
FLASH_BUDGET = 200
FLASH_SHARE = 0.1
MAX_AMOUNT = 5
USERS = 10_000


@dataclass(frozen=True)
class Order:
    key: str
    promotion_id: str
    amount: int
    user_id: str


@dataclass(frozen=True)
class Demand:
    """The promotions a row spends (ids carry the row's prefix, so each row starts from full budgets)."""

    prefix: str
    seed: int = 7

    @property
    def flash(self) -> str:
        return f"{self.prefix}-flash"

    def budgets(self) -> dict[str, int]:
        steady = {f"{self.prefix}-steady-{n}": STEADY_BUDGET for n in range(STEADY_PROMOTIONS)}
        return {**steady, self.flash: FLASH_BUDGET}

    def orders(self, phase: str = "run", flash: bool = True) -> Iterator[Order]:
        """The same sequence for every row with the same seed; only the ids' prefix differs.
        `phase` keeps the keys of a warm-up apart from the timed run's."""
        pick = random.Random(self.seed)
        for number in itertools.count():
            if flash and pick.random() < FLASH_SHARE:
                promotion = self.flash
            else:
                promotion = f"{self.prefix}-steady-{pick.randrange(STEADY_PROMOTIONS)}"
            amount = pick.randint(1, MAX_AMOUNT)
            yield Order(f"{self.prefix}-{phase}-{number}", promotion, amount, f"user-{pick.randrange(USERS)}")


class Target(Protocol):
    """One strategy's way to deduct an order: True when accepted, False when refused for lack of
    budget (intended exhaustion); anything else raises."""

    async def deduct(self, order: Order) -> bool: ...


@dataclass
class Measured:
    latencies_s: list[float] = field(default_factory=list)
    accepted_units: Counter[str] = field(default_factory=Counter)
    refused: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0

    @property
    def deductions(self) -> int:
        return len(self.latencies_s)

    def add(self, later: Measured) -> None:
        """Counts `later`, a later stretch of the same load on the same target, in this one."""
        self.latencies_s += later.latencies_s
        self.accepted_units.update(later.accepted_units)
        self.refused += later.refused
        self.errors.update(later.errors)
        self.elapsed_s += later.elapsed_s


async def _send(target: Target, order: Order, since: float, measured: Measured) -> None:
    """Sends `order` and counts its answer in `measured`, timed from `since`."""
    try:
        accepted = await target.deduct(order)
    except Exception as error:  # a benchmark counts every failure and goes on
        measured.errors[type(error).__name__] += 1
        return
    measured.latencies_s.append(time.perf_counter() - since)
    if accepted:
        measured.accepted_units[order.promotion_id] += order.amount
    else:
        measured.refused += 1


async def drive(target: Target, orders: Iterator[Order], clients: int, seconds: float) -> Measured:
    """`clients` closed-loop clients for `seconds`; every answered order is timed, accepted or not."""
    measured = Measured()
    started = time.perf_counter()
    stop_at = started + seconds

    async def client() -> None:
        while time.perf_counter() < stop_at:
            await _send(target, next(orders), time.perf_counter(), measured)

    await asyncio.gather(*(client() for _ in range(clients)))
    measured.elapsed_s = time.perf_counter() - started
    return measured


async def offered(target: Target, orders: Iterator[Order], rate_per_s: float, seconds: float) -> Measured:
    """Open loop: an order every 1/`rate_per_s` seconds for `seconds`, each sent on time whether earlier ones
    were answered or not, and timed from when it was due (so a stall shows in every order it delays)."""
    measured = Measured()
    started = time.perf_counter()
    sent: list[asyncio.Task[None]] = []

    for number in itertools.count():
        due = started + number / rate_per_s
        if due >= started + seconds:
            break
        if (early := due - time.perf_counter()) > 0:
            await asyncio.sleep(early)
        sent.append(asyncio.create_task(_send(target, next(orders), due, measured)))
    await asyncio.gather(*sent)
    measured.elapsed_s = time.perf_counter() - started
    return measured


async def warm_up(target: Target, demand: Demand, clients: int, seconds: float) -> Counter[str]:
    """The load, untimed, for `seconds` before the clock starts: every connection the clients use
    is open and an agent has measured its selling rate, so the rows compare steady states. The flash
    promotion is left out, so it runs out while timed. What the warm-up accepts counts toward the
    budgets."""
    measured = await drive(target, demand.orders("warm", flash=False), clients, seconds)
    return measured.accepted_units


def over_issue(accepted_units: Counter[str], budgets: dict[str, int]) -> int:
    return sum(max(0, units - budgets[promotion_id]) for promotion_id, units in accepted_units.items())


class UnderLoad:
    """One target under one demand, timed over one or more stretches: the stream of orders goes on from
    one stretch to the next (no order key comes twice), and what the stretches measure adds up."""

    def __init__(self, target: Target, demand: Demand, clients: int) -> None:
        self.target, self.demand, self.clients = target, demand, clients
        self.measured = Measured()
        self.warm_accepted: Counter[str] = Counter()
        self._orders = demand.orders()

    async def warm_up(self, seconds: float) -> None:
        self.warm_accepted = await warm_up(self.target, self.demand, self.clients, seconds)

    async def drive(self, seconds: float) -> None:
        self.measured.add(await drive(self.target, self._orders, self.clients, seconds))

    async def offer(self, rate_per_s: float, seconds: float) -> Measured:
        """Open-loop load at `rate_per_s` for `seconds`, the stream of orders going on; measured apart from
        the closed-loop stretches."""
        return await offered(self.target, self._orders, rate_per_s, seconds)

    @property
    def per_s(self) -> float:
        """Answered orders per second over every stretch so far."""
        return self.measured.deductions / self.measured.elapsed_s

    def over_issue(self) -> int:
        """Units accepted beyond a budget, the warm-up's included."""
        return over_issue(self.measured.accepted_units + self.warm_accepted, self.demand.budgets())


async def in_turn(loads: Sequence[UnderLoad], seconds: float, rounds: int) -> None:
    """Drives each of `loads` for `seconds` in all, taking turns in `rounds` stretches each, every other
    round in reverse order (A B, B A, A B, ...): a machine whose speed drifts meanwhile moves them all
    alike, so the ratios of their rates hold where the rates themselves do not."""
    for number in range(rounds):
        for load in loads if number % 2 == 0 else loads[::-1]:
            await load.drive(seconds / rounds)
