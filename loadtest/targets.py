"""The strategies `quota bench` compares, each as the order service would call it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

import grpc
import redis.asyncio as redis

from loadtest.load import Order
from quota_center.v1 import quota_center_pb2 as pb
from quota_center.v1 import quota_center_pb2_grpc as pb_grpc
from quota_client import AsyncCellsClient, AsyncQuotaClient, Exhausted, RetryPolicy
from quota_client import Line as OrderLine
from quota_client.embedded import EmbeddedAgent
from quota_common.transport import Transport
from quota_testing.tls import DevTls
from region_agent.ledger.base import Line
from region_agent.ledger.redis import RedisLedger
from region_agent.v1 import region_agent_pb2 as agent_pb
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc

DEADLINE_S = 10.0
POLICY = RetryPolicy(deadline_s=DEADLINE_S, attempt_timeout_s=DEADLINE_S)
"""Each order one attempt of up to DEADLINE_S, as the raw stub makes it; an UNAVAILABLE is retried within it."""


Client = TypeVar("Client", AsyncQuotaClient, AsyncCellsClient)


class ThroughClient(Generic[Client]):
    """Our way: the order service calls its region's agents (or its region's cells') through quota_client."""

    def __init__(self, client: Client) -> None:
        self.client: Client = client

    async def deduct(self, order: Order) -> bool:
        try:
            await self.client.deduct(order.key, [OrderLine(order.promotion_id, order.amount, order.user_id)])
        except Exhausted:
            return False
        return True


@contextlib.asynccontextmanager
async def through_client(
    address: str, region: str, tls: DevTls | None = None
) -> AsyncIterator[ThroughClient[AsyncQuotaClient]]:
    """The agent at `address` called as `region`'s order service calls it (plaintext without `tls`)."""
    certificate = None if tls is None else tls.client_tls(f"orders-{region}")
    async with AsyncQuotaClient(address, region, tls=certificate, policy=POLICY) as client:
        yield ThroughClient(client)


@contextlib.asynccontextmanager
async def raw_stub(address: str, region: str, tls: DevTls | None = None) -> AsyncIterator[RawStub]:
    """The server at `address` called through the bare stub, with `region`'s order service certificate if `tls`."""
    transport = Transport() if tls is None else tls.transport(f"orders-{region}")
    async with transport.aio_channel(address) as channel:
        yield RawStub(channel, region)


class RawStub:
    """The agent's API through its generated stub alone: how the echo servers are called, since they measure
    the transport; and an agent called so beside ThroughClient tells the client's cost from the agent's."""

    def __init__(self, channel: grpc.aio.Channel, region: str) -> None:
        self._stub = agent_grpc.RegionAgentStub(channel)
        self._region = region

    async def deduct(self, order: Order) -> bool:
        line = agent_pb.Line(promotion_id=order.promotion_id, amount=order.amount, user_id=order.user_id)
        request = agent_pb.DeductRequest(order_key=order.key, region=self._region, lines=[line])
        try:
            await self._stub.Deduct(request, timeout=DEADLINE_S)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                return False
            raise
        return True


class Embedded:
    """The agent inside the order service's process: no gRPC hop, one Redis round trip per batch of orders."""

    def __init__(self, agent: EmbeddedAgent) -> None:
        self._agent = agent

    async def deduct(self, order: Order) -> bool:
        try:
            await self._agent.deduct(order.key, [OrderLine(order.promotion_id, order.amount, order.user_id)])
        except Exhausted:
            return False
        return True


class BareScript:
    """The Redis ledger's deduction script alone (the EVALSHA an agent runs, batched as the agent batches
    it), on a ledger funded beforehand: what a durable regional deduction costs with no agent logic."""

    def __init__(self, ledger: RedisLedger) -> None:
        self._ledger = ledger

    async def fund(self, budgets: dict[str, int]) -> None:
        life = await self._ledger.incarnation()
        for promotion_id, budget in budgets.items():
            await self._ledger.apply_grant(f"fund-{promotion_id}", promotion_id, budget, life)

    async def deduct(self, order: Order) -> bool:
        outcome = await self._ledger.deduct(order.key, (Line(order.promotion_id, order.amount, order.user_id),))
        return outcome.accepted


class CentralGrpc:
    """Central deduction: every order asks the center for exactly its amount, keyed by the order
    (a retry gets the same grant). A smaller grant than asked is a refusal. Make it with `join`."""

    def __init__(self, channel: grpc.aio.Channel, agent: pb.AgentIdentity) -> None:
        self._stub = pb_grpc.AllocationStub(channel)
        self._agent = agent

    @classmethod
    async def join(cls, channel: grpc.aio.Channel, region: str) -> CentralGrpc:
        """Joins `region` as an agent does (the center issues the incarnation every call names)."""
        answer = await pb_grpc.AllocationStub(channel).Join(pb.JoinRequest(region=region), timeout=DEADLINE_S)
        return cls(channel, pb.AgentIdentity(region=region, incarnation=answer.incarnation))

    async def deduct(self, order: Order) -> bool:
        request = pb.AcquireRequest(
            agent=self._agent, promotion_id=order.promotion_id, amount=order.amount, request_id=order.key
        )
        try:
            answer = await self._stub.Acquire(request, timeout=DEADLINE_S)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                return False
            raise
        return answer.grant.amount == order.amount


DECREMENT_IF_ENOUGH = """
local left = tonumber(redis.call('GET', KEYS[1]) or '0')
local amount = tonumber(ARGV[1])
if left < amount then return 0 end
redis.call('DECRBY', KEYS[1], amount)
return 1
"""
"""What many teams run today: one budget counter in one central Redis, decremented if enough is left."""


class CentralRedis:
    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._script = client.register_script(DECREMENT_IF_ENOUGH)

    async def load(self, budgets: dict[str, int]) -> None:
        await self._client.mset({_budget_key(promotion_id): budget for promotion_id, budget in budgets.items()})

    async def deduct(self, order: Order) -> bool:
        return bool(await self._script(keys=[_budget_key(order.promotion_id)], args=[order.amount]))


def _budget_key(promotion_id: str) -> str:
    return f"bench:budget:{promotion_id}"
