"""A region's `CenterPort` across the simulated network: the real center (through `DirectCenter`) behind the
delays, losses and partitions of `engine.Network`, called the way `GrpcCenter` calls it.

Each call is a request and an answer, each crossing the network on its own: a lost request never reaches
the center, a lost answer leaves the center's work done and the caller in the dark, and either way the
caller learns nothing until its deadline passes (UNAVAILABLE, as gRPC's DEADLINE_EXCEEDED maps). Like
`GrpcCenter`, a call that ends UNAVAILABLE is tried again, with the same arguments, after a jittered
backoff. A request on its way reaches the center whatever becomes of its caller (a deadline, a crash).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

from loadtest.simulation.engine import Network
from quota_common.errors import QuotaError, Unavailable
from quota_common.model import Promotion, Report
from quota_testing.direct_center import DirectCenter
from region_agent.center_port import GrantAnswer, OpeningAnswer, Page, RegionLease, RenewAnswer
from region_agent.ledger.base import Joined

T = TypeVar("T")

CALL_TIMEOUT_S = 2.0
OPENINGS_TIMEOUT_S = 5 * CALL_TIMEOUT_S
ATTEMPTS = 5
RETRY_BUDGET_S = 6.0
BACKOFF_S = 0.05
BACKOFF_MAX_S = 1.0
"""What `GrpcCenter` does by default (tests/simulation pins it): each try has CALL_TIMEOUT_S (openings
OPENINGS_TIMEOUT_S), a call makes at most ATTEMPTS tries and starts none after RETRY_BUDGET_S, waiting up
to BACKOFF_S * 2^(try - 1), at most BACKOFF_MAX_S, between them."""


class Link:
    """The CenterPort of one region, `region` being its index in the network."""

    def __init__(self, center: DirectCenter, region: int, net: Network) -> None:
        self._center = center
        self._region = region
        self._net = net
        self._deliveries: set[asyncio.Task[None]] = set()
        """Requests on their way: held here only so that they are not garbage collected (the loop keeps
        weak references); never iterated, so their order does not matter."""
        self.calls = 0
        self.fetches = 0

    @property
    def entries(self) -> int:
        """Promotions reported in renewals that reached the center."""
        return self._center.entries

    async def _call(self, at_center: Callable[[], Awaitable[T]], timeout_s: float = CALL_TIMEOUT_S) -> T:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + RETRY_BUDGET_S
        attempt = 1
        while True:
            self.calls += 1
            try:
                return await self._attempt(at_center, timeout_s)
            except Unavailable:
                if attempt == ATTEMPTS or loop.time() >= give_up:
                    raise
            await asyncio.sleep(self._net.rng.uniform(0, min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (attempt - 1))))
            attempt += 1

    async def _attempt(self, at_center: Callable[[], Awaitable[T]], timeout_s: float) -> T:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[T | QuotaError] = loop.create_future()
        delay = self._net.one_way(self._region, loop.time())
        if delay is not None:
            # In a context of its own: the request is on the wire, and dies with no process.
            delivery = loop.create_task(self._deliver(at_center, delay, answer), context=contextvars.Context())
            self._deliveries.add(delivery)
            delivery.add_done_callback(self._deliveries.discard)
        try:
            async with asyncio.timeout(timeout_s):
                outcome = await answer
        except TimeoutError:
            raise Unavailable(f"the center did not answer within {timeout_s:g} s (deadline exceeded)") from None
        if isinstance(outcome, QuotaError):
            raise outcome
        return outcome

    async def _deliver(
        self, at_center: Callable[[], Awaitable[T]], delay: float, answer: asyncio.Future[T | QuotaError]
    ) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(delay)
        if self._net.cut(self._region, loop.time()):
            return  # a partition began while the request was on its way
        outcome: T | QuotaError
        try:
            outcome = await at_center()
        except QuotaError as error:
            outcome = error
        back = self._net.one_way(self._region, loop.time())
        if back is None:
            return
        await asyncio.sleep(back)
        if not self._net.cut(self._region, loop.time()) and not answer.done():
            answer.set_result(outcome)

    async def join(self, replaces: str) -> Joined:
        return await self._call(lambda: self._center.join(replaces))

    async def acquire(
        self, incarnation: str, promotion_id: str, amount: int, request_id: str, demand_per_minute: int
    ) -> GrantAnswer:
        return await self._call(
            lambda: self._center.acquire(incarnation, promotion_id, amount, request_id, demand_per_minute)
        )

    async def acquire_openings(
        self, incarnation: str, requests: Sequence[tuple[str, int, str]]
    ) -> tuple[list[OpeningAnswer], float]:
        return await self._call(lambda: self._center.acquire_openings(incarnation, requests), OPENINGS_TIMEOUT_S)

    async def list_changes(self, since_revision: int) -> Page:
        return await self._call(lambda: self._center.list_changes(since_revision))

    async def watch(self, since_revision: int, idle_timeout_s: float) -> AsyncIterator[Page]:
        """The center's stream, each page crossing the network on its own: one lost leaves the stream
        silent, and a stream silent for `idle_timeout_s` breaks, as `GrpcCenter`'s does."""
        self.calls += 1
        loop = asyncio.get_running_loop()
        pages = self._center.watch(since_revision, idle_timeout_s)
        heard = loop.time()
        try:
            while True:
                try:
                    async with asyncio.timeout_at(heard + idle_timeout_s):
                        page = await anext(pages)
                        delay = self._net.one_way(self._region, loop.time())
                        if delay is None:
                            continue
                        await asyncio.sleep(delay)
                except TimeoutError:
                    raise Unavailable(f"the catalog stream was silent for {idle_timeout_s:.0f} s") from None
                if not self._net.cut(self._region, loop.time()):
                    heard = loop.time()
                    yield page
        finally:
            if isinstance(pages, AsyncGenerator):
                await pages.aclose()

    async def renew(
        self, incarnation: str, reports: Mapping[str, Report], region_lease: RegionLease | None = None
    ) -> RenewAnswer:
        return await self._call(lambda: self._center.renew(incarnation, reports, region_lease))

    async def return_quota(self, incarnation: str, promotion_id: str, counters: Report) -> int:
        return await self._call(lambda: self._center.return_quota(incarnation, promotion_id, counters))

    async def promotion(self, promotion_id: str) -> Promotion:
        self.fetches += 1
        return await self._call(lambda: self._center.promotion(promotion_id))

    async def close(self) -> None:
        """Requests on their way still arrive: the center does not know the caller is gone."""
