"""The agent's calls to the center, retried where a retry is safe.

Every call here is idempotent (acquire by its request id, renew and return by cumulative
counters, reads by nature), so UNAVAILABLE and DEADLINE_EXCEEDED are retried a few
times with jittered backoff; everything else surfaces at once as a QuotaError.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from quota_center.convert import promotion_from_pb
from quota_center.errors import Unavailable, from_grpc
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


class CenterClient:
    def __init__(self, address: str, region: str, call_timeout_s: float = 2.0, attempts: int = 3) -> None:
        self._channel = grpc.aio.insecure_channel(address)
        self._admin = pb_grpc.PromotionAdminStub(self._channel)
        self._allocation = pb_grpc.AllocationStub(self._channel)
        self._region = region
        self._timeout = call_timeout_s
        self._attempts = attempts
        self.calls = 0
        """RPCs sent to the center, retries included."""

    async def _call(self, send: Callable[[], Awaitable[T]]) -> T:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Unavailable),
            stop=stop_after_attempt(self._attempts),
            wait=wait_random_exponential(multiplier=0.05, max=0.5),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                self.calls += 1
                try:
                    return await send()
                except grpc.RpcError as error:
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
        answer = await self._call(lambda: self._allocation.Acquire(request, timeout=self._timeout))
        return GrantAnswer(answer.grant.grant_id, answer.grant.amount, answer.lease_ttl_ms / 1000, answer.unallocated)

    async def renew(self, incarnation: str, counters: list[pb.Counters]) -> RenewAnswer:
        request = pb.RenewRequest(agent=self._agent(incarnation), counters=counters)
        answer = await self._call(lambda: self._allocation.Renew(request, timeout=self._timeout))
        return RenewAnswer(answer.lease_ttl_ms / 1000, list(answer.directives))

    async def give_back(self, incarnation: str, counters: pb.Counters) -> int:
        request = pb.ReturnRequest(agent=self._agent(incarnation), counters=counters)
        answer = await self._call(lambda: self._allocation.Return(request, timeout=self._timeout))
        return answer.unallocated

    async def promotion(self, promotion_id: str) -> Promotion:
        request = pb.GetPromotionRequest(promotion_id=promotion_id)
        return promotion_from_pb(await self._call(lambda: self._admin.GetPromotion(request, timeout=self._timeout)))

    async def close(self) -> None:
        await self._channel.close()


def counters_pb(promotion_id: str, balance: Balance, demand_per_minute: int) -> pb.Counters:
    return pb.Counters(
        promotion_id=promotion_id,
        granted=balance.granted,
        returned=balance.returned,
        deducted=balance.deducted,
        refunded=balance.refunded,
        demand_per_minute=demand_per_minute,
    )
