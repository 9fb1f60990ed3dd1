"""The agent's calls to the center, retried where a retry is safe, following the leader.

Every call here is idempotent (acquire by its request id, renew and return by cumulative
counters, reads by nature), so UNAVAILABLE and DEADLINE_EXCEEDED are retried a few
times with jittered backoff; everything else surfaces at once as a QuotaError.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from quota_center.convert import promotion_from_pb
from quota_center.errors import LEADER_METADATA_KEY, Unavailable, from_grpc
from quota_center.ledger import Promotion
from quota_center.v1 import quota_center_pb2 as pb
from quota_center.v1 import quota_center_pb2_grpc as pb_grpc
from region_agent.ledger.base import Balance

T = TypeVar("T")


@dataclass(frozen=True)
class GrantAnswer:
    grant_id: str
    amount: int
    lease_ttl_s: float
    unallocated: int


@dataclass(frozen=True)
class RenewAnswer:
    lease_ttl_s: float
    directives: list[pb.PromotionDirective]


@dataclass(frozen=True)
class _Stubs:
    admin: pb_grpc.PromotionAdminAsyncStub
    allocation: pb_grpc.AllocationAsyncStub


class CenterClient:
    """Calls whichever center replica leads. A standby answers UNAVAILABLE with the leader's
    address in the trailing metadata, and the next attempt goes there; a replica that does
    not answer at all sends the next attempt to the next address in the list."""

    def __init__(
        self,
        addresses: list[str],
        region: str,
        call_timeout_s: float = 2.0,
        attempts: int = 5,
        budget_s: float = 6.0,
    ) -> None:
        """Each call makes at most `attempts` tries and starts none after `budget_s`."""
        self._addresses = list(addresses)
        self._current = self._addresses[0]
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._region = region
        self._timeout = call_timeout_s
        self._attempts = attempts
        self._budget_s = budget_s
        self.calls = 0
        """RPCs sent to the center, retries included."""

    def _stubs(self) -> _Stubs:
        channel = self._channels.get(self._current)
        if channel is None:
            channel = self._channels[self._current] = grpc.aio.insecure_channel(self._current)
        return _Stubs(pb_grpc.PromotionAdminStub(channel), pb_grpc.AllocationStub(channel))

    def _follow(self, error: grpc.aio.AioRpcError) -> None:
        if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return
        for key, value in error.trailing_metadata() or ():
            if key == LEADER_METADATA_KEY and str(value) != self._current:
                self._current = str(value)
                return
        if self._current in self._addresses:
            self._current = self._addresses[(self._addresses.index(self._current) + 1) % len(self._addresses)]
        else:
            self._current = self._addresses[0]

    async def _call(self, send: Callable[[_Stubs], Awaitable[T]]) -> T:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Unavailable),
            stop=stop_after_attempt(self._attempts) | stop_after_delay(self._budget_s),
            wait=wait_random_exponential(multiplier=0.05, max=1.0),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                self.calls += 1
                try:
                    return await send(self._stubs())
                except grpc.aio.AioRpcError as error:
                    self._follow(error)
                    raise from_grpc(error) from None
        raise AssertionError("unreachable: tenacity reraises the last error")

    def _agent(self, incarnation: str) -> pb.AgentIdentity:
        return pb.AgentIdentity(region=self._region, incarnation=incarnation)

    async def acquire(
        self, incarnation: str, promotion_id: str, amount: int, request_id: str, demand_per_minute: int
    ) -> GrantAnswer:
        request = pb.AcquireRequest(
            agent=self._agent(incarnation),
            promotion_id=promotion_id,
            amount=amount,
            request_id=request_id,
            demand_per_minute=demand_per_minute,
        )
        answer = await self._call(lambda stubs: stubs.allocation.Acquire(request, timeout=self._timeout))
        return GrantAnswer(answer.grant.grant_id, answer.grant.amount, answer.lease_ttl_ms / 1000, answer.unallocated)

    async def renew(self, incarnation: str, counters: list[pb.Counters]) -> RenewAnswer:
        request = pb.RenewRequest(agent=self._agent(incarnation), counters=counters)
        answer = await self._call(lambda stubs: stubs.allocation.Renew(request, timeout=self._timeout))
        return RenewAnswer(answer.lease_ttl_ms / 1000, list(answer.directives))

    async def give_back(self, incarnation: str, counters: pb.Counters) -> int:
        request = pb.ReturnRequest(agent=self._agent(incarnation), counters=counters)
        answer = await self._call(lambda stubs: stubs.allocation.Return(request, timeout=self._timeout))
        return answer.unallocated

    async def promotion(self, promotion_id: str) -> Promotion:
        request = pb.GetPromotionRequest(promotion_id=promotion_id)
        return promotion_from_pb(
            await self._call(lambda stubs: stubs.admin.GetPromotion(request, timeout=self._timeout))
        )

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()


def counters_pb(promotion_id: str, balance: Balance, demand_per_minute: int) -> pb.Counters:
    return pb.Counters(
        promotion_id=promotion_id,
        granted=balance.granted,
        returned=balance.returned,
        deducted=balance.deducted,
        refunded=balance.refunded,
        demand_per_minute=demand_per_minute,
    )
