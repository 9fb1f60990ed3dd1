"""Order services for a chaos run: K concurrent clients, each on its own seeded random.Random, sending deducts of
one and two lines, refunds (whole and partial, some retried with the same refund id), reservations confirmed or
cancelled, and deliberate retries of earlier keys. Every attempt is recorded as a history `Operation`.

Each call goes to a random agent of its region, and its retries go round the region's agents, as an order service
fails over when one does not answer. A key that ends unknown is retried a few times at once, then left in
`Recorder.pending` for `resolve`, which retries it after healing until it answers: the checker needs every unknown
resolved.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from loadtest.chaos import keys
from loadtest.chaos.calls import AgentCalls, Request
from loadtest.chaos.history import Kind, Operation, Status
from region_agent.ledger.base import Line

PLAIN = "chaos-plain"
LIMITED = "chaos-limited"
"""The promotion with a per-user limit (see run.py), so user limits bite as well as the budget."""
USERS_PER_REGION = 40
NO_LINES: tuple[Line, ...] = ()
IMMEDIATE_RETRIES = 2
RETRY_GAP_S = 0.2
_SETTLE_ORDER = {Kind.DEDUCT: 0, Kind.RESERVE: 1, Kind.CONFIRM: 2, Kind.CANCEL: 3, Kind.REFUND: 4}
"""A reservation is resolved before its settlement, an order before its refunds."""


class Recorder:
    def __init__(self) -> None:
        self.operations: list[Operation] = []
        self.pending: dict[keys.Key, Sequence[Request]] = {}
        """The same request through each of the region's agents, first choice first."""
        self._ids = itertools.count(1)

    async def call(self, client: str, routes: Sequence[Request], attempt: int = 0) -> Operation:
        request = routes[attempt % len(routes)]
        invoked = time.monotonic()
        outcome = await request.send()
        op = Operation(
            next(self._ids), client, request.kind, request.order_key, request.region, request.agent,
            request.lines, invoked, time.monotonic(), outcome, request.refund_id,
        )  # fmt: skip
        self.operations.append(op)
        key = keys.key_of(op)
        if outcome.status is Status.UNKNOWN:
            self.pending.setdefault(key, routes)
        else:
            self.pending.pop(key, None)
        return op

    async def attempt(self, client: str, routes: Sequence[Request]) -> Operation:
        """Sends, and resends the same key while the answer is unknown, a few times, round the region's agents."""
        op = await self.call(client, routes)
        for retry in range(1, IMMEDIATE_RETRIES + 1):
            if op.outcome.status is not Status.UNKNOWN:
                break
            await asyncio.sleep(RETRY_GAP_S)
            op = await self.call(client, routes, retry)
        return op

    async def resolve(self, deadline: float) -> None:
        """After healing: retries every unknown key until it answers or `deadline` passes (the checker then
        reports what is left as unresolved)."""
        rounds = itertools.count()
        while self.pending and time.monotonic() < deadline:
            attempt = next(rounds)
            for key in sorted(self.pending, key=lambda k: _SETTLE_ORDER[k[1]]):
                await self.call("resolver", self.pending[key], attempt)
            if self.pending:
                await asyncio.sleep(RETRY_GAP_S)


@dataclass(frozen=True)
class _Order:
    region: str
    key: str
    lines: tuple[Line, ...]
    reserved: bool

    @property
    def users(self) -> Mapping[str, str]:
        return {line.promotion_id: line.user_id for line in self.lines}


class Client:
    def __init__(self, name: str, seed: int, agents: Mapping[str, Sequence[AgentCalls]], recorder: Recorder) -> None:
        self.name, self._agents, self._recorder = name, agents, recorder
        self._rng = random.Random(f"{seed}-{name}")
        self._numbers = itertools.count()
        self._orders: list[_Order] = []
        """Acknowledged deducts and confirmed reservations: what may be refunded or retried."""

    async def run(self, until: float) -> None:
        while time.monotonic() < until:
            roll = self._rng.random()
            if roll < 0.45 or not self._orders:
                await self._deduct()
            elif roll < 0.65:
                await self._refund()
            elif roll < 0.9:
                await self._reserve()
            else:
                await self._retry_order()
            await asyncio.sleep(self._rng.uniform(0.005, 0.03))

    def _route(self, region: str) -> list[AgentCalls]:
        """The region's agents, from a random one round: the first try and the failovers of one call."""
        agents = list(self._agents[region])
        first = self._rng.randrange(len(agents))
        return agents[first:] + agents[:first]

    def _new_order(self) -> tuple[str, str, tuple[Line, ...]]:
        region = self._rng.choice(sorted(self._agents))
        # Users are homed in one region, as the per-user limit assumes.
        user = f"{region}-user-{self._rng.randrange(USERS_PER_REGION)}"
        promotions = self._rng.choice(((PLAIN,), (LIMITED,), (PLAIN, LIMITED)))
        lines = tuple(Line(p, self._rng.randint(1, 3), user) for p in promotions)
        return region, f"{self.name}-order-{next(self._numbers)}", lines

    async def _deduct(self) -> None:
        region, key, lines = self._new_order()
        op = await self._recorder.attempt(self.name, [a.deduct(key, lines) for a in self._route(region)])
        if op.outcome.status is Status.OK:
            self._orders.append(_Order(region, key, lines, reserved=False))

    async def _reserve(self) -> None:
        region, key, lines = self._new_order()
        held = await self._recorder.attempt(self.name, [a.reserve(key, lines) for a in self._route(region)])
        if held.outcome.status is not Status.OK:
            return
        await asyncio.sleep(self._rng.uniform(0, 0.05))
        kind, other = (Kind.CONFIRM, Kind.CANCEL) if self._rng.random() < 0.7 else (Kind.CANCEL, Kind.CONFIRM)
        settled = await self._recorder.attempt(self.name, [a.settle(kind, key) for a in self._route(region)])
        if settled.outcome.status is Status.OK and kind is Kind.CONFIRM:
            self._orders.append(_Order(region, key, lines, reserved=True))
        if self._rng.random() < 0.1:
            # The other settlement must now be refused: whichever comes first settles a reservation.
            await self._recorder.attempt(self.name, [a.settle(other, key) for a in self._route(region)])

    async def _refund(self) -> None:
        order = self._rng.choice(self._orders)
        refund_id, lines = "", NO_LINES  # the whole order
        if self._rng.random() >= 0.4:
            line = self._rng.choice(order.lines)
            refund_id, lines = f"{order.key}-refund-{next(self._numbers)}", (Line(line.promotion_id, 1, line.user_id),)
        routes = [a.refund(order.key, refund_id, lines, order.users) for a in self._route(order.region)]
        await self._recorder.attempt(self.name, routes)
        if self._rng.random() < 0.3:
            await self._recorder.attempt(self.name, routes[::-1])

    async def _retry_order(self) -> None:
        """A caller that never saw the first answer sends the same deduct again; it must replay."""
        deducted = [order for order in self._orders if not order.reserved]
        if not deducted:
            return
        order = self._rng.choice(deducted)
        await self._recorder.attempt(self.name, [a.deduct(order.key, order.lines) for a in self._route(order.region)])
